"""Population outputs across surveys: who was seen where, resighted or new, capture histories.

An image's identity is its label when it has one, else the individual it was matched to, else
the proposed new individual it was grouped into; a reviewed photo's identity is the one a reviewer
confirmed (:mod:`reid.review.apply`). Surveys are ordered by name ("2021" < "2022").

What people established (an archive label or a reviewer's confirmation: basis ``label`` or
``confirmed``) is kept apart from what the model proposed (``match``, ``new``): a capture-history
cell is *confirmed* when at least one photo behind it is, and the tables count both.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

IDENTITIES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("survey", pa.string()),
        pa.field("identity", pa.string()),
        pa.field("basis", pa.string()),  # label | confirmed | match | new | unresolved (no identity)
    ]
)
SURVEY_COUNTS_SCHEMA = pa.schema(
    [
        pa.field("survey", pa.string()),
        pa.field("images", pa.int64()),
        pa.field("seen", pa.int64()),  # distinct individuals photographed in the survey
        pa.field("resighted", pa.int64()),  # ... of which seen in an earlier survey
        pa.field("new", pa.int64()),  # ... of which never seen before
        pa.field("seen_confirmed", pa.int64()),  # seen, on a labelled or reviewer-confirmed photo
    ]
)


def assign_identities(decisions: pa.Table, proposed: pa.Table, use_labels: bool = True) -> pa.Table:
    """One identity per image: label (if ``use_labels``), else matched individual, else proposed."""
    n = len(decisions)
    label = decisions.column("individual_id").combine_chunks() if use_labels else pa.nulls(n, pa.string())
    is_new = decisions.column("is_new").combine_chunks()
    matched = pc.if_else(is_new, pa.scalar(None, pa.string()), decisions.column("predicted_individual"))
    pos = pc.index_in(decisions.column("query_id"), value_set=proposed.column("image_id").combine_chunks())
    grouped = proposed.column("proposed_individual").combine_chunks().take(pos) if len(proposed) else None
    if grouped is None:
        grouped = pa.nulls(n, pa.string())
    identity = pc.coalesce(label, matched, grouped)
    basis = pc.case_when(
        pc.make_struct(pc.is_valid(label), pc.is_valid(matched), pc.is_valid(grouped)),
        "label",
        "match",
        "new",
    )
    return pa.table(
        {
            "image_id": decisions.column("query_id"),
            "survey": decisions.column("survey"),
            "identity": identity,
            "basis": basis,
        },
        schema=IDENTITIES_SCHEMA,
    )


HUMAN = ("label", "confirmed")  # bases a person established


def _matrix(identities: pa.Table, surveys: list[str] | None):
    """(individuals, surveys, 0/1 matrix, images per survey, confirmed 0/1 matrix) from identities."""
    t = identities.filter(
        pc.and_(pc.is_valid(identities.column("survey")), pc.is_valid(identities.column("identity")))
    )
    order = list(surveys) if surveys else sorted(set(t.column("survey").to_pylist()))
    if "basis" in t.column_names:
        human = pc.is_in(t.column("basis"), value_set=pa.array(HUMAN)).fill_null(False)
    else:  # a bare (image_id, survey, identity) table: no photo is known to be confirmed
        human = pa.array(np.zeros(len(t), bool))
    t = t.append_column("human", pc.cast(human, pa.int8()))
    pairs = t.group_by(["identity", "survey"]).aggregate([("image_id", "count"), ("human", "max")])
    ident, survey = pairs.column("identity").to_pylist(), pairs.column("survey").to_pylist()
    individuals = sorted(set(ident))
    row = {a: i for i, a in enumerate(individuals)}
    col = {s: j for j, s in enumerate(order)}
    ch = np.zeros((len(individuals), len(order)), np.uint8)
    conf = np.zeros_like(ch)
    images = np.zeros(len(order), np.int64)
    counts, hum = pairs.column("image_id_count").to_pylist(), pairs.column("human_max").to_pylist()
    for a, s, c, h in zip(ident, survey, counts, hum, strict=True):
        if s in col:
            ch[row[a], col[s]] = 1
            conf[row[a], col[s]] = h
            images[col[s]] += c
    keep = ch.any(axis=1)
    return [a for a, k in zip(individuals, keep, strict=True) if k], order, ch[keep], images, conf[keep]


def survey_counts(identities: pa.Table, surveys: list[str] | None = None) -> pa.Table:
    """Per survey: images, individuals seen, resighted from earlier surveys, new, seen on a
    labelled or confirmed photo."""
    _, order, ch, images, conf = _matrix(identities, surveys)
    seen = ch.sum(axis=0, dtype=np.int64)
    first = ch.argmax(axis=1) if ch.size else np.zeros(0, np.int64)  # every kept row has a 1
    new = np.bincount(first, minlength=len(order)).astype(np.int64)
    return pa.table(
        {
            "survey": pa.array(order, pa.string()),
            "images": pa.array(images),
            "seen": pa.array(seen),
            "resighted": pa.array(seen - new),
            "new": pa.array(new),
            "seen_confirmed": pa.array(conf.sum(axis=0, dtype=np.int64)),
        },
        schema=SURVEY_COUNTS_SCHEMA,
    )


def capture_history(identities: pa.Table, surveys: list[str] | None = None) -> pa.Table:
    """Individual x survey 0/1 table plus the ``ch`` string ("101") mark-recapture software reads,
    and ``ch_confirmed``: the same string counting only cells a person established."""
    individuals, order, ch, _, conf = _matrix(identities, surveys)
    columns = {"individual": pa.array(individuals, pa.string())}
    for j, s in enumerate(order):
        columns[str(s)] = pa.array(ch[:, j], pa.uint8())
    columns["ch"] = pa.array(["".join(map(str, r)) for r in ch.tolist()], pa.string())
    columns["ch_confirmed"] = pa.array(["".join(map(str, r)) for r in conf.tolist()], pa.string())
    return pa.table(columns)


def to_mark_inp(history: pa.Table) -> str:
    """The capture history in MARK's ``.inp`` format: ``/* id */ 101 1;`` per individual."""
    lines = [
        f"/* {ident} */ {ch} 1;"
        for ident, ch in zip(
            history.column("individual").to_pylist(), history.column("ch").to_pylist(), strict=True
        )
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def to_csv(table: pa.Table) -> str:
    """A small table as CSV text (capture histories are one row per individual)."""
    import io

    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue().decode("utf-8")
