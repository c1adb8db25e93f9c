"""Retrieval metrics for re-identification: accuracy@k, mAP and MAP@R, in one place.

Training validation and the evaluation job both call :func:`retrieval_metrics`, so the numbers a
model is selected on are the numbers it is reported with. Similarities are computed in blocks of
queries, so memory stays O(block x gallery) rather than O(queries x gallery).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

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


class KeyMismatch:
    """Ignore query/gallery pairs whose keys are both known (not None) and differ, plus ``also``.

    E.g. viewpoints: a left flank is only compared with left flanks (and with photos of unknown
    viewpoint) when the two flanks of a species carry different patterns. Applied block by block,
    so it costs no [Q, G] mask in memory. ``gallery_keys`` None = leave-one-out (the query keys).
    ``also``: another exclusion (mask, sparse matrix or id pairs) applied as well.
    """

    def __init__(self, query_keys, gallery_keys=None, also=None):
        self.query_keys = np.asarray(query_keys, dtype=object)
        self.gallery_keys = (
            self.query_keys if gallery_keys is None else np.asarray(gallery_keys, dtype=object)
        )
        self.also = also
        self._known_q = np.array([k is not None for k in self.query_keys], dtype=bool)
        self._known_g = np.array([k is not None for k in self.gallery_keys], dtype=bool)

    def block(self, q0: int, q1: int) -> np.ndarray:
        """Rows q0:q1 of the [Q, G] mask of mismatched pairs."""
        mism = self.query_keys[q0:q1, None] != self.gallery_keys[None, :]
        return mism & self._known_q[q0:q1, None] & self._known_g[None, :]

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether each (query row, gallery column) pair is mismatched."""
        mism = self.query_keys[rows] != self.gallery_keys[cols]
        return mism & self._known_q[rows] & self._known_g[cols]


def _exclusion_mask(
    exclude, q0: int, q1: int, n_gallery: int, query_ids, gallery_index: dict | None
) -> np.ndarray | None:
    """Rows q0:q1 of the [Q, G] mask of pairs to ignore (besides an image matching itself)."""
    if exclude is None:
        return None
    if isinstance(exclude, KeyMismatch):
        mask = exclude.block(q0, q1)
        extra = _exclusion_mask(exclude.also, q0, q1, n_gallery, query_ids, gallery_index)
        return mask if extra is None else mask | extra
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
        return exclude[q0:q1]
    if hasattr(exclude, "tocsr"):  # a scipy.sparse [Q, G] matrix: large sets, few excluded pairs
        return exclude.tocsr()[q0:q1].toarray().astype(bool)
    if gallery_index is None or query_ids is None:
        raise ReidError("exclude given as (query_id, gallery_id) pairs needs query_ids and gallery_ids")
    mask = np.zeros((q1 - q0, n_gallery), dtype=bool)
    wanted = {qi: i for i, qi in enumerate(query_ids[q0:q1])}
    for q, g in exclude:
        i, j = wanted.get(q), gallery_index.get(g)
        if i is not None and j is not None:
            mask[i, j] = True
    return mask


def _check_exclude(exclude, n_query: int, n_gallery: int) -> None:
    """A mask-shaped exclusion must be [Q, G]; key arrays one key per query / gallery image."""
    if isinstance(exclude, KeyMismatch):
        if (len(exclude.query_keys), len(exclude.gallery_keys)) != (n_query, n_gallery):
            raise ReidError(
                f"exclusion keys: {len(exclude.query_keys)} query and {len(exclude.gallery_keys)} gallery keys, "
                f"expected {n_query} and {n_gallery}"
            )
        _check_exclude(exclude.also, n_query, n_gallery)
    elif (hasattr(exclude, "tocsr") or isinstance(exclude, np.ndarray) and exclude.dtype == bool) and tuple(
        exclude.shape
    ) != (n_query, n_gallery):
        raise ReidError(f"exclude mask has shape {exclude.shape}, expected {(n_query, n_gallery)}")


def masked_blocks(
    q: np.ndarray,
    g: np.ndarray,
    metric: str,
    loo: bool,
    qids: Sequence | None,
    gallery_index: dict | None,
    exclude: object,
    block: int | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Query blocks of the similarity matrix, with what each query must not match set to -inf
    (the one masking rule of the metrics here and of :func:`reid.evaluation.scoring.pair_scores`).

    ``block`` (queries per block) defaults to what keeps [block, gallery] arrays bounded. Yields
    ``(q0, q1, sim, ignore)``; memory stays O(block x gallery). Ignored: the query itself
    (leave-one-out), the same image id in the gallery, and the caller's exclusions.
    """
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    block = block or max(1, min(BLOCK, MAX_BLOCK_CELLS // max(1, len(g))))
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
        yield q0, q1, np.where(ignore, -np.inf, sim), ignore


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
    ``(query_id, gallery_id)`` pairs, of further pairs to ignore (e.g. same camera and minute), or
    a :class:`KeyMismatch` (e.g. only like flanks are compared).
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
    _check_exclude(exclude, len(q), len(g))

    # Labels as integer codes so comparisons are vectorised whatever the label type.
    _, codes = np.unique(np.concatenate([ql.astype(str), gl.astype(str)]), return_inverse=True)
    qc, gc = codes[: len(q)], codes[len(q) :]
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    map_r_sum = 0.0
    n_valid = 0
    n_no_pos = 0
    kmax = ks[-1]
    for q0, q1, sim, ignore in masked_blocks(q, g, metric, loo, qids, gallery_index, exclude):
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


# ---------------------------------------------------------------------------------------------
# Nearest candidates and open-set metrics (is the query's individual in the gallery at all?)


@dataclass
class Neighbours:
    """The top-k gallery candidates of each query, ranked as :func:`retrieval_metrics` ranks them."""

    indices: np.ndarray  # [Q, k] gallery row numbers; -1 where fewer than k candidates remain
    scores: np.ndarray  # [Q, k] similarities (float32); -inf where indices is -1
    n_positives: np.ndarray | None = None  # [Q] same-label candidates left after exclusions

    @property
    def top1(self) -> np.ndarray:
        return self.scores[:, 0] if self.scores.shape[1] else np.full(len(self.scores), -np.inf, np.float32)


def nearest(
    query_emb,
    gallery_emb=None,
    k: int = 10,
    query_ids: Sequence[str] | None = None,
    gallery_ids: Sequence[str] | None = None,
    exclude=None,
    query_labels=None,
    gallery_labels=None,
    metric: str = "cosine",
) -> Neighbours:
    """Top-k candidates per query with the same ignore rules as :func:`retrieval_metrics`.

    ``gallery_emb`` None = leave-one-out. Given labels, also counts each query's usable positives
    (``n_positives == 0`` marks a query whose individual is absent from the gallery: "new").
    """
    q = _as_2d(query_emb, "query_emb")
    loo = gallery_emb is None
    g = q if loo else _as_2d(gallery_emb, "gallery_emb")
    if g.shape[1] != q.shape[1]:
        raise ReidError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if metric not in ("cosine", "euclidean"):
        raise ReidError(f"metric {metric!r}: expected 'cosine' or 'euclidean'")
    k = max(0, min(int(k), len(g)))
    if loo and gallery_ids is None:
        gallery_ids = query_ids
    gallery_index = {gid: j for j, gid in enumerate(gallery_ids)} if gallery_ids is not None else None
    qids = list(query_ids) if query_ids is not None else None
    codes_q = codes_g = None
    if query_labels is not None:
        ql = _labels(query_labels, len(q), "query_labels")
        gl = ql if loo else _labels(gallery_labels, len(g), "gallery_labels")
        _, codes = np.unique(np.concatenate([ql.astype(str), gl.astype(str)]), return_inverse=True)
        codes_q, codes_g = codes[: len(q)], codes[len(q) :]
    idx_out = np.full((len(q), k), -1, dtype=np.int64)
    score_out = np.full((len(q), k), -np.inf, dtype=np.float32)
    n_pos = np.zeros(len(q), dtype=np.int64) if codes_q is not None else None
    for q0, q1, sim, ignore in masked_blocks(q, g, metric, loo, qids, gallery_index, exclude):
        sim = sim.astype(np.float32)
        if n_pos is not None:
            n_pos[q0:q1] = ((codes_g[None, :] == codes_q[q0:q1, None]) & ~ignore).sum(1)
        if k == 0:
            continue
        part = (
            np.argpartition(-sim, k - 1, axis=1)[:, :k]
            if k < sim.shape[1]
            else np.tile(np.arange(sim.shape[1]), (q1 - q0, 1))
        )
        psim = np.take_along_axis(sim, part, axis=1)
        # Sort by score, then by gallery row (the order retrieval_metrics' stable argsort gives ties).
        order = np.lexsort((part, -psim), axis=1)
        idx = np.take_along_axis(part, order, axis=1)
        sc = np.take_along_axis(psim, order, axis=1)
        idx[~np.isfinite(sc)] = -1
        idx_out[q0:q1], score_out[q0:q1] = idx, sc
    return Neighbours(idx_out, score_out, n_pos)


def _balanced(correct: np.ndarray, labels: np.ndarray) -> float:
    """Mean over individuals of the share of their queries handled correctly."""
    if len(labels) == 0:
        return float("nan")
    _, inv = np.unique(labels.astype(str), return_inverse=True)
    per = np.bincount(inv, weights=correct.astype(np.float64)) / np.bincount(inv)
    return float(per.mean())


def open_set_metrics(top1_scores, top1_correct, known, labels, threshold: float) -> dict:
    """Open-set re-identification at a similarity threshold.

    A query is answered "new individual" when its best score is below ``threshold``, else with
    the individual of its top candidate. ``known``: the query's individual is in the gallery.
    ``baks``: balanced (per-individual mean) accuracy on known queries (top-1 right and above the
    threshold); ``baus``: balanced accuracy on unknown queries (answered "new"); ``gmean``: their
    geometric mean. ``auroc_new``: threshold-free AUROC of "new" detection by low top-1 score.
    """
    s = np.asarray(top1_scores, dtype=np.float64)
    correct = np.asarray(top1_correct, dtype=bool)
    known = np.asarray(known, dtype=bool)
    labels = np.asarray(labels)
    if not (len(s) == len(correct) == len(known) == len(labels)):
        raise ReidError("open_set_metrics: scores, correct, known and labels must have one entry per query")
    accept = s >= threshold
    baks = _balanced(accept[known] & correct[known], labels[known])
    baus = _balanced(~accept[~known], labels[~known])
    out = {
        "auroc_new": _auroc(~known, -np.nan_to_num(s, neginf=-1e9)),
        "baks": baks,
        "baus": baus,
        "baks_baus_gmean": float(np.sqrt(baks * baus)) if np.isfinite(baks * baus) else float("nan"),
        "threshold": float(threshold),
        "n_known_queries": int(known.sum()),
        "n_unknown_queries": int((~known).sum()),
    }
    return out


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    sorted_s = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # average ranks over ties
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibrate_threshold(top1_scores, top1_correct, known, labels, max_candidates: int = 2048) -> float:
    """The threshold that maximises the geometric mean of BAKS and BAUS on these queries.

    Candidates are midpoints between consecutive distinct top-1 scores (subsampled to
    ``max_candidates`` quantiles); the best one is returned. Needs known and unknown queries.
    """
    s = np.asarray(top1_scores, dtype=np.float64)
    known = np.asarray(known, dtype=bool)
    if known.all() or not known.any():
        raise ReidError(
            "calibrate_threshold needs both known and unknown queries (individuals absent "
            "from the gallery); give a fixed threshold instead"
        )
    labels = np.asarray(labels).astype(str)
    correct = np.asarray(top1_correct, dtype=bool)
    finite = np.unique(s[np.isfinite(s)])
    if len(finite) == 0:
        return 0.0
    cands = np.concatenate([[finite[0] - 1e-6], (finite[1:] + finite[:-1]) / 2, [finite[-1] + 1e-6]])
    if len(cands) > max_candidates:
        cands = np.unique(np.quantile(cands, np.linspace(0, 1, max_candidates)))
    # BAKS(t) = sum of w over known, correct queries scoring >= t; BAUS(t) = sum over unknown < t,
    # with w = 1 / (queries of that individual * individuals in that group): O(N log N) in all.
    baks = _weighted_at_least(s[known & correct], _weights(labels[known])[correct[known]], cands)
    baus = 1.0 - _weighted_at_least(s[~known], _weights(labels[~known]), cands)
    gmean = np.sqrt(np.clip(baks, 0, None) * np.clip(baus, 0, None))
    best = np.flatnonzero(gmean >= gmean.max() - 1e-12)
    return float(cands[best[len(best) // 2]])  # the middle of the best plateau


def _weights(labels: np.ndarray) -> np.ndarray:
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (counts[inv] * len(counts))


def _weighted_at_least(scores: np.ndarray, weights: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, the sum of ``weights`` whose score is >= t."""
    order = np.argsort(scores)
    cum = np.concatenate([[0.0], np.cumsum(weights[order][::-1])])  # cum[j]: the j highest scores
    n_at_least = len(scores) - np.searchsorted(scores[order], thresholds, side="left")
    return cum[n_at_least]
