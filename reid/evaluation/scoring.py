"""One protocol's evaluation: closed-set metrics, top candidates, score distributions, open set.

The numbers come from :mod:`reid.evaluation.metrics`; the new-individual threshold is calibrated
as ``reid match`` calibrates it (:func:`reid.matching.calibrate`) unless one is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from reid.evaluation import metrics
from reid.evaluation.data import EvalData
from reid.evaluation.exclusions import n_excluded
from reid.evaluation.protocols import Protocol

__all__ = [
    "CURVE_K",
    "MAX_PAIRS",
    "TARGET_FALSE_NEW",
    "Evaluation",
    "evaluate",
    "match_threshold",
    "pair_scores",
]

CURVE_K = 20  # accuracy@k is computed for k = 1..CURVE_K (the report's curve)
MAX_PAIRS = 200_000  # different-individual pair scores kept for the histogram (sampled)
TARGET_FALSE_NEW = 0.05  # default calibration: 5% of known queries called new, as in `reid match`


@dataclass
class Evaluation:
    """Everything the metrics file and the report need."""

    metrics: dict  # flat: accuracy@k, map, map@r, open-set keys when computable, counts
    accuracy_at_k: dict[int, float]
    neighbours: metrics.Neighbours  # indices are positions in ``gallery_rows``
    query_rows: np.ndarray
    gallery_rows: np.ndarray
    known: np.ndarray  # [Q] the query's individual has a usable image in the gallery
    top1_correct: np.ndarray  # [Q]
    same_scores: np.ndarray
    different_scores: np.ndarray
    threshold: float | None
    threshold_source: str | None
    exclusions: int = 0


def evaluate(
    data: EvalData,
    protocol: Protocol,
    exclude=None,
    ks: tuple[int, ...] = (1, 5, 10),
    curve_k: int = CURVE_K,
    threshold: float | None = None,
    target_false_new: float = TARGET_FALSE_NEW,
    candidates_k: int = 10,
    seed: int = 0,
) -> Evaluation:
    """Closed-set metrics (via :func:`reid.evaluation.metrics.retrieval_metrics`), top candidates, open-set metrics.

    The new-individual threshold is ``threshold`` when given, else calibrated as ``reid match``
    calibrates it: the score under which ``target_false_new`` of the known queries fall (no
    knowledge of the newcomers used). Open-set metrics need queries whose individual is absent
    from the gallery; then ``threshold_best`` / ``baks_baus_gmean_best`` also report the best
    threshold in hindsight (an upper bound: tuned on the very queries it scores).
    """
    q_rows, g_rows = protocol.query, protocol.gallery_rows
    loo = protocol.gallery is None
    qe, ql, qi = data.emb[q_rows], data.labels[q_rows], data.ids[q_rows]
    ge, gl, gi = (None, None, None) if loo else (data.emb[g_rows], data.labels[g_rows], data.ids[g_rows])
    all_ks = sorted({*ks, *range(1, curve_k + 1)})
    m = metrics.retrieval_metrics(qe, ql, ge, gl, ks=all_ks, query_ids=qi, gallery_ids=gi, exclude=exclude)
    curve = {k: m[f"accuracy@{k}"] for k in all_ks if k <= curve_k}
    out = {k: v for k, v in m.items() if not k.startswith("accuracy@") or int(k.split("@")[1]) in ks}
    nb = metrics.nearest(
        qe,
        ge,
        k=candidates_k,
        query_ids=qi,
        gallery_ids=gi,
        exclude=exclude,
        query_labels=ql,
        gallery_labels=gl,
    )
    glabels = data.labels[g_rows]
    top1 = nb.indices[:, 0] if nb.indices.shape[1] else np.full(len(q_rows), -1)
    top1_correct = (top1 >= 0) & (glabels[np.maximum(top1, 0)] == ql)
    known = nb.n_positives > 0
    same, diff = pair_scores(qe, ql, ge, gl, qi, gi, exclude, seed=seed)
    source = "given"
    if threshold is None and known.any():
        threshold = match_threshold(data, q_rows[known], g_rows, nb, known, target_false_new)
        source = f"calibrated as `reid match` does: {target_false_new:.0%} of known queries fall below it"
    if threshold is None:
        source = None
    elif known.any() and (~known).any():
        out.update(metrics.open_set_metrics(nb.top1, top1_correct, known, ql, threshold))
        best = metrics.calibrate_threshold(nb.top1, top1_correct, known, ql)
        out["threshold_best"] = best
        out["baks_baus_gmean_best"] = metrics.open_set_metrics(nb.top1, top1_correct, known, ql, best)[
            "baks_baus_gmean"
        ]
    if threshold is not None:
        out["threshold"] = float(threshold)
    n_excl = n_excluded(exclude)
    return Evaluation(
        out,
        curve,
        nb,
        q_rows,
        g_rows,
        known,
        top1_correct,
        same,
        diff,
        None if threshold is None else float(threshold),
        source,
        n_excl,
    )


def match_threshold(
    data: EvalData,
    known_rows: np.ndarray,
    g_rows: np.ndarray,
    nb: metrics.Neighbours,
    known: np.ndarray,
    target_false_new: float,
) -> float | None:
    """The threshold :func:`reid.matching.calibrate` derives from the known queries' candidates."""
    from reid.matching import calibrate

    idx, sc = nb.indices[known], nb.scores[known]
    qpos, rank = np.nonzero(idx >= 0)
    grow = g_rows[idx[qpos, rank]]
    matches = pa.table(
        {
            "query_id": pa.array(data.ids[known_rows][qpos].tolist(), pa.string()),
            "neighbor_id": pa.array(data.ids[grow].tolist(), pa.string()),
            "rank": pa.array(rank + 1, pa.int32()),
            "score": pa.array(sc[qpos, rank], pa.float32()),
            "neighbor_individual_id": pa.array(data.labels[grow].tolist(), pa.string()),
        }
    )
    queries = pa.table(
        {
            "image_id": pa.array(data.ids[known_rows].tolist(), pa.string()),
            "individual_id": pa.array(data.labels[known_rows].tolist(), pa.string()),
        }
    )
    return calibrate(queries, matches, target_false_new)["threshold"]


def pair_scores(
    qe, ql, ge=None, gl=None, qi=None, gi=None, exclude=None, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of usable query/gallery pairs: all same-individual ones, sampled different ones."""
    loo = ge is None
    ge, gl = (qe, ql) if loo else (ge, gl)
    if loo:
        gi = qi
    rng = np.random.default_rng(seed)
    gindex = {g: j for j, g in enumerate(gi)} if gi is not None and qi is not None else None
    same, diff = [], []
    total = len(qe) * len(ge)
    keep = min(1.0, max_pairs / max(1, total))
    block = max(1, min(1024, (1 << 24) // max(1, len(ge))))
    qids = list(qi) if qi is not None and gindex is not None else None
    for q0, q1, sim, ignore in metrics.masked_blocks(qe, ge, "cosine", loo, qids, gindex, exclude, block):
        pos = (ql[q0:q1, None] == gl[None, :]) & ~ignore
        neg = ~pos & ~ignore
        same.append(sim[pos])
        if keep < 1.0:
            neg &= rng.random(sim.shape) < keep
        diff.append(sim[neg])
    cat = np.concatenate
    return (cat(same) if same else np.zeros(0, np.float32)), (cat(diff) if diff else np.zeros(0, np.float32))
