"""The sightings table: one row per annotation (an animal in a photo) with who it is and why,
beside what a person needs to find the photo again (file, date, camera, box).

``individual`` is, in order: a reviewer's confirmed decision, the archive's label, the matched
known individual, the proposed new individual (``basis``: review / label / match / new; null when
none applies). ``decision`` is the matcher's call for the photo (known / new), ``score`` its
similarity to the nearest labelled neighbour.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from reid.search import population

__all__ = ["ARCHIVE_COLUMNS", "SIGHTINGS_SCHEMA", "build"]

# Archive columns a sightings row carries (everything but the image bytes).
ARCHIVE_COLUMNS = [
    "image_id",
    "photo_id",
    "annotation_id",
    "photo_ref",
    "individual_id",
    "species",
    "survey",
    "captured_at",
    "camera_id",
    "viewpoint",
    "bbox",
    "source",
    "width",
    "height",
]

SIGHTINGS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("photo_id", pa.string()),
        pa.field("annotation_id", pa.string()),
        pa.field("photo_ref", pa.string()),  # the user's own photo id (COCO image id, mediaID)
        pa.field("individual", pa.string()),
        pa.field("basis", pa.string()),  # review | label | match | new
        pa.field("decision", pa.string()),  # known | new (the matcher's call); null: not matched
        pa.field("predicted_individual", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("label", pa.string()),  # the archive's own individual_id
        pa.field("reviewed", pa.string()),  # a reviewer's same/new decision, if any
        pa.field("reviewer", pa.string()),
        pa.field("species", pa.string()),
        pa.field("survey", pa.string()),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
        pa.field("date", pa.string()),  # YYYY-MM-DD of captured_at (UTC)
        pa.field("camera_id", pa.string()),
        pa.field("viewpoint", pa.string()),
        pa.field("source", pa.string()),
        pa.field("file_name", pa.string()),
        pa.field("bbox_x", pa.float32()),
        pa.field("bbox_y", pa.float32()),
        pa.field("bbox_w", pa.float32()),
        pa.field("bbox_h", pa.float32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)


def _lookup(keys: pa.Array, table: pa.Table, key: str, column: str, type_: pa.DataType) -> pa.Array:
    """``table[column]`` for each of ``keys`` matched on ``table[key]`` (null where absent)."""
    if len(table) == 0:
        return pa.nulls(len(keys), type_)
    pos = pc.index_in(keys, value_set=table.column(key).combine_chunks())
    return table.column(column).combine_chunks().cast(type_).take(pos)


EMPTY_LABELS = pa.table(
    {k: pa.array([], pa.string()) for k in ("image_id", "individual_id", "decision", "reviewer")}
)
EMPTY_PROPOSED = pa.table({k: pa.array([], pa.string()) for k in ("image_id", "proposed_individual")})


def build(
    meta: pa.Table,
    decisions: pa.Table | None,
    proposed: pa.Table | None,
    labels: pa.Table | None = None,
) -> pa.Table:
    """The sightings table of every archive row in ``meta`` (ARCHIVE_COLUMNS), sorted by source.

    ``decisions``/``proposed``: the match output's tables (None: labels only); ``labels``: the
    reviewers' confirmed labels (reid.review.confirmed_labels).
    """
    ids = meta.column("image_id").combine_chunks()
    label = meta.column("individual_id").combine_chunks().cast(pa.string())
    labels = EMPTY_LABELS if labels is None else labels.filter(pc.is_valid(labels.column("image_id")))
    reviewed = _lookup(ids, labels, "image_id", "individual_id", pa.string())
    review_kind = _lookup(ids, labels, "image_id", "decision", pa.string())
    reviewer = _lookup(ids, labels, "image_id", "reviewer", pa.string())
    if decisions is not None and len(decisions):
        proposed = EMPTY_PROPOSED if proposed is None else proposed
        ident = population.assign_identities(decisions, proposed, use_labels=True)
        matched_identity = _lookup(ids, ident, "image_id", "identity", pa.string())
        matched_basis = _lookup(ids, ident, "image_id", "basis", pa.string())
        is_new = _lookup(ids, decisions, "query_id", "is_new", pa.bool_())
        predicted = _lookup(ids, decisions, "query_id", "predicted_individual", pa.string())
        score = _lookup(ids, decisions, "query_id", "score", pa.float32())
    else:
        matched_identity = matched_basis = predicted = pa.nulls(len(ids), pa.string())
        is_new, score = pa.nulls(len(ids), pa.bool_()), pa.nulls(len(ids), pa.float32())
    individual = pc.coalesce(reviewed, label, matched_identity)
    basis = pc.case_when(
        pc.make_struct(pc.is_valid(reviewed), pc.is_valid(label), pc.is_valid(matched_identity)),
        "review",
        "label",
        matched_basis,
        pa.scalar(None, pa.string()),
    )
    decision = pc.if_else(is_new, pa.scalar("new"), pa.scalar("known"))
    bbox = meta.column("bbox").combine_chunks()
    captured = meta.column("captured_at").combine_chunks().cast(pa.timestamp("us", tz="UTC"))
    source = meta.column("source").combine_chunks().cast(pa.string())
    date = pc.strftime(captured, format="%Y-%m-%d") if len(captured) else pa.array([], pa.string())
    file_name = (
        pc.extract_regex(source, r"(?P<f>[^/\\]*)$").field("f") if len(source) else pa.array([], pa.string())
    )
    columns = {
        "image_id": ids,
        "photo_id": meta.column("photo_id"),
        "annotation_id": meta.column("annotation_id"),
        "photo_ref": meta.column("photo_ref"),
        "individual": individual,
        "basis": basis,
        "decision": decision,
        "predicted_individual": predicted,
        "score": score,
        "label": label,
        "reviewed": review_kind,
        "reviewer": reviewer,
        "species": meta.column("species"),
        "survey": meta.column("survey"),
        "captured_at": captured,
        "date": date,
        "camera_id": meta.column("camera_id"),
        "viewpoint": meta.column("viewpoint"),
        "source": source,
        "file_name": file_name,
        **{f"bbox_{k}": pc.struct_field(bbox, k) for k in "xywh"},
        "width": meta.column("width"),
        "height": meta.column("height"),
    }
    table = pa.table({k: pa.array(v) if isinstance(v, list) else v for k, v in columns.items()})
    table = pa.Table.from_arrays(
        [table.column(f.name).cast(f.type) for f in SIGHTINGS_SCHEMA], schema=SIGHTINGS_SCHEMA
    )
    return table.sort_by([("source", "ascending"), ("image_id", "ascending")])
