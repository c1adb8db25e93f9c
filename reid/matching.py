"""All-vs-all matching: per-shard k-NN with exclusions, merge per query, decisions, new individuals.

Each (shard x query block) search returns the k best *allowed* neighbours of every query in that
shard (self, same camera-day and same-survey neighbours are removed by re-searching deeper where
needed), and :func:`merge_topk` keeps the global k best, so memory stays O(N*k). Ties are broken
by global id, which makes the sharded result equal to a brute-force sort.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid.data import sightings
from reid.errors import ConfigError
from reid.schema import MATCHES_SCHEMA
from reid.search import faiss_index

GPU_MAX_K = 2048
LOCAL_SCORE_COLUMNS = ("global_score", "inliers")  # of re-ranked matches (reid.local.rerank.fuse_part)
MATCH_COLUMNS = MATCHES_SCHEMA.names + ["query_survey", "neighbor_survey", "neighbor_individual_id"]
MATCHES_OUT_SCHEMA = pa.schema(
    list(MATCHES_SCHEMA)
    + [
        pa.field("query_survey", pa.string()),
        pa.field("neighbor_survey", pa.string()),
        pa.field("neighbor_individual_id", pa.string()),
    ]
)
DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("predicted_individual", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("is_new", pa.bool_(), nullable=False),
        pa.field("survey", pa.string()),
        pa.field("individual_id", pa.string()),  # the query's own label, when it has one
    ]
)
PROPOSED_SCHEMA = pa.schema(
    [pa.field("image_id", pa.string(), nullable=False), pa.field("proposed_individual", pa.string())]
)


@dataclass(frozen=True)
class Exclusions:
    """Which neighbours a query may not match: itself, its camera-day (:func:`reid.data.sightings.same_camera_day`:
    same camera, same UTC day), its survey."""

    self_match: bool = True
    same_camera_day: bool = False
    same_survey: bool = False

    @property
    def any(self) -> bool:
        return self.self_match or self.same_camera_day or self.same_survey

    @property
    def only_self(self) -> bool:
        return self.self_match and not (self.same_camera_day or self.same_survey)


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(len(table), type_)
    col = table.column(name)
    return (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).cast(type_)


def _encode(values: pa.Array, dictionary: pa.Array | None = None) -> tuple[pa.Array, np.ndarray]:
    """Integer codes for ``values`` (-1 for null or absent from ``dictionary``)."""
    if dictionary is None:
        enc = pc.dictionary_encode(values)
        dictionary = enc.dictionary
        codes = enc.indices
    else:
        codes = pc.index_in(values, value_set=dictionary)
    return dictionary, np.asarray(codes.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


class GalleryMeta:
    """A shard's id table, encoded once for fast exclusion masks."""

    def __init__(self, ids: pa.Table):
        self.image_id = _column(ids, "image_id", pa.string())
        self.cam_dict, self.cam = _encode(sightings.camera_day_key(ids))
        self.survey_dict, self.survey = _encode(_column(ids, "survey", pa.string()))

    def query_codes(self, queries: pa.Table) -> dict[str, np.ndarray]:
        _, self_row = _encode(_column(queries, "image_id", pa.string()), self.image_id)
        _, cam = _encode(sightings.camera_day_key(queries), self.cam_dict)
        _, survey = _encode(_column(queries, "survey", pa.string()), self.survey_dict)
        return {"self": self_row, "cam": cam, "survey": survey}

    def allowed(self, ids: np.ndarray, codes: dict[str, np.ndarray], exclude: Exclusions) -> np.ndarray:
        """Mask of neighbours (local ids [n, k], -1 = none) that the exclusions allow."""
        ok = ids >= 0
        safe = np.where(ok, ids, 0)
        if exclude.self_match:
            ok &= ids != codes["self"][:, None]
        if exclude.same_camera_day:  # equal camera_day_key: reid.data.sightings.same_camera_day
            q = codes["cam"][:, None]
            ok &= ~((q >= 0) & (self.cam[safe] == q))
        if exclude.same_survey:
            q = codes["survey"][:, None]
            ok &= ~((q >= 0) & (self.survey[safe] == q))
        return ok


def search_shard(
    index,
    queries: np.ndarray,
    k: int,
    query_meta: pa.Table | None = None,
    gallery: GalleryMeta | None = None,
    exclude: Exclusions = Exclusions(self_match=False),
    nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best allowed neighbours in one shard: (scores [n, k], local ids [n, k], -1 = none).

    With exclusions, the search asks for more than k and re-searches, twice as deep each time,
    only the queries left with fewer than k allowed neighbours.
    """
    if not exclude.any:
        return faiss_index.search(index, queries, k, nprobe)
    if gallery is None or query_meta is None:
        raise ValueError("exclusions need the query metadata and the shard's id table")
    n, ntotal = len(queries), index.ntotal
    max_depth = GPU_MAX_K if "Gpu" in type(index).__name__ else ntotal  # GPU FAISS: k <= 2048
    codes = gallery.query_codes(query_meta)
    out_d = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    todo = np.arange(n)
    depth = min(max(ntotal, 1), max_depth, k + 1 if exclude.only_self else 2 * k + 1)
    while len(todo):
        d, i = faiss_index.search(index, queries[todo], depth, nprobe)
        sub = {name: c[todo] for name, c in codes.items()}
        ok = gallery.allowed(i, sub, exclude)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(ok, order, 1)
        d_k = np.where(keep, np.take_along_axis(d, order, 1), -np.inf).astype(np.float32)
        i_k = np.where(keep, np.take_along_axis(i, order, 1), -1)
        width = d_k.shape[1]
        out_d[todo, :width], out_i[todo, :width] = d_k, i_k
        short = keep.sum(1) < k
        exhausted = (i < 0).any(1) | (depth >= min(ntotal, max_depth))
        todo = todo[short & ~exhausted]
        depth = min(ntotal, max_depth, depth * 2)
    return out_d, out_i


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard results (scores, global ids) into the k best per query.

    Order: score descending, then global id ascending (a deterministic tie-break); missing
    entries (id -1) come last.
    """
    d = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32, copy=False)
    g = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64, copy=False)
    d = np.where(g >= 0, d, -np.inf)
    order = np.lexsort((np.where(g >= 0, g, np.iinfo(np.int64).max), -d), axis=1)[:, :k]
    d, g = np.take_along_axis(d, order, 1), np.take_along_axis(g, order, 1)
    if d.shape[1] < k:
        pad = k - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
        g = np.pad(g, ((0, 0), (0, pad)), constant_values=-1)
    return d, g


def to_global(ids: np.ndarray, offset: int) -> np.ndarray:
    return np.where(ids >= 0, ids + offset, -1)


def matches_table(queries: pa.Table, scores: np.ndarray, gids: np.ndarray, gallery: pa.Table) -> pa.Table:
    """Matches rows (1-based rank) for a block of queries; ``gallery`` is indexed by global id."""
    valid = gids >= 0
    q_row, rank = np.nonzero(valid)
    neighbors = gallery.take(pa.array(gids[valid]))
    return pa.table(
        {
            "query_id": _column(queries, "image_id", pa.string()).take(pa.array(q_row)),
            "neighbor_id": _column(neighbors, "image_id", pa.string()),
            "rank": pa.array(rank + 1, pa.int32()),
            "score": pa.array(scores[valid], pa.float32()),
            "query_survey": _column(queries, "survey", pa.string()).take(pa.array(q_row)),
            "neighbor_survey": _column(neighbors, "survey", pa.string()),
            "neighbor_individual_id": _column(neighbors, "individual_id", pa.string()),
        },
        schema=MATCHES_OUT_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------
# Decisions: known individual or new


def best_labelled(matches: pa.Table) -> pa.Table:
    """Per query, the best-ranked neighbour with a label: (query_id, predicted_individual, score)."""
    m = matches.filter(pc.is_valid(matches.column("neighbor_individual_id")))
    m = m.sort_by([("query_id", "ascending"), ("rank", "ascending")])
    q = m.column("query_id").combine_chunks()
    if len(q) == 0:
        return pa.table(
            {
                "query_id": pa.array([], pa.string()),
                "predicted_individual": pa.array([], pa.string()),
                "score": pa.array([], pa.float32()),
            }
        )
    codes = np.asarray(pc.dictionary_encode(q).indices)
    first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    take = pa.array(first)
    out = {
        "query_id": q.take(take),
        "predicted_individual": m.column("neighbor_individual_id").take(take),
        "score": m.column("score").take(take).cast(pa.float32()),
    }
    for name in LOCAL_SCORE_COLUMNS:  # re-ranked matches: the global and local scores behind it
        if name in m.column_names:
            out[name] = m.column(name).take(take)
    return pa.table(out)


def decide(queries: pa.Table, matches: pa.Table, threshold: float | None) -> pa.Table:
    """One row per query: the nearest labelled neighbour's individual, or new when its score is
    under ``threshold`` (or no labelled neighbour was found)."""
    best = best_labelled(matches)
    qids = _column(queries, "image_id", pa.string())
    pos = pc.index_in(qids, value_set=best.column("query_id").combine_chunks())
    found = pc.is_valid(pos)
    take = pos.fill_null(0) if len(best) else None
    predicted = best.column("predicted_individual").combine_chunks().take(take) if take is not None else None
    score = best.column("score").combine_chunks().take(take) if take is not None else None
    if predicted is None:
        predicted, score = pa.nulls(len(qids), pa.string()), pa.nulls(len(qids), pa.float32())
    else:
        predicted = pc.if_else(found, predicted, pa.scalar(None, pa.string()))
        score = pc.if_else(found, score, pa.scalar(None, pa.float32()))
    s = np.asarray(score.fill_null(-np.inf).to_numpy(zero_copy_only=False), dtype=np.float32)
    is_new = ~np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)
    if threshold is not None:
        is_new |= s < np.float32(threshold)
    table = pa.table(
        {
            "query_id": qids,
            "predicted_individual": predicted,
            "score": score,
            "is_new": pa.array(is_new),
            "survey": _column(queries, "survey", pa.string()),
            "individual_id": _column(queries, "individual_id", pa.string()),
        },
        schema=DECISIONS_SCHEMA,
    )
    for name in LOCAL_SCORE_COLUMNS:  # fused decisions carry all three scores (score = fused)
        if name in best.column_names:
            col = best.column(name).combine_chunks()
            col = col.take(take) if take is not None else pa.nulls(len(qids), col.type)
            table = table.append_column(name, pc.if_else(found, col, pa.scalar(None, col.type)))
    return table


def calibrate(queries: pa.Table, matches: pa.Table, target_false_new: float) -> dict:
    """The threshold under which at most ``target_false_new`` of known-individual queries are
    declared new, plus what it achieves on the calibration queries.

    ``queries`` are labelled images whose individual has other images in the index (image_id,
    individual_id); ``matches`` are their neighbours with self (and bursts) already excluded.
    """
    if not 0 < target_false_new < 1:
        raise ConfigError(f"target false-new rate must be in (0, 1), got {target_false_new}")
    dec = decide(queries, matches, None)
    s = np.sort(np.asarray(dec.column("score").fill_null(-np.inf).to_numpy(zero_copy_only=False), np.float64))
    n = len(s)
    if n == 0:
        return {"threshold": None, "n": 0, "reason": "no labelled individual with two or more images"}
    threshold = float(s[int(np.floor(target_false_new * n))])
    truth = dec.column("individual_id")
    pred = dec.column("predicted_individual")
    correct = np.asarray(pc.fill_null(pc.equal(truth, pred), False))
    # Leave-individual-out: were the query's individual unknown, would its best *other* labelled
    # neighbour fall under the threshold? Where top-k holds no other individual, that best score
    # is at most the k-th score, so this counts a lower bound of the newcomers flagged.
    own = _individual_of(matches, queries)
    other = matches.filter(pc.fill_null(pc.not_equal(matches.column("neighbor_individual_id"), own), False))
    other_best = decide(queries, other, None)
    o = np.asarray(other_best.column("score").fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
    lowest = matches.group_by("query_id").aggregate([("score", "min")])
    pos = pc.index_in(_column(queries, "image_id", pa.string()), value_set=lowest.column("query_id"))
    kth = np.asarray(
        lowest.column("score_min").take(pos.fill_null(0)).to_numpy(zero_copy_only=False), np.float64
    )
    kth[~np.asarray(pc.is_valid(pos))] = np.nan
    flagged = np.where(np.isnan(o), kth < threshold, o < threshold)
    return {
        "threshold": threshold,
        "target_false_new": target_false_new,
        "n": n,
        "false_new": float(np.mean(s < threshold)),
        "accuracy_at_1": float(correct.mean()),
        "new_flagged_lower_bound": float(np.mean(flagged)),
    }


def _individual_of(matches: pa.Table, queries: pa.Table) -> pa.Array:
    pos = pc.index_in(matches.column("query_id"), value_set=_column(queries, "image_id", pa.string()))
    return _column(queries, "individual_id", pa.string()).take(pos)


# ---------------------------------------------------------------------------------------------
# Proposed new individuals


def group_new(decisions: pa.Table, matches: pa.Table, threshold: float | None) -> pa.Table:
    """Group unlabelled "new" images into proposed individuals.

    Nodes: queries decided new that have no label. Edges: mutual k-NN pairs of such nodes scoring
    at least ``threshold``. Each connected component is one proposed individual, named by a hash
    of its members (stable across runs). Without a threshold every image stands alone.
    """
    new = decisions.filter(pc.and_(decisions.column("is_new"), pc.is_null(decisions.column("individual_id"))))
    nodes = new.column("query_id").combine_chunks()
    n = len(nodes)
    if n == 0:
        return PROPOSED_SCHEMA.empty_table()
    labels = np.arange(n)
    if threshold is not None and len(matches):
        m = matches.filter(pc.greater_equal(matches.column("score"), pa.scalar(threshold, pa.float32())))
        a = np.asarray(pc.index_in(m.column("query_id"), value_set=nodes).fill_null(-1), np.int64)
        b = np.asarray(pc.index_in(m.column("neighbor_id"), value_set=nodes).fill_null(-1), np.int64)
        both = (a >= 0) & (b >= 0) & (a != b)
        a, b = a[both], b[both]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keys, counts = np.unique(lo * n + hi, return_counts=True)
        mutual = keys[counts >= 2]
        if len(mutual):
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            graph = coo_matrix((np.ones(len(mutual)), (mutual // n, mutual % n)), shape=(n, n))
            _, labels = connected_components(graph, directed=False)
    ids = nodes.to_pylist()
    members: dict[int, list[str]] = {}
    for image_id, lab in zip(ids, labels.tolist(), strict=True):
        members.setdefault(lab, []).append(image_id)
    name = {
        lab: "new-" + hashlib.sha1("\x1f".join(sorted(v)).encode()).hexdigest()[:12]
        for lab, v in members.items()
    }
    return pa.table(
        {
            "image_id": nodes,
            "proposed_individual": pa.array([name[lab] for lab in labels.tolist()], pa.string()),
        },
        schema=PROPOSED_SCHEMA,
    )
