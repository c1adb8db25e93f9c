"""The review log: reviewer decisions, stored next to the index for the next build to use.

A reviewer looks at a query photo and a candidate and decides: ``same`` (the photo shows this
candidate), ``different`` (it does not), ``new`` (an individual not in the archive: a new id is
minted), ``merge`` (two individuals are one), ``split`` (the photo leaves its individual for a new
one), or ``undo`` (retracts an earlier decision). Each decision is one small JSON object, written
atomically under ``DIR/_reviews/decisions/`` (DIR is the index by default) and never rewritten
(append-only; one object per decision also works on S3, which cannot append). The ``_`` prefix
keeps them out of every Parquet reader of the index.

A query is identified by its ``image_id`` when it is an archive photo, and by the SHA-256 of the
uploaded bytes otherwise. :func:`confirmed_labels` and :func:`rejected_pairs` are the page's
simple per-photo view; :mod:`reid.review.resolve` turns the log into what a build applies
(several reviewers, conflicts, minted ids, merges).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from reid import storage
from reid.errors import ReidError

REVIEWS = "_reviews"
DECISIONS_DIR = "decisions"
DECISIONS = ("same", "different", "new", "merge", "split", "undo")
ASSIGNING = ("same", "new", "split")  # decisions that give the query photo an identity
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

REVIEW_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.string(), nullable=False),
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # same / different / new
        pa.field("query_sha256", pa.string()),
        pa.field("query_image_id", pa.string()),  # set when the query is an archive photo
        pa.field("individual_id", pa.string()),  # the candidate judged (same/different), or the new name
        pa.field("candidate_image_id", pa.string()),  # the candidate's best-scoring image
        pa.field("score", pa.float32()),
        pa.field("threshold", pa.float32()),
        pa.field("model_id", pa.string()),
        pa.field("index_version", pa.string()),
        pa.field("reviewer", pa.string()),
        pa.field("note", pa.string()),
        pa.field("members", pa.list_(pa.string())),  # new/split: the other photos the decision covers
        pa.field("other_individual_id", pa.string()),  # merge: the individual merged into individual_id
        pa.field("retracts", pa.string()),  # undo: the review_id it retracts
        pa.field("year", pa.int32()),  # new/split: the year a minted id is numbered in
        pa.field("item_id", pa.string()),  # the review-queue item decided, when there was one
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("query_sha256", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("individual_id", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # same, new, split, or member (of a new)
        pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("reviewer", pa.string()),
    ]
)


def reviews_uri(index_uri: str) -> str:
    """Where decisions about an index (or any reviews folder) are written: ``DIR/_reviews/decisions``."""
    return storage.join(index_uri, REVIEWS, DECISIONS_DIR)


def find_reviews(uri: str) -> str:
    """The decisions folder a ``--reviews DIR`` names: ``DIR/_reviews/decisions`` (an index or a
    reviews folder the page wrote), ``DIR/decisions`` or DIR itself; refuses a DIR that has none."""
    for cand in (reviews_uri(uri), storage.join(uri, DECISIONS_DIR), uri):
        if storage.exists(cand) and storage.list_files(cand, suffix=".json"):
            return cand
    raise ReidError(
        f"--reviews {uri}: no decisions found (looked in {reviews_uri(uri)}); pass the index or folder "
        "`reid serve` stored its reviews in"
    )


def new_individual_name(query_sha256: str) -> str:
    """The default name of a new individual: stable for the same photo."""
    return f"new-{query_sha256[:12]}"


def _check_name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not NAME.match(value):
        raise ReidError(
            f"{what} {value!r}: use 1-64 letters, digits, spaces, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


def record(
    index_uri: str,
    decision: str,
    query_sha256: str | None,
    individual_id: str | None = None,
    query_image_id: str | None = None,
    candidate_image_id: str | None = None,
    score: float | None = None,
    threshold: float | None = None,
    model_id: str | None = None,
    index_version: str | None = None,
    reviewer: str | None = None,
    note: str | None = None,
    members: list[str] | None = None,
    other_individual_id: str | None = None,
    retracts: str | None = None,
    year: int | None = None,
    item_id: str | None = None,
    name_new: bool = True,
) -> dict:
    """Append one decision; returns it as stored.

    ``new`` without a name is named from the photo's hash when ``name_new`` (the upload page), or
    left for the build to mint from the team's id scheme (:func:`reid.review.resolve.resolve`).
    """
    if decision not in DECISIONS:
        raise ReidError(f"decision {decision!r}: expected one of {', '.join(DECISIONS)}")
    if query_sha256 is not None or not (query_image_id or decision in ("merge", "undo")):
        if not SHA256.match(query_sha256 or ""):
            raise ReidError(f"query hash {query_sha256!r}: expected 64 lowercase hex digits (SHA-256)")
    individual_id = _check_name(individual_id, "individual")
    other_individual_id = _check_name(other_individual_id, "individual")
    if decision in ("same", "different") and not (individual_id or candidate_image_id):
        raise ReidError(f"a {decision!r} decision names the candidate individual it is about")
    if decision == "merge" and not (individual_id and other_individual_id):
        raise ReidError("a 'merge' decision names the individual kept and the one merged into it")
    if decision == "undo" and not retracts:
        raise ReidError("an 'undo' decision names the review_id it retracts")
    if decision == "new" and name_new and query_sha256:
        individual_id = individual_id or new_individual_name(query_sha256)
    if note is not None and len(note) > 500:
        raise ReidError("note: at most 500 characters")
    now = dt.datetime.now(dt.timezone.utc)
    rec = {
        "review_id": f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}",
        "decided_at": now.isoformat(),
        "decision": decision,
        "query_sha256": query_sha256,
        "query_image_id": query_image_id,
        "individual_id": individual_id,
        "candidate_image_id": candidate_image_id,
        "score": None if score is None else float(score),
        "threshold": None if threshold is None else float(threshold),
        "model_id": model_id,
        "index_version": index_version,
        "reviewer": _check_name(reviewer, "reviewer"),
        "note": note,
        "members": list(members) if members else None,
        "other_individual_id": other_individual_id,
        "retracts": retracts,
        "year": None if year is None else int(year),
        "item_id": item_id,
    }
    storage.write_text(storage.join(reviews_uri(index_uri), rec["review_id"] + ".json"), json.dumps(rec))
    return rec


def read_reviews(index_uri: str, folder: str | None = None) -> pa.Table:
    """Every decision stored for an index (or in the decisions ``folder``), oldest first (REVIEW_SCHEMA)."""
    rows = []
    for uri in storage.list_files(folder or reviews_uri(index_uri), suffix=".json"):
        try:
            rec = json.loads(storage.read_text(uri))
        except ValueError as e:
            raise ReidError(f"{uri}: not a valid review record ({e}); move it aside") from e
        row = {name: rec.get(name) for name in REVIEW_SCHEMA.names}
        row["decided_at"] = dt.datetime.fromisoformat(row["decided_at"])
        rows.append(row)
    if not rows:
        return REVIEW_SCHEMA.empty_table()
    table = pa.Table.from_pylist(rows, schema=REVIEW_SCHEMA)
    return table.sort_by([("decided_at", "ascending"), ("review_id", "ascending")])


def _labels(reviews: pa.Table) -> list[dict]:
    """Per query photo, its latest ``same``/``new`` decision, unless a later ``different`` names
    the same individual (which retracts it). ``different`` about another individual changes nothing."""
    label: dict[str, dict] = {}
    for row in reviews.to_pylist():  # oldest first
        q = row["query_sha256"] or f"image:{row['query_image_id']}"
        if row["decision"] in ("same", "new") and row["individual_id"]:
            label[q] = row
        elif q in label and label[q]["individual_id"] == row["individual_id"]:
            del label[q]
    return list(label.values())


def confirmed_labels(index_uri: str, id_format: str | None = None) -> pa.Table:
    """Labels reviewers confirmed: one row per photo. Schema: LABELS_SCHEMA.

    Archive photos (``image_id`` set; join on it) follow :func:`reid.review.resolve.resolve`:
    agreeing reviewers, conflicts left out, the photos a ``new`` covers, minted ids (``id_format``,
    the default scheme when None), merges, undo. Uploaded photos carry only their hash (join on the
    SHA-256 of the image bytes once they are ingested) and follow :func:`_labels`.
    """
    from reid.review.resolve import ID_FORMAT, resolve

    reviews = read_reviews(index_uri)
    archived = pc.is_valid(reviews.column("query_image_id"))
    res = resolve(reviews.filter(archived), id_format or ID_FORMAT)
    rows = [
        {"query_sha256": v.get("query_sha256"), "image_id": image_id, "individual_id": v["individual_id"],
         "decision": v["decision"], "decided_at": v["decided_at"], "reviewer": v["reviewer"]}
        for image_id, v in res.labels.items()
    ]  # fmt: skip
    for r in _labels(reviews.filter(pc.invert(archived))):
        rows.append({"query_sha256": r["query_sha256"], "image_id": None, "individual_id": r["individual_id"],
                     "decision": r["decision"], "decided_at": r["decided_at"], "reviewer": r["reviewer"]})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)


def rejected_pairs(index_uri: str) -> pa.Table:
    """(query_sha256, image_id, individual_id) pairs a reviewer marked ``different`` (hard negatives)."""
    reviews = read_reviews(index_uri)
    diff = reviews.filter(pc.equal(reviews.column("decision"), "different"))
    return diff.select(["query_sha256", "query_image_id", "individual_id", "decided_at"]).rename_columns(
        ["query_sha256", "image_id", "individual_id", "decided_at"]
    )
