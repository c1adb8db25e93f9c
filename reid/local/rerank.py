"""Re-ranking shortlists by verified local matches, without Ray (the match job runs it as tasks).

A shortlist is a query's B best candidates by the global embedding. :func:`shortlist_inliers`
scores every (query, candidate) pair of a set of shortlists with each image's features prepared
once (a candidate shared by several queries is prepared once), BLAS held to one thread (a Ray
task owns one core). :func:`rerank_part` does it for one committed matches part of ``reid match``
and writes the block's local scores; :func:`fuse_part` ranks a block by the fused probability.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid import storage
from reid.data import sightings
from reid.local.calibration import Calibration
from reid.local.extract import Features
from reid.local.match import Matcher, MatcherSettings, Prepared, prepare

__all__ = [
    "LOCAL_SCHEMA",
    "PREPARED_CACHE",
    "burst_pairs",
    "calibration_pairs",
    "fuse_part",
    "rerank_part",
    "shortlist_inliers",
]

PREPARED_CACHE = 2048  # images kept prepared per task (512 keypoints x 128 float32 = 256 KB each)
LOCAL_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("neighbor_id", pa.string(), nullable=False),
        pa.field("inliers", pa.int32(), nullable=False),  # -1: an image of the pair has no features
    ]
)


def shortlist_inliers(
    query_ids: list[str],
    candidates: list[list[str]],
    features: Mapping[str, Features],
    matcher: Matcher,
    symmetric: bool = True,
) -> list[np.ndarray]:
    """Inliers of each query against each of its candidates (-1 where features are missing).

    ``symmetric``: a pair met twice (a in b's shortlist and b in a's) is matched once."""
    from threadpoolctl import threadpool_limits

    k = matcher.settings.keypoints
    prepared: OrderedDict[str, Prepared | None] = OrderedDict()  # the last PREPARED_CACHE images

    def get(image_id: str) -> Prepared | None:
        if image_id in prepared:
            prepared.move_to_end(image_id)
        else:
            f = features.get(image_id)
            prepared[image_id] = None if f is None else prepare(f, k)
            if len(prepared) > PREPARED_CACHE:
                prepared.popitem(last=False)
        return prepared[image_id]

    seen: dict[tuple[str, str], int] = {}
    out = []
    with threadpool_limits(1):
        for q, cands in zip(query_ids, candidates, strict=True):
            qp = get(q)
            res = np.full(len(cands), -1, np.int32)
            todo = []
            for j, c in enumerate(cands):
                key = (min(q, c), max(q, c))
                if symmetric and key in seen:
                    res[j] = seen[key]
                else:
                    todo.append(j)
            if qp is not None and todo:
                res[todo] = matcher.match_many(qp, [get(cands[j]) for j in todo])
            if symmetric:
                for j in todo:
                    seen[(min(q, cands[j]), max(q, cands[j]))] = int(res[j])
            out.append(res)
    return out


def rerank_part(
    matches_uri: str,
    features_uri: str | list[str],
    settings: MatcherSettings,
    out_uri: str,
    shortlist: int,
    queries: tuple[int, int] | None = None,
) -> dict:
    """Local scores of one committed matches part (its pairs of rank <= ``shortlist``; with
    ``queries`` = (start, stop), only those of its queries in that range, in order of first
    appearance), written to ``out_uri`` (the sub-block's commit). Returns counts and timings."""
    from reid.local.store import FeatureSet

    t0 = time.perf_counter()
    m = storage.read_parquet(matches_uri, columns=["query_id", "neighbor_id", "rank"])
    m = m.filter(pc.less_equal(m.column("rank"), shortlist))
    if queries is not None:
        order = pc.unique(m.column("query_id"))[queries[0] : queries[1]]
        m = m.filter(pc.is_in(m.column("query_id"), value_set=order))
    qids, nids = m.column("query_id").to_pylist(), m.column("neighbor_id").to_pylist()
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(qids):
        groups.setdefault(q, []).append(i)
    feats = FeatureSet(features_uri).get(sorted(set(qids) | set(nids)))
    t1, c1 = time.perf_counter(), time.process_time()
    queries = list(groups)
    res = shortlist_inliers(
        queries, [[nids[i] for i in groups[q]] for q in queries], feats, Matcher(settings)
    )
    inliers = np.full(len(qids), -1, np.int32)
    for q, r in zip(queries, res, strict=True):
        inliers[groups[q]] = r
    table = pa.table(
        {"query_id": qids, "neighbor_id": nids, "inliers": pa.array(inliers, pa.int32())}, schema=LOCAL_SCHEMA
    )
    storage.write_parquet(table, out_uri)
    return {
        "pairs": len(qids),
        "load_s": t1 - t0,
        "match_s": time.perf_counter() - t1,
        "match_cpu_s": time.process_time() - c1,
    }


def burst_pairs(
    query_pos: np.ndarray,
    gallery_pos: np.ndarray,
    queries: pa.Table,
    gallery: pa.Table,
    burst_seconds: float = 60.0,
) -> np.ndarray:
    """Which pairs (rows ``query_pos[i]`` of ``queries``, ``gallery_pos[i]`` of ``gallery``) are one
    burst by :func:`reid.data.sightings.same_burst` (computed once over the distinct images)."""
    r, c = sightings.same_burst(queries, gallery, burst_seconds)
    width = max(len(gallery), 1)
    return np.isin(query_pos.astype(np.int64) * width + gallery_pos, r * width + c)


def calibration_pairs(
    matches: pa.Table, queries: pa.Table, gallery_meta: pa.Table, burst_seconds: float = 60.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cosine, inliers, same) of the labelled pairs of a block's shortlists, bursts left out.

    ``matches``: query_id, neighbor_id, score, inliers, neighbor_individual_id; ``queries``: the
    block's image_id, individual_id, camera_id, captured_at; ``gallery_meta``: the same columns
    for the candidates (any superset)."""
    qpos = pc.index_in(matches.column("query_id"), value_set=queries.column("image_id"))
    gpos = pc.index_in(matches.column("neighbor_id"), value_set=gallery_meta.column("image_id"))
    qp = np.asarray(qpos.fill_null(0), np.int64)
    gp = np.asarray(gpos.fill_null(0), np.int64)
    ql = queries.column("individual_id").take(pa.array(qp)).to_pylist()
    gl = matches.column("neighbor_individual_id").to_pylist()
    labelled = np.array([a is not None and b is not None for a, b in zip(ql, gl)], bool)
    labelled &= np.asarray(qpos.is_valid()) & np.asarray(gpos.is_valid())
    keep = labelled & ~burst_pairs(qp, gp, queries, gallery_meta, burst_seconds)
    same = np.array([a == b for a, b in zip(ql, gl)], bool)
    cos = np.asarray(matches.column("score").to_numpy(zero_copy_only=False), np.float64)
    inl = np.asarray(matches.column("inliers").to_numpy(zero_copy_only=False), np.float64)
    return cos[keep], inl[keep], same[keep]


def fuse_part(matches: pa.Table, calibration: Calibration, k: int) -> pa.Table:
    """A block's matches ranked by the fused probability, top ``k`` per query: ``score`` becomes
    the fused score; ``global_score``, ``inliers``, ``p_global``, ``p_local`` and ``global_rank``
    keep what it came from."""
    cos = np.asarray(matches.column("score").to_numpy(zero_copy_only=False), np.float64)
    inl = np.asarray(matches.column("inliers").to_numpy(zero_copy_only=False), np.float64)
    fused = calibration.fuse(cos, inl)
    t = matches.rename_columns(["global_rank" if c == "rank" else c for c in matches.column_names])
    t = t.set_column(t.column_names.index("score"), "global_score", pa.array(cos, pa.float32()))
    t = t.append_column("p_global", pa.array(calibration.p_global(cos), pa.float32()))
    t = t.append_column(
        "p_local", pa.array(np.where(inl >= 0, calibration.p_local(np.maximum(inl, 0)), np.nan), pa.float32())
    )
    t = t.append_column("score", pa.array(fused, pa.float32()))
    t = t.sort_by([("query_id", "ascending"), ("score", "descending"), ("global_rank", "ascending")])
    q = t.column("query_id").combine_chunks()
    codes = np.asarray(pc.dictionary_encode(q).indices) if len(q) else np.zeros(0, np.int64)
    start = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(start, np.arange(len(codes)), 0))
    rank = np.arange(len(codes)) - first + 1
    t = t.append_column("rank", pa.array(rank, pa.int32()))
    return t.filter(pa.array(rank <= k))
