"""What `reid evaluate` writes besides the report: the headline metrics in their order, each
query's top candidates as a table, and metric values made JSON-safe."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from reid.evaluation.data import EvalData
from reid.evaluation.scoring import Evaluation

__all__ = ["HEADLINE", "json_safe", "queries_table"]

# Metric keys first in metrics.json and the printed table, in this order.
HEADLINE = [
    "accuracy@1",
    "accuracy@5",
    "accuracy@10",
    "map",
    "map@r",
    "auroc_new",
    "baks",
    "baus",
    "baks_baus_gmean",
    "threshold",
    "threshold_best",
    "baks_baus_gmean_best",
]


def json_safe(v: object) -> object:
    """JSON-safe values: NaN becomes null, numpy scalars plain numbers."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return json_safe(v.item())
    return v


def queries_table(data: EvalData, ev: Evaluation) -> pa.Table:
    """One row per query: its individual, whether it is known to the gallery, its top candidates."""
    g = ev.gallery_rows
    idx, sc = ev.neighbours.indices, ev.neighbours.scores
    cand_ids, cand_ind, cand_sc, first = [], [], [], []
    for qpos, qrow in enumerate(ev.query_rows):
        keep = idx[qpos] >= 0
        rows = g[idx[qpos][keep]]
        cand_ids.append(data.ids[rows].tolist())
        labs = data.labels[rows].tolist()
        cand_ind.append(labs)
        cand_sc.append(sc[qpos][keep].astype(np.float32).tolist())
        hit = [r for r, lab in enumerate(labs, 1) if lab == data.labels[qrow]]
        first.append(hit[0] if hit else None)
    return pa.table(
        {
            "query_id": pa.array(data.ids[ev.query_rows].tolist(), pa.string()),
            "individual_id": pa.array(data.labels[ev.query_rows].tolist(), pa.string()),
            "known": pa.array(ev.known.tolist(), pa.bool_()),
            "top1_correct": pa.array(ev.top1_correct.tolist(), pa.bool_()),
            "first_correct_rank": pa.array(first, pa.int32()),
            "candidate_ids": pa.array(cand_ids, pa.list_(pa.string())),
            "candidate_individuals": pa.array(cand_ind, pa.list_(pa.string())),
            "candidate_scores": pa.array(cand_sc, pa.list_(pa.float32())),
        }
    )
