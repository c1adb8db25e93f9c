"""reid.matching: exclusions vs brute force, merging, decisions, threshold calibration, new groups."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from reid import matching
from reid.data import sightings
from reid.errors import ConfigError
from reid.search import faiss_index
from tests.support.knn import assert_same_knn, brute_force, grid_vectors

DAY = dt.datetime(2023, 5, 1, tzinfo=dt.timezone.utc)


def metadata(n: int, seed: int = 0) -> pa.Table:
    """Ids, 3 surveys, 4 cameras, a few days, and bursts of photos minutes apart (many per day)."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "image_id": [f"img{i:05d}" for i in range(n)],
            "survey": [str(2021 + s) for s in rng.integers(0, 3, n)],
            "camera_id": [f"cam{c}" for c in rng.integers(0, 4, n)],
            "captured_at": pa.array(
                [
                    DAY + dt.timedelta(days=int(d), minutes=int(m))
                    for d, m in zip(rng.integers(0, 3, n), rng.integers(0, 1400, n), strict=True)
                ],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


def allowed_mask(meta: pa.Table, exclude: matching.Exclusions) -> np.ndarray:
    n = len(meta)
    ok = np.ones((n, n), bool)
    surv = np.array(meta.column("survey").to_pylist())
    key = np.array(
        [
            f"{c}|{t.date()}"
            for c, t in zip(
                meta.column("camera_id").to_pylist(), meta.column("captured_at").to_pylist(), strict=True
            )
        ]
    )
    if exclude.self_match:
        np.fill_diagonal(ok, False)
    if exclude.same_camera_day:
        ok &= key[:, None] != key[None, :]
    if exclude.same_survey:
        ok &= surv[:, None] != surv[None, :]
    return ok


def search_sharded(x, meta, k, exclude, shard_size):
    parts = []
    for lo in range(0, len(x), shard_size):
        shard = faiss_index.build_shard(faiss_index.make_index("Flat", x.shape[1]), x[lo : lo + shard_size])
        gallery = matching.GalleryMeta(meta.slice(lo, shard_size))
        d, i = matching.search_shard(shard, x, k, meta, gallery, exclude)
        parts.append((d, matching.to_global(i, lo)))
    return matching.merge_topk(parts, k)


@pytest.mark.parametrize(
    "exclude",
    [
        matching.Exclusions(self_match=True, same_camera_day=True),
        matching.Exclusions(self_match=True, same_survey=True),
        matching.Exclusions(self_match=True, same_camera_day=True, same_survey=True),
    ],
    ids=["camera-day", "across-surveys", "both"],
)
def test_exclusions_equal_masked_brute_force(exclude):
    x, meta = grid_vectors(1200, seed=3), metadata(1200)
    d, i = search_sharded(x, meta, 10, exclude, shard_size=400)
    allowed = allowed_mask(meta, exclude)
    ref_d, ref_i = brute_force(x, x, 11, allowed)
    assert_same_knn(d, i, ref_d[:, :10], ref_i[:, :10], ref_d[:, 10])
    rows = np.repeat(np.arange(len(x)), 10)
    assert allowed[rows, i.ravel()].all()


def test_exclusions_search_deeper_when_a_burst_fills_the_top():
    """60 near-duplicates from one camera-day: the allowed neighbours lie far down the list."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal(32)
    burst = base + 0.01 * rng.standard_normal((60, 32))
    others = rng.standard_normal((200, 32))
    x = np.concatenate([burst, others])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    meta = pa.table(
        {
            "image_id": [f"i{j}" for j in range(260)],
            "camera_id": ["c1"] * 60 + [f"c{j % 7 + 2}" for j in range(200)],
            "captured_at": pa.array([DAY] * 260, pa.timestamp("us", tz="UTC")),
            "survey": ["2023"] * 260,
        }
    )
    exclude = matching.Exclusions(self_match=True, same_camera_day=True)
    d, i = search_sharded(x, meta, 5, exclude, shard_size=260)
    assert (i[:60] >= 60).all()
    ref_d, ref_i = brute_force(x, x, 5, allowed_mask(meta, exclude))
    np.testing.assert_allclose(d, ref_d, atol=1e-6)
    assert (i == ref_i).mean() > 0.99


def test_fewer_neighbours_than_k_are_padded():
    x, meta = grid_vectors(6), metadata(6)
    d, i = search_sharded(x, meta, 10, matching.Exclusions(self_match=True), shard_size=4)
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all()
    assert np.isneginf(d[:, 5:]).all()


def test_merge_topk_breaks_ties_by_global_id():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[7, 3]]))
    b = (np.array([[0.9, -np.inf]], np.float32), np.array([[2, -1]]))
    d, g = matching.merge_topk([a, b], 3)
    assert g.tolist() == [[2, 7, 3]] and d.tolist()[0][:2] == pytest.approx([0.9, 0.9])
    d, g = matching.merge_topk([b], 3)
    assert g.tolist() == [[2, -1, -1]]


def test_camera_day_key():
    t = pa.table(
        {
            "camera_id": ["a", "a", None, "a"],
            "captured_at": pa.array(
                [DAY, DAY + dt.timedelta(hours=23), DAY, None], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    keys = sightings.camera_day_key(t).to_pylist()
    assert keys[0] == keys[1] and keys[2] is None and keys[3] is None


def _matches(rows):
    return pa.Table.from_pylist(
        [
            dict(zip(["query_id", "neighbor_id", "rank", "score", "neighbor_individual_id"], r, strict=True))
            for r in rows
        ],
        schema=pa.schema(
            [
                ("query_id", pa.string()),
                ("neighbor_id", pa.string()),
                ("rank", pa.int32()),
                ("score", pa.float32()),
                ("neighbor_individual_id", pa.string()),
            ]
        ),
    )


def test_decide_uses_nearest_labelled_neighbour_and_threshold():
    queries = pa.table(
        {
            "image_id": ["q1", "q2", "q3", "q4"],
            "survey": ["2021"] * 4,
            "individual_id": ["A", None, None, None],
        }
    )
    matches = _matches(
        [
            ("q1", "x1", 1, 0.95, None),
            ("q1", "x2", 2, 0.9, "B"),
            ("q2", "x3", 1, 0.5, "C"),
            ("q3", "x4", 1, 0.99, None),
        ]
    )
    dec = matching.decide(queries, matches, threshold=0.8).to_pylist()
    assert [r["predicted_individual"] for r in dec] == ["B", "C", None, None]
    assert [r["is_new"] for r in dec] == [False, True, True, True]
    assert dec[0]["score"] == pytest.approx(0.9) and dec[3]["score"] is None
    assert dec[0]["individual_id"] == "A"
    no_threshold = matching.decide(queries, matches, None).column("is_new").to_pylist()
    assert no_threshold == [False, False, True, True]


def test_calibration_meets_the_target_false_new_rate():
    rng = np.random.default_rng(0)
    n = 1000
    ids = [f"q{i}" for i in range(n)]
    truth = [f"ind{i % 100}" for i in range(n)]
    correct = rng.random(n) < 0.9
    top = rng.beta(8, 2, n)
    rows = []
    for i in range(n):
        rows.append((ids[i], f"n{i}a", 1, top[i], truth[i] if correct[i] else "other"))
        rows.append((ids[i], f"n{i}b", 2, top[i] - 0.3, "someone-else"))
    queries = pa.table({"image_id": ids, "individual_id": truth})
    cal = matching.calibrate(queries, _matches(rows), target_false_new=0.05)
    assert cal["false_new"] <= 0.05 and cal["false_new"] > 0.04
    assert np.mean(top < cal["threshold"]) <= 0.05
    assert cal["accuracy_at_1"] == pytest.approx(correct.mean())
    assert 0 < cal["new_flagged_lower_bound"] <= 1
    with pytest.raises(ConfigError):
        matching.calibrate(queries, _matches(rows), target_false_new=1.5)


def test_new_images_grouped_by_mutual_neighbours_above_threshold():
    decisions = pa.table(
        {
            "query_id": ["a", "b", "c", "d", "e", "f"],
            "predicted_individual": [None] * 6,
            "score": pa.array([None] * 6, pa.float32()),
            "is_new": [True, True, True, True, True, False],
            "survey": ["2023"] * 6,
            "individual_id": [None, None, None, None, "L", None],
        }
    )
    matches = _matches(
        [
            ("a", "b", 1, 0.9, None),
            ("b", "a", 1, 0.9, None),  # mutual, above: a-b
            ("b", "c", 2, 0.85, None),
            ("c", "b", 1, 0.85, None),  # mutual, above: b-c
            ("d", "a", 1, 0.95, None),  # one-way: d stays alone
            ("e", "d", 1, 0.99, None),
            ("d", "e", 2, 0.99, None),  # e is labelled: not grouped
            ("c", "f", 2, 0.99, None),
            ("f", "c", 1, 0.99, None),  # f is known: not grouped
        ]
    )
    groups = dict(zip(*matching.group_new(decisions, matches, 0.8).to_pydict().values(), strict=True))
    assert set(groups) == {"a", "b", "c", "d"}
    assert groups["a"] == groups["b"] == groups["c"] != groups["d"]
    again = dict(zip(*matching.group_new(decisions, matches, 0.8).to_pydict().values(), strict=True))
    assert again == groups  # stable names
    high = dict(zip(*matching.group_new(decisions, matches, 0.88).to_pydict().values(), strict=True))
    assert high["a"] == high["b"] != high["c"]
    alone = matching.group_new(decisions, matches, None).column("proposed_individual").to_pylist()
    assert len(set(alone)) == 4
