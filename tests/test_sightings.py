"""The near-duplicate rules of reid.data.sightings, and proof that train, evaluate and match use them.

One small metadata table covers the edge cases (unknown time, unknown camera, exactly 60 s apart,
a burst across UTC midnight, another time zone, days before 1970); each caller's exclusion is
compared pair for pair with the shared rule it names.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from reid import matching
from reid.data import sightings
from reid.evaluation.data import eval_data
from reid.evaluation.exclusions import exclusion_mask, validation_exclusion
from reid.evaluation.protocols import Protocol, leave_one_out
from reid.search import faiss_index

T0 = dt.datetime(2023, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
S = dt.timedelta(seconds=1)
US = dt.timedelta(microseconds=1)
MIDNIGHT = dt.datetime(2023, 5, 2, tzinfo=dt.timezone.utc)
OLD = dt.datetime(1969, 12, 31, 23, 0, tzinfo=dt.timezone.utc)

ROWS = [  # image_id, camera_id, captured_at
    ("a0", "c1", T0),
    ("a1", "c1", T0 + 60 * S),  # exactly 60 s after a0: same burst
    ("a2", "c1", T0 + 120 * S + US),  # 60 s + 1 us after a1: another burst, same day
    ("a3", "c2", T0 + 10 * S),  # another camera within 60 s of a0: same day only
    ("a4", None, T0),  # unknown camera: a burst with a5, no camera-day
    ("a5", None, T0 + 30 * S),
    ("a6", "c1", None),  # unknown time: pairs with nothing
    ("a7", "c3", MIDNIGHT - 10 * S),  # a burst across UTC midnight: two days
    ("a8", "c3", MIDNIGHT + 10 * S),
    ("a9", "c3", MIDNIGHT + dt.timedelta(hours=5)),  # same camera-day as a8, not its burst
    ("b0", "c4", OLD),  # before 1970: the floor of the day, 1969-12-31
    ("b1", "c4", OLD + dt.timedelta(minutes=59)),
    ("b2", "c4", OLD + dt.timedelta(minutes=61)),  # 1970-01-01
]
IDS = [r[0] for r in ROWS]


def pairs_of(*names: tuple[str, str]) -> set[tuple[str, str]]:
    """Both orders of each named pair."""
    return {(a, b) for a, b in names} | {(b, a) for a, b in names}


def within(seconds: float, same_camera: bool = True) -> set[tuple[str, str]]:
    """Pairs of known time at most ``seconds`` apart (unknown cameras equal): the burst rule, by hand."""
    return {
        (a, b)
        for a, ca, ta in ROWS
        for b, cb, tb in ROWS
        if a != b
        and ta
        and tb
        and abs((ta - tb).total_seconds()) <= seconds
        and (ca == cb or not same_camera)
    }


BURST = pairs_of(("a0", "a1"), ("a4", "a5"), ("a7", "a8"))
DAY = {(a, b) for a, _, ta in ROWS for b, _, tb in ROWS if a != b and ta and tb and ta.date() == tb.date()}
CAMERA_DAY = pairs_of(("a0", "a1"), ("a0", "a2"), ("a1", "a2"), ("a8", "a9"), ("b0", "b1"))


def metadata() -> pa.Table:
    """The archive columns the rules read, plus what evaluate's embeddings table carries."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(ROWS), 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return pa.table(
        {
            "image_id": IDS,
            "camera_id": pa.array([r[1] for r in ROWS], pa.string()),
            "captured_at": pa.array([r[2] for r in ROWS], pa.timestamp("us", tz="UTC")),
            "viewpoint": pa.nulls(len(ROWS), pa.string()),
            "individual_id": [f"ind{i % 3}" for i in range(len(ROWS))],
            "survey": ["2023"] * len(ROWS),
            "model_id": ["m"] * len(ROWS),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4),
        }
    )


def named(pairs: sightings.Pairs, q_ids: list[str] = IDS, g_ids: list[str] = IDS) -> set[tuple[str, str]]:
    return {(q_ids[r], g_ids[c]) for r, c in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True)}


def test_rules_on_the_edge_cases():
    meta = metadata()
    assert BURST == within(60)
    assert named(sightings.same_burst(meta)) == BURST
    assert named(sightings.same_day(meta)) == DAY
    assert named(sightings.same_camera_day(meta)) == CAMERA_DAY


def test_burst_window_is_inclusive_and_scales():
    meta = metadata()
    assert ("a1", "a2") not in named(sightings.same_burst(meta, burst_seconds=60))
    assert ("a1", "a2") in named(sightings.same_burst(meta, burst_seconds=60.000001))
    assert named(sightings.same_burst(meta, burst_seconds=20)) == pairs_of(("a7", "a8"))


def test_query_and_gallery_tables():
    """Two tables: every (query, gallery) pair of the rule; a row in both pairs with itself."""
    meta = metadata()
    q_ids, g_ids = IDS[:6], IDS[3:]
    got = named(sightings.same_burst(meta.slice(0, 6), meta.slice(3)), q_ids, g_ids)
    itself = {(i, i) for i in ["a3", "a4", "a5"]}
    assert got == {(a, b) for a, b in BURST if a in q_ids and b in g_ids} | itself


def test_utc_day_whatever_the_time_zone():
    paris = metadata().set_column(
        2, "captured_at", metadata().column("captured_at").cast(pa.timestamp("us", tz="Europe/Paris"))
    )
    assert named(sightings.same_day(paris)) == DAY
    assert named(sightings.same_camera_day(paris)) == CAMERA_DAY


def test_missing_columns_mean_unknown():
    meta = metadata().drop_columns(["camera_id"])
    assert named(sightings.same_camera_day(meta)) == set()
    assert named(sightings.same_burst(meta)) == within(60, same_camera=False)


# --------------------------------------------------------------------------------------------
# Each caller's exclusion is the shared rule's pairs


@pytest.mark.parametrize("rule, shared", [("burst", sightings.same_burst), ("day", sightings.same_day)])
@pytest.mark.parametrize("dense_max", [10_000, 0], ids=["dense-mask", "id-pairs"])
def test_train_validation_exclusion_is_the_shared_rule(rule, shared, dense_max):
    meta = metadata()
    order = IDS[::-1]  # validation order differs from the table's
    got = validation_exclusion(meta, order, rule, 60.0, dense_max=dense_max)
    if dense_max:
        assert got.shape == (len(IDS), len(IDS))
        got = {(order[r], order[c]) for r, c in zip(*np.nonzero(got), strict=True)}
    else:
        got = set(got)
    assert got == named(shared(meta))
    assert validation_exclusion(meta, order, "none") is None


@pytest.mark.parametrize(
    "flags, rule",
    [({"same_burst": True}, sightings.same_burst), ({"same_day": True}, sightings.same_day)],
    ids=["burst", "day"],
)
def test_evaluate_exclusion_mask_is_the_shared_rule(flags, rule):
    meta = metadata()
    data = eval_data(meta)
    loo = leave_one_out(data)
    mask = exclusion_mask(data, loo, burst_seconds=60.0, **flags).tocoo()
    assert named((mask.row, mask.col)) == named(rule(meta))
    split = Protocol("split", np.arange(6), np.arange(3, len(IDS)), "first six against the rest")
    mask = exclusion_mask(data, split, burst_seconds=60.0, **flags).tocoo()
    q, g = meta.slice(0, 6), meta.slice(3)
    expected = {(a, b) for a, b in named(rule(q, g), IDS[:6], IDS[3:]) if a != b}  # itself: never a candidate
    assert named((mask.row, mask.col), IDS[:6], IDS[3:]) == expected


def test_match_exclusion_is_the_shared_rule():
    meta = metadata()
    x = np.asarray(meta.column("embedding").combine_chunks().flatten(), np.float32).reshape(len(IDS), 4)
    index = faiss_index.build_shard(faiss_index.make_index("Flat", 4), x)
    exclude = matching.Exclusions(self_match=True, same_camera_day=True)
    d, i = matching.search_shard(index, x, len(IDS), meta, matching.GalleryMeta(meta), exclude)
    rows, ranks = np.nonzero(i >= 0)
    found = {(IDS[q], IDS[g]) for q, g in zip(rows.tolist(), i[rows, ranks].tolist(), strict=True)}
    everything = {(a, b) for a in IDS for b in IDS if a != b}
    assert everything - found == named(sightings.same_camera_day(meta))


def test_sighting_group_of_a_split():
    assert sightings.sighting_group("x", "c1", MIDNIGHT - S, "2023") == "x|c1|2023-05-01"
    paris = (MIDNIGHT + S).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert sightings.sighting_group("x", None, paris, "2023") == "x||2023-05-02"
    assert sightings.sighting_group("x", "c1", None, "2023") == "x|c1|survey:2023"
    assert sightings.sighting_group(None, "c1", T0, "2023") is None
