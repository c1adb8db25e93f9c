"""Vectors with exact inner products, clustered re-id-like vectors, and the brute-force k-NN reference."""

from __future__ import annotations

import numpy as np

GRID = 2.0**-10  # coordinates on this grid make every inner product exact in float32 (d <= 64)


def grid_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    """Near-unit random vectors whose inner products FAISS and numpy compute bit-identically."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (np.round(x / GRID) * GRID).astype(np.float32)


def clustered_vectors(
    n: int,
    d: int = 64,
    groups: int = 50,
    per_individual: int = 8,
    seed: int = 0,
    spread: float = 2.0,
    noise: float = 0.6,
):
    """Re-id-like data: groups (species/pose) of individuals, images jittered around each one."""
    rng = np.random.default_rng(seed)
    n_ind = max(1, n // per_individual)
    g_centre = rng.standard_normal((groups, d))
    ind_group = rng.integers(0, groups, n_ind)
    ind_centre = g_centre[ind_group] + spread * rng.standard_normal((n_ind, d))
    ind = rng.integers(0, n_ind, n)
    x = ind_centre[ind] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), ind


def brute_force(q: np.ndarray, x: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Exact top-k by a float64 dense product (fine at test sizes), ties by id."""
    s = (q.astype(np.float64) @ x.astype(np.float64).T).astype(np.float32)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    ids = np.broadcast_to(np.arange(x.shape[0]), s.shape)
    order = np.lexsort((ids, -s), axis=1)[:, :k]
    d, i = np.take_along_axis(s, order, 1), order.astype(np.int64)
    i[~np.isfinite(d)] = -1
    return d, i


def assert_same_knn(d, i, ref_d, ref_i, next_score=None):
    """Scores bit-identical; ids identical except inside ties (same set) or a tie cut at rank k."""
    np.testing.assert_array_equal(d, ref_d)
    for r in range(len(d)):
        for v in np.unique(d[r]):
            pos = d[r] == v
            if pos.sum() == 1 and not (next_score is not None and next_score[r] == v):
                assert i[r, pos][0] == ref_i[r, pos][0], f"query {r}: {i[r]} vs {ref_i[r]}"
            elif next_score is None or next_score[r] != v:
                assert set(i[r, pos]) == set(ref_i[r, pos]), f"query {r}: {i[r]} vs {ref_i[r]}"
