"""Embeddings outputs (``reid embed``): the one validated reader, vectors, row ranges and blocks.

An embeddings output is a folder (or prefix) of Parquet part files in the contract of
:func:`reid.schema.embeddings_schema` plus ``_manifest.json``. Whole outputs are read by
:func:`read_embeddings` (evaluation, embed's checks); index and match read them in row ranges
(:class:`RowRange`, touching only the row groups they need) cut into query :class:`Block` s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reid import manifest, storage
from reid.errors import ConfigError, ReidError, SchemaError
from reid.schema import check_unique, validate_embeddings

__all__ = [
    "NORM_TOL",
    "Block",
    "RowRange",
    "blocks_from_ranges",
    "check_model",
    "check_normalised",
    "embeddings_ranges",
    "parquet_rows",
    "read_embeddings",
    "read_range",
    "split_ranges",
    "vectors_of",
]

NORM_TOL = 1e-2  # |1 - ||x||| above this means the embeddings were not L2-normalised


def read_embeddings(uri: str, require_committed: bool = True) -> tuple[pa.Table, dict | None]:
    """Read an embeddings output (part files + ``_manifest.json``) validated; returns it and its manifest."""
    m = manifest.require_manifest(uri, job="embed") if require_committed else manifest.read_manifest(uri)
    files = storage.list_files(uri, suffix=".parquet")
    if not files:
        raise ReidError(f"{uri}: no embeddings Parquet files found; run `reid embed` to create them")
    tables = []
    for f in files:
        t = storage.read_parquet(f)
        validate_embeddings(t.schema, f)
        tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive")
    validate_embeddings(table, uri)
    check_unique(table, "image_id", uri)
    models = pc.unique(table.column("model_id")).to_pylist()
    if len(models) > 1:
        raise ReidError(
            f"{uri}: embeddings of {len(models)} different models ({', '.join(models[:3])}); "
            "evaluate one model's embeddings at a time"
        )
    return table, m


def vectors_of(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The ``fixed_size_list<float32>[d]`` column as a float32 array [n, d]."""
    col = table.column(column)
    dim = col.type.list_size
    if col.null_count:
        raise SchemaError(f"column {column!r} has {col.null_count} null embeddings")
    if len(col) == 0:
        return np.zeros((0, dim), np.float32)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def check_model(table: pa.Table, model_id: str, source: str, fix: str) -> None:
    """Refuse rows embedded by another model than ``model_id``, naming the first one and the fix."""
    import pyarrow.compute as pc

    other = table.filter(pc.not_equal(table.column("model_id"), model_id))
    if len(other):
        raise ReidError(
            f"{source}: model_id {other.column('model_id')[0].as_py()!r} differs from the expected "
            f"{model_id!r}; {fix}"
        )


def check_normalised(vectors: np.ndarray, source: str) -> None:
    """Refuse vectors that are not finite unit vectors (inner product would not be cosine)."""
    if len(vectors) == 0:
        return
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOL)
    if bad.any():
        i = int(np.argmax(bad))
        raise ReidError(
            f"{source}: {int(bad.sum())} embeddings are not L2-normalised (row {i} has norm "
            f"{norms[i]:.4g}); re-run `reid embed`, which writes unit vectors"
        )


@dataclass(frozen=True)
class RowRange:
    """Rows ``start:stop`` of one Parquet file of an embeddings folder."""

    uri: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def parquet_rows(uri: str) -> int:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_range(r: RowRange, columns: list[str] | None = None) -> pa.Table:
    """Read rows ``r.start:r.stop`` of a Parquet file, touching only the row groups needed."""
    fs, path = storage.resolve(r.uri)
    try:
        f = fs.open_input_file(path)
    except FileNotFoundError as e:
        raise ReidError(f"{r.uri}: embeddings file not found (moved or deleted since indexing?)") from e
    with f:
        pf = pq.ParquetFile(f)
        if r.stop > pf.metadata.num_rows:
            raise ReidError(
                f"{r.uri}: has {pf.metadata.num_rows} rows, the index expects at least {r.stop}; "
                "the embeddings changed since indexing: rebuild the index"
            )
        groups, first, pos = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if pos + n > r.start and pos < r.stop:
                groups.append(g)
                first = pos if first is None else first
            pos += n
        if not groups:
            return pf.schema_arrow.empty_table().select(columns) if columns else pf.schema_arrow.empty_table()
        table = pf.read_row_groups(groups, columns=columns)
    return table.slice(r.start - first, r.rows)


def split_ranges(ranges: list[RowRange], size: int) -> list[list[RowRange]]:
    """Cut a sequence of row ranges into consecutive groups of at most ``size`` rows each."""
    if size < 1:
        raise ConfigError(f"group size must be >= 1, got {size}")
    groups: list[list[RowRange]] = []
    current: list[RowRange] = []
    room = size
    for r in ranges:
        start = r.start
        while start < r.stop:
            take = min(room, r.stop - start)
            current.append(RowRange(r.uri, start, start + take))
            start += take
            room -= take
            if room == 0:
                groups.append(current)
                current, room = [], size
    if current:
        groups.append(current)
    return groups


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
    return [Block(i, group) for i, group in enumerate(split_ranges(ranges, size))]
