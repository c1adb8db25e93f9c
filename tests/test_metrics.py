"""Retrieval metrics against hand-computed rankings."""

from __future__ import annotations

import numpy as np
import pytest

from reid.errors import ReidError
from reid.evaluation.metrics import retrieval_metrics


def _unit(*vecs):
    a = np.asarray(vecs, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_perfect_separation_leave_one_out():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16))
    emb = np.repeat(centers, 4, axis=0) + 0.01 * rng.normal(size=(20, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat([f"id{i}" for i in range(5)], 4)
    m = retrieval_metrics(emb, labels)
    assert m["accuracy@1"] == m["accuracy@5"] == m["accuracy@10"] == 1.0
    assert m["map"] == pytest.approx(1.0) and m["map@r"] == pytest.approx(1.0)
    assert m["n_queries"] == 20 and m["n_gallery"] == 20


def test_hand_computed_ranking():
    # One query; gallery ranked by cosine: g0 (neg), g1 (pos), g2 (neg), g3 (pos).
    q = _unit([1.0, 0.0])
    g = _unit([1.0, 0.05], [1.0, 0.2], [1.0, 0.5], [1.0, 1.0])
    gl = ["b", "a", "c", "a"]
    m = retrieval_metrics(q, ["a"], g, gl, ks=(1, 2, 3))
    assert m["accuracy@1"] == 0.0 and m["accuracy@2"] == 1.0 and m["accuracy@3"] == 1.0
    # AP = (1/2 + 2/4) / 2; MAP@R with R=2: (0 + 1/2) / 2
    assert m["map"] == pytest.approx(0.5)
    assert m["map@r"] == pytest.approx(0.25)
    e = retrieval_metrics(q, ["a"], g, gl, ks=(1,), metric="euclidean")
    assert e["map"] == pytest.approx(m["map"])


def test_ids_and_exclusions():
    q = _unit([1.0, 0.0])
    g = _unit([1.0, 0.0], [1.0, 0.3], [1.0, 0.6])
    gl = ["a", "b", "a"]
    # The gallery holds the query's own photo: ignored when ids are given.
    with_self = retrieval_metrics(q, ["a"], g, gl, ks=(1,))
    assert with_self["accuracy@1"] == 1.0
    m = retrieval_metrics(q, ["a"], g, gl, ks=(1,), query_ids=["x"], gallery_ids=["x", "y", "z"])
    assert m["accuracy@1"] == 0.0 and m["map"] == pytest.approx(0.5)
    # Excluding the only other positive leaves the query without a positive.
    m = retrieval_metrics(q, ["a"], g, gl, query_ids=["x"], gallery_ids=["x", "y", "z"], exclude=[("x", "z")])
    assert m["n_queries"] == 0 and m["n_queries_without_positive"] == 1
    mask = np.array([[False, True, False]])
    m = retrieval_metrics(q, ["a"], g, gl, ks=(1,), exclude=mask)
    assert m["accuracy@1"] == 1.0


def test_singletons_are_not_counted_and_bad_input_is_named():
    emb = _unit([1, 0], [1, 0.1], [0, 1])
    m = retrieval_metrics(emb, ["a", "a", "b"])
    assert m["n_queries"] == 2 and m["n_queries_without_positive"] == 1
    with pytest.raises(ReidError, match="query_labels"):
        retrieval_metrics(emb, ["a", "b"])
    with pytest.raises(ReidError, match="gallery dim"):
        retrieval_metrics(emb, ["a", "a", "b"], np.zeros((2, 3)), ["a", "b"])


def test_blocks_match_single_pass(monkeypatch):
    from reid.evaluation import metrics

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 7, size=50)
    whole = retrieval_metrics(emb, labels)
    monkeypatch.setattr(metrics, "BLOCK", 7)
    assert retrieval_metrics(emb, labels) == pytest.approx(whole)


def test_key_mismatch_equals_a_dense_mask():
    """Only like flanks compared: KeyMismatch (blockwise, no [Q, G] mask) == the dense mask it stands for."""
    from reid.evaluation import metrics
    from reid.evaluation.exclusions import n_excluded
    from reid.evaluation.scoring import pair_scores

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 6, size=60)
    views = np.array(rng.choice(["left", "right", None], size=60), dtype=object)
    ids = [f"i{n}" for n in range(60)]
    near = rng.random((60, 60)) < 0.05  # e.g. same burst
    known = np.array([v is not None for v in views])
    dense = (views[:, None] != views[None, :]) & known[:, None] & known[None, :]
    key = metrics.KeyMismatch(views, None, also=near)
    got = retrieval_metrics(emb, labels, query_ids=ids, exclude=key)
    assert got == pytest.approx(retrieval_metrics(emb, labels, query_ids=ids, exclude=dense | near))
    assert got != pytest.approx(retrieval_metrics(emb, labels, query_ids=ids, exclude=near))
    assert n_excluded(metrics.KeyMismatch(views, None)) == int(dense.sum())
    from scipy import sparse

    assert n_excluded(key) == n_excluded(metrics.KeyMismatch(views, also=sparse.csr_matrix(near)))
    assert n_excluded(key) == int((dense | near).sum())  # a pair dropped twice counts once
    nb = metrics.nearest(emb, k=5, exclude=key, query_labels=labels)
    assert not any(dense[i, j] or near[i, j] for i, row in enumerate(nb.indices) for j in row if j >= 0)
    same, diff = pair_scores(emb, labels, exclude=key)
    same_d, diff_d = pair_scores(emb, labels, exclude=dense | near)
    assert np.array_equal(np.sort(same), np.sort(same_d)) and len(diff) == len(diff_d)
    with pytest.raises(ReidError, match="exclusion keys"):
        retrieval_metrics(emb, labels, exclude=metrics.KeyMismatch(views[:10]))
