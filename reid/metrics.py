"""Retrieval metrics for re-identification: accuracy@k, mAP and MAP@R, in one place.

Training validation and the evaluation job both call :func:`retrieval_metrics`, so the numbers a
model is selected on are the numbers it is reported with. Similarities are computed in blocks of
queries, so memory stays O(block x gallery) rather than O(queries x gallery).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from reid.errors import ReidError

BLOCK = 1024  # queries per similarity block (fewer for a very large gallery)
MAX_BLOCK_CELLS = 1 << 25  # bounds the [block, gallery] arrays (~256 MB for the int64 ranks)


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if arr.ndim != 2:
        raise ReidError(f"{name}: expected a 2-D [n, d] array of embeddings, got shape {arr.shape}")
    return arr


def _labels(x, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.ndim != 1 or len(arr) != n:
        raise ReidError(f"{name}: expected {n} labels (one per embedding), got shape {arr.shape}")
    return arr


def _exclusion_mask(
    exclude, q0: int, q1: int, n_gallery: int, query_ids, gallery_index: dict | None
) -> np.ndarray | None:
    """Rows q0:q1 of the [Q, G] mask of pairs to ignore (besides an image matching itself)."""
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
        return exclude[q0:q1]
    if gallery_index is None or query_ids is None:
        raise ReidError("exclude given as (query_id, gallery_id) pairs needs query_ids and gallery_ids")
    mask = np.zeros((q1 - q0, n_gallery), dtype=bool)
    wanted = {qi: i for i, qi in enumerate(query_ids[q0:q1])}
    for q, g in exclude:
        i, j = wanted.get(q), gallery_index.get(g)
        if i is not None and j is not None:
            mask[i, j] = True
    return mask


def retrieval_metrics(
    query_emb,
    query_labels,
    gallery_emb=None,
    gallery_labels=None,
    ks: Sequence[int] = (1, 5, 10),
    query_ids: Sequence[str] | None = None,
    gallery_ids: Sequence[str] | None = None,
    exclude: np.ndarray | Iterable[tuple[str, str]] | None = None,
    metric: str = "cosine",
) -> dict:
    """Closed-set retrieval metrics of queries against a gallery ranked by similarity.

    ``gallery_emb`` None means leave-one-out: each query is ranked against every other query.
    When ``query_ids`` and ``gallery_ids`` are both given, a gallery image with the query's own id
    is ignored (the same photo in both sets). ``exclude`` is a boolean [Q, G] mask, or an iterable of
    ``(query_id, gallery_id)`` pairs, of further pairs to ignore (e.g. same camera and minute).
    ``metric``: ``cosine`` (dot product; embeddings are L2-normalised) or ``euclidean``.

    accuracy@k: share of queries with a same-individual image among the top k. ``map``: mean
    average precision over the whole ranking. ``map@r``: MAP@R (Musgrave et al., 2020), precision
    over the first R ranks where R is the query's number of positives. Queries with no positive in
    the gallery are left out of all three and counted in ``n_queries_without_positive``.
    """
    q = _as_2d(query_emb, "query_emb")
    ql = _labels(query_labels, len(q), "query_labels")
    loo = gallery_emb is None
    if loo:
        g, gl = q, ql
        if gallery_labels is not None:
            raise ReidError("gallery_labels given without gallery_emb")
    else:
        g = _as_2d(gallery_emb, "gallery_emb")
        if gallery_labels is None:
            raise ReidError("gallery_emb given without gallery_labels")
        gl = _labels(gallery_labels, len(g), "gallery_labels")
        if g.shape[1] != q.shape[1]:
            raise ReidError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if metric not in ("cosine", "euclidean"):
        raise ReidError(f"metric {metric!r}: expected 'cosine' or 'euclidean'")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ReidError(f"ks {ks}: expected positive ranks such as (1, 5, 10)")
    if loo and gallery_ids is None:
        gallery_ids = query_ids
    gallery_index = {gid: j for j, gid in enumerate(gallery_ids)} if gallery_ids is not None else None
    qids = list(query_ids) if query_ids is not None else None
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool and exclude.shape != (len(q), len(g)):
        raise ReidError(f"exclude mask has shape {exclude.shape}, expected {(len(q), len(g))}")

    # Labels as integer codes so comparisons are vectorised whatever the label type.
    _, codes = np.unique(np.concatenate([ql.astype(str), gl.astype(str)]), return_inverse=True)
    qc, gc = codes[: len(q)], codes[len(q) :]
    g_sq = (g * g).sum(1) if metric == "euclidean" else None

    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    map_r_sum = 0.0
    n_valid = 0
    n_no_pos = 0
    kmax = ks[-1]
    block = max(1, min(BLOCK, MAX_BLOCK_CELLS // max(1, len(g))))
    for q0 in range(0, len(q), block):
        q1 = min(len(q), q0 + block)
        sim = q[q0:q1] @ g.T
        if metric == "euclidean":
            sim = 2 * sim - (q[q0:q1] * q[q0:q1]).sum(1, keepdims=True) - g_sq[None, :]
        ignore = np.zeros(sim.shape, dtype=bool)
        if loo:
            ignore[np.arange(q1 - q0), np.arange(q0, q1)] = True
        if qids is not None and gallery_index is not None:
            for i, qid in enumerate(qids[q0:q1]):
                j = gallery_index.get(qid)
                if j is not None:
                    ignore[i, j] = True
        extra = _exclusion_mask(exclude, q0, q1, len(g), qids, gallery_index)
        if extra is not None:
            ignore |= extra
        sim = np.where(ignore, -np.inf, sim)
        order = np.argsort(-sim, axis=1, kind="stable")
        rel = (gc[order] == qc[q0:q1, None]) & ~np.take_along_axis(ignore, order, axis=1)
        n_pos = rel.sum(1)
        valid = n_pos > 0
        n_no_pos += int((~valid).sum())
        if not valid.any():
            continue
        rel, n_pos = rel[valid], n_pos[valid]
        n_valid += len(rel)
        first = rel[:, :kmax]
        for k in ks:
            hits[k] += int(first[:, :k].any(1).sum())
        cum = np.cumsum(rel, axis=1)
        ranks = np.arange(1, rel.shape[1] + 1)
        ap_sum += float((((cum / ranks) * rel).sum(1) / n_pos).sum())
        within_r = ranks[None, :] <= n_pos[:, None]
        map_r_sum += float((((cum / ranks) * rel * within_r).sum(1) / n_pos).sum())

    out: dict = {}
    for k in ks:
        out[f"accuracy@{k}"] = hits[k] / n_valid if n_valid else float("nan")
    out["map"] = ap_sum / n_valid if n_valid else float("nan")
    out["map@r"] = map_r_sum / n_valid if n_valid else float("nan")
    out["n_queries"] = n_valid
    out["n_queries_without_positive"] = n_no_pos
    out["n_gallery"] = len(g)
    return out
