"""The re-rank stage of ``reid match --keypoints FEATURES``, as Ray tasks (not a job of its own).

After the global k-NN has committed ``matches/part-<block>``, each block's queries are cut into
sub-blocks of ``rerank_block`` queries; one Ray task per sub-block loads the features of its
queries and their shortlists once and scores every pair (:func:`reid.local.rerank.rerank_part`),
committing ``local/part-<block>-<sub>.parquet`` (a re-run skips committed ones). The driver then
fits the calibration on the labelled pairs of every shortlist (bursts left out; at most
``MAX_CALIBRATION_PAIRS``, sampled evenly over blocks), writes ``calibration.json`` and each block's fused ranking
``reranked/part-<block>.parquet``, and calibrates the new-individual threshold on the fused score.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.runtime import ray_get
from reid import matching, storage
from reid.embeddings import Block
from reid.errors import ReidError
from reid.local import calibration, rerank
from reid.local.match import MatcherSettings
from reid.progress import progress
from reid.search.index_store import IndexInfo

__all__ = ["MAX_CALIBRATION_PAIRS", "run_rerank"]

MAX_CALIBRATION_PAIRS = 2_000_000
CALIBRATION = "calibration.json"


def _part(out: str, kind: str, block_id: int, sub: int | None = None) -> str:
    name = f"part-{block_id:05d}" + ("" if sub is None else f"-{sub:04d}")
    return storage.join(out, kind, f"{name}.parquet")


def _gallery_meta(info: IndexInfo) -> pa.Table:
    cols = ["image_id", "individual_id", "camera_id", "captured_at"]
    return pa.concat_tables(
        [
            storage.read_parquet(info.shard_uri(i, ".ids.parquet"), columns=cols)
            for i in range(len(info.shards))
        ]
    )


def _score_blocks(out: str, blocks: list[Block], features: list[str], settings: MatcherSettings, shortlist: int,
                  rerank_block: int, workers: int | None) -> dict:  # fmt: skip
    import ray

    from cluster.runtime import task_env

    task = ray.remote(rerank.rerank_part).options(num_cpus=1, runtime_env=task_env(), max_retries=2)
    units = []
    for b in blocks:
        subs = -(-b.n // rerank_block)
        units += [(b, s) for s in range(subs) if not storage.exists(_part(out, "local", b.id, s))]
    n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    pending: dict = {}
    queue = iter(units)
    totals = {"pairs": 0, "load_s": 0.0, "match_s": 0.0, "match_cpu_s": 0.0}
    bar = progress(None, total=len(units), desc="rerank", unit="block")
    try:
        while True:
            while len(pending) < 2 * n_workers and (u := next(queue, None)) is not None:
                b, s = u
                ref = task.remote(
                    _part(out, "matches", b.id), features, settings, _part(out, "local", b.id, s), shortlist,
                    (s * rerank_block, (s + 1) * rerank_block),
                )  # fmt: skip
                pending[ref] = u
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            res = ray_get(ready[0])
            for key in totals:
                totals[key] += res[key]
            bar.update(1)
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref)
    totals["rerank_tasks"] = len(units)
    totals["rerank_workers"] = n_workers
    return totals


def _block_table(out: str, block: Block, shortlist: int) -> pa.Table:
    """A block's shortlist rows with their inliers."""
    m = storage.read_parquet(_part(out, "matches", block.id))
    m = m.filter(pc.less_equal(m.column("rank"), shortlist))
    local = pa.concat_tables(
        [storage.read_parquet(f) for f in storage.list_files(storage.join(out, "local"), suffix=".parquet")
         if f.rsplit("/", 1)[-1].startswith(f"part-{block.id:05d}-")]
    )  # fmt: skip
    return m.join(local, ["query_id", "neighbor_id"], join_type="left outer").combine_chunks()


def run_rerank(
    out: str,
    blocks: list[Block],
    info: IndexInfo,
    features: list[str],
    settings: MatcherSettings,
    shortlist: int,
    k: int,
    method: str = "isotonic",
    rerank_block: int = 64,
    workers: int | None = None,
    threshold: float | None = None,
    target_false_new: float = 0.05,
    seed: int = 0,
) -> tuple[dict, float | None]:
    """Score, calibrate, fuse; returns (summary figures, the new-individual threshold on the fused score)."""
    t0 = time.perf_counter()
    stats = _score_blocks(out, blocks, features, settings, shortlist, rerank_block, workers)
    stats["rerank_score_s"] = round(time.perf_counter() - t0, 3)
    if stats["pairs"]:
        stats["ms_per_pair_cpu"] = round(1000 * stats["match_cpu_s"] / stats["pairs"], 3)
    gallery = _gallery_meta(info)
    cos, inl, same = [], [], []
    rng = np.random.default_rng(seed)
    per_block = max(1, MAX_CALIBRATION_PAIRS // max(1, len(blocks)))  # driver memory O(cap), not O(N*B)
    for b in blocks:
        t = _block_table(out, b, shortlist)
        queries = storage.read_parquet(_part(out, "queries", b.id))
        c, i, s = rerank.calibration_pairs(t, queries, gallery)
        if len(s) > per_block:
            pick = rng.choice(len(s), per_block, replace=False)
            c, i, s = c[pick], i[pick], s[pick]
        cos.append(c), inl.append(i), same.append(s)
    cos, inl, same = np.concatenate(cos), np.concatenate(inl), np.concatenate(same)
    if len(inl) and not (inl >= 0).any():
        raise ReidError(
            f"{', '.join(features)}: none of the shortlisted images has local features; run `reid keypoints` "
            "on the archives these embeddings were made from"
        )
    cal = calibration.fit(cos, inl, same, method)
    storage.write_json(storage.join(out, CALIBRATION), cal.to_dict())
    labelled_q, fused_m = [], []
    for b in blocks:
        fused = rerank.fuse_part(_block_table(out, b, shortlist), cal, k)
        storage.write_parquet(fused, _part(out, "reranked", b.id))
        if threshold is None:
            queries = storage.read_parquet(_part(out, "queries", b.id), columns=["image_id", "individual_id"])
            labelled_q.append(queries.filter(pc.is_valid(queries.column("individual_id"))))
            fused_m.append(
                fused.select(["query_id", "neighbor_id", "rank", "score", "neighbor_individual_id"])
            )
    stats.update(calibration_pairs=cal.pairs, calibration_same_pairs=cal.same_pairs)
    if threshold is None:
        qs = pa.concat_tables(labelled_q)
        m = pa.concat_tables(fused_m)
        # queries whose individual has another image among its candidates: those a threshold can miss
        m = m.filter(pc.is_in(m.column("query_id"), value_set=qs.column("image_id").combine_chunks()))
        if len(qs) and len(m):
            calib = matching.calibrate(qs, m, target_false_new)
            threshold = calib["threshold"]
            stats["fused_threshold_calibration"] = calib
    stats["rerank_s"] = round(time.perf_counter() - t0, 3)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}, threshold
