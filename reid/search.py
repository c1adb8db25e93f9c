"""All-vs-all search work units: query blocks over embeddings files, (shard x block) searches, merging.

``reid match`` and ``reid index`` (which calibrates its threshold with the same searches) cut the
queries into :class:`Block` s and search every (shard x block) pair; the functions here are that
work without Ray, so a notebook or a test can run them in a loop. ``jobs.common.knn`` runs them as
Ray tasks: :func:`read_task` loads a block once, :func:`search_task` searches it in one shard (kept
loaded per worker process), and :class:`BlockMerger` keeps each block's running top-k.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reid import index as rindex
from reid import manifest, matching, storage
from reid.errors import ReidError
from reid.index import IndexInfo, RowRange
from reid.schema import validate_embeddings

__all__ = [
    "META_COLUMNS",
    "QUERY_COLUMNS",
    "SHARD_CACHE",
    "Block",
    "BlockMerger",
    "blocks_from_ranges",
    "embeddings_ranges",
    "gallery_table",
    "read_block",
    "read_task",
    "search_task",
    "task_order",
]

QUERY_COLUMNS = ["image_id", "embedding", "model_id", "individual_id", "survey", "captured_at", "camera_id"]
META_COLUMNS = ["image_id", "individual_id", "survey", "captured_at", "camera_id"]
SHARD_CACHE = int(os.environ.get("REID_SHARD_CACHE", "2"))  # shards kept loaded per worker process


@dataclass
class Block:
    """A block of queries: rows of embeddings files, optionally only some of them (``rows``)."""

    id: int
    ranges: list[RowRange]
    rows: list[int] | None = None
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = len(self.rows) if self.rows is not None else sum(r.rows for r in self.ranges)


def embeddings_ranges(uri: str) -> tuple[list[RowRange], int, str | None]:
    """Row ranges of a committed embeddings output, with its dim and model_id (checked)."""
    manifest.require_manifest(uri, job="embed")
    files = storage.list_files(uri, suffix=".parquet")
    if not files:
        raise ReidError(f"{uri}: no embeddings part files; run `reid embed` first")
    ranges, dim, model_ids = [], None, set()
    for f in files:
        fs, path = storage.resolve(f)
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            d = validate_embeddings(pf.schema_arrow, f)
            if dim is not None and d != dim:
                raise ReidError(f"{f}: embeddings of dim {d}, other files of {uri} have dim {dim}")
            dim = d
            rows = pf.metadata.num_rows
            model_ids |= set(pf.read(columns=["model_id"]).column("model_id").unique().to_pylist())
        if rows:
            ranges.append(RowRange(f, 0, rows))
    if len(model_ids) > 1:
        raise ReidError(
            f"{uri}: mixes embeddings of several models ({', '.join(sorted(map(str, model_ids)))})"
        )
    return ranges, int(dim), (model_ids.pop() if model_ids else None)


def blocks_from_ranges(ranges: list[RowRange], size: int) -> list[Block]:
    """Consecutive blocks of at most ``size`` queries over the ranges."""
    return [Block(i, group) for i, group in enumerate(rindex.split_ranges(ranges, size))]


def read_block(block: Block, model_id: str) -> tuple[np.ndarray, pa.Table]:
    """A block's query vectors and metadata; refuses another model's rows by name."""
    tables = [rindex.read_range(r, QUERY_COLUMNS) for r in block.ranges]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in QUERY_COLUMNS})
    if block.rows is not None:
        table = table.take(pa.array(block.rows, pa.int64()))
    rindex.check_model(
        table, model_id, block.ranges[0].uri if block.ranges else "queries",
        "match embeddings of the index's model (or rebuild the index)",
    )  # fmt: skip
    vectors = rindex.vectors_of(table)
    rindex.check_normalised(vectors, block.ranges[0].uri if block.ranges else "queries")
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
    info = rindex.read_info(index_uri, version)
    index, ids = rindex.load_shard(info, s, gpu=gpu)
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
    rindex.set_threads(1)
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
