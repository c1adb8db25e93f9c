"""All-vs-all search work units: query blocks over embeddings files, (shard x block) searches, merging.

``reid match`` and ``reid index`` (which calibrates its threshold with the same searches) cut the
queries into :class:`reid.embeddings.Block` s and search every (shard x block) pair; the functions here are that
work without Ray, so a notebook or a test can run them in a loop. ``jobs.common.knn`` runs them as
Ray tasks: :func:`read_task` loads a block once, :func:`search_task` searches it in one shard (kept
loaded per worker process), and :class:`BlockMerger` keeps each block's running top-k.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from reid import matching, storage
from reid.embeddings import Block, check_model, check_normalised, read_range, vectors_of
from reid.search.faiss_index import set_threads
from reid.search.index_store import IndexInfo, load_shard, read_info

__all__ = [
    "META_COLUMNS",
    "QUERY_COLUMNS",
    "SHARD_CACHE",
    "BlockMerger",
    "gallery_table",
    "read_block",
    "read_task",
    "search_task",
    "task_order",
]

QUERY_COLUMNS = ["image_id", "embedding", "model_id", "individual_id", "survey", "captured_at", "camera_id"]
META_COLUMNS = ["image_id", "individual_id", "survey", "captured_at", "camera_id"]
SHARD_CACHE = int(os.environ.get("REID_SHARD_CACHE", "2"))  # shards kept loaded per worker process


def read_block(block: Block, model_id: str) -> tuple[np.ndarray, pa.Table]:
    """A block's query vectors and metadata; refuses another model's rows by name."""
    tables = [read_range(r, QUERY_COLUMNS) for r in block.ranges]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in QUERY_COLUMNS})
    if block.rows is not None:
        table = table.take(pa.array(block.rows, pa.int64()))
    check_model(
        table, model_id, block.ranges[0].uri if block.ranges else "queries",
        "match embeddings of the index's model (or rebuild the index)",
    )  # fmt: skip
    vectors = vectors_of(table)
    check_normalised(vectors, block.ranges[0].uri if block.ranges else "queries")
    return vectors, table.select(META_COLUMNS)


def gallery_table(info: IndexInfo) -> pa.Table:
    """Every indexed image's id, label and survey, row = global id (O(N), not O(N*k))."""
    cols = ["image_id", "individual_id", "survey"]
    tables = [
        storage.read_parquet(info.shard_uri(i, ".ids.parquet"), columns=cols) for i in range(len(info.shards))
    ]
    return pa.concat_tables(tables).combine_chunks()


def task_order(n_shards: int, blocks: list[Block], window: int) -> list[tuple[int, Block]]:
    """(shard, block) pairs: windows of blocks, shard-major inside a window, so a worker keeps
    searching the shard it has loaded while a window's blocks complete together."""
    order = []
    for lo in range(0, len(blocks), window):
        order += [(s, b) for s in range(n_shards) for b in blocks[lo : lo + window]]
    return order


# Per worker process: the last few shards loaded (Ray reuses task workers, so consecutive
# (shard x block) tasks on a worker find their shard here instead of reading it again).
_SHARDS: OrderedDict = OrderedDict()


def _cached_shard(index_uri: str, version: str, s: int, gpu: bool):
    key = (index_uri, version, s, gpu)
    if key in _SHARDS:
        _SHARDS.move_to_end(key)
        return _SHARDS[key], 0.0
    t0 = time.perf_counter()
    info = read_info(index_uri, version)
    index, ids = load_shard(info, s, gpu=gpu)
    _SHARDS[key] = (index, matching.GalleryMeta(ids), info.shards[s].offset, info.model_id)
    while len(_SHARDS) > max(1, SHARD_CACHE):
        _SHARDS.popitem(last=False)
    return _SHARDS[key], time.perf_counter() - t0


def read_task(block: Block, model_id: str) -> tuple[tuple[np.ndarray, pa.Table], dict]:
    """Read a block of queries once (its search tasks share it); returns it and the read timing."""
    t0, c0 = time.perf_counter(), time.process_time()
    data = read_block(block, model_id)
    return data, {"read_s": time.perf_counter() - t0, "read_cpu_s": time.process_time() - c0}


def search_task(
    index_uri: str,
    version: str,
    shard: int,
    block_id: int,
    data: tuple[np.ndarray, pa.Table],
    k: int,
    exclude: matching.Exclusions,
    nprobe: int | None,
    gpu: bool,
) -> tuple[int, pa.Table | None, np.ndarray, np.ndarray, dict]:
    """One (shard x query block) search: (block id, metadata from shard 0 only, scores [n, k],
    global ids [n, k], timing)."""
    c0 = time.process_time()
    set_threads(1)
    (index, gallery, offset, _), load_s = _cached_shard(index_uri, version, shard, gpu)
    vectors, meta = data
    t1, c1 = time.perf_counter(), time.process_time()
    d, i = matching.search_shard(index, vectors, k, meta, gallery, exclude, nprobe)
    timing = {
        "load_s": load_s,
        "search_s": time.perf_counter() - t1,
        "search_cpu_s": time.process_time() - c1,
        "cpu_s": time.process_time() - c0,
    }
    return block_id, meta if shard == 0 else None, d, matching.to_global(i, offset), timing


class BlockMerger:
    """Each block's running top-k over its shards' results (memory O(block*k) per block in flight)."""

    def __init__(self, n_shards: int, k: int):
        self.n_shards, self.k = n_shards, k
        self._best: dict[int, list] = {}  # block id -> [meta, scores, ids, shards done]

    def add(
        self, block_id: int, meta: pa.Table | None, d: np.ndarray, g: np.ndarray
    ) -> tuple[pa.Table, np.ndarray, np.ndarray] | None:
        """Merge one shard's result; returns (metadata, scores, global ids) once every shard is in."""
        acc = self._best.get(block_id)
        if acc is None:
            acc = self._best[block_id] = [meta, d, g, 1]  # metadata comes with shard 0's result
        else:
            acc[1], acc[2] = matching.merge_topk([(acc[1], acc[2]), (d, g)], self.k)
            acc[0] = meta if meta is not None else acc[0]
            acc[3] += 1
        if acc[3] < self.n_shards:
            return None
        meta, d, g, _ = self._best.pop(block_id)
        return meta, d, g
