"""The sharded k-NN of `reid match` and `reid index`'s calibration on Ray: the (shard x query block)
read and search tasks of :mod:`reid.search.allvsall` (Ray-free), scheduled here, merged as blocks complete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cluster.runtime import ray_get, task_env
from reid.errors import ConfigError
from reid.progress import progress

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from reid.embeddings import Block
    from reid.matching import Exclusions
    from reid.search.index_store import IndexInfo

__all__ = ["knn"]


def knn(
    info: IndexInfo,
    blocks: list[Block],
    k: int,
    exclude: Exclusions,
    nprobe: int | None = None,
    workers: int | None = None,
    gpu: bool | None = None,
    stats: dict | None = None,
    desc: str = "match",
    window: int = 16,
) -> Iterator[tuple[Block, pa.Table, np.ndarray, np.ndarray]]:
    """(shard x query block) searches of :mod:`reid.search.allvsall` as Ray tasks (``reid match`` and
    ``reid index``'s calibration); yields (block, query metadata, scores [n,k], global ids [n,k])
    as blocks complete; each block keeps a running top-k merged from its shards' results.
    """
    import ray

    from reid.search import allvsall

    res = ray.cluster_resources()
    n_gpus = int(res.get("GPU", 0)) if gpu is not False else 0
    if gpu and not n_gpus:
        raise ConfigError("--gpu was asked for, but the Ray cluster has no GPU")
    n_workers = workers or (n_gpus or max(1, int(res.get("CPU", 1))))
    task = ray.remote(allvsall.search_task).options(
        num_cpus=1, num_gpus=1 if n_gpus else 0, runtime_env=task_env(), max_retries=2
    )
    reader = ray.remote(allvsall.read_task).options(
        num_cpus=1, num_returns=2, runtime_env=task_env(), max_retries=2
    )
    data: dict[int, object] = {}  # block id -> ref of (vectors, metadata), until the block completes
    read_timings = []
    by_id = {b.id: b for b in blocks}
    merger = allvsall.BlockMerger(len(info.shards), k)
    pending: dict = {}
    todo = iter(allvsall.task_order(len(info.shards), blocks, window))
    timing = dict.fromkeys(["load_s", "search_s", "search_cpu_s", "cpu_s"], 0.0)  # summed over tasks
    driver_cpu = time.process_time()
    bar = progress(None, total=sum(b.n for b in blocks), desc=desc, unit="query")
    try:
        while True:
            while len(pending) < 2 * n_workers:
                nxt = next(todo, None)
                if nxt is None:
                    break
                s, b = nxt
                if b.id not in data:
                    data[b.id], t = reader.remote(b, info.model_id)
                    read_timings.append(t)
                ref = task.remote(
                    info.uri, info.version, s, b.id, data[b.id], k, exclude, nprobe, bool(n_gpus)
                )
                pending[ref] = b.id
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            block_id, meta, d, g, t = ray_get(ready[0])
            for key in timing:
                timing[key] += t[key]
            done = merger.add(block_id, meta, d, g)
            if done is not None:
                data.pop(block_id, None)  # frees the block in the object store
                bar.update(by_id[block_id].n)
                yield by_id[block_id], *done
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref)
    if stats is not None:
        timing["driver_cpu_s"] = time.process_time() - driver_cpu
        reads = ray.get(read_timings)
        timing["read_s"] = sum(r["read_s"] for r in reads)
        timing["cpu_s"] += sum(r["read_cpu_s"] for r in reads)
        stats.update({key: round(v, 3) for key, v in timing.items()})
        stats.update(workers=n_workers, gpus=n_gpus)
