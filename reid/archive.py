"""The Parquet image archive: writing part files and reading them back validated.

An archive is a folder (or S3 prefix) of Parquet part files, optionally hive-partitioned by
survey, plus ``_rejects.parquet`` and ``_manifest.json`` (names starting with ``_`` are skipped
by Parquet dataset readers, so ``pyarrow.dataset.dataset(OUT)`` reads exactly the archive rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from reid import storage
from reid.errors import ReidError, SchemaError
from reid.schema import (
    ARCHIVE_SCHEMA,
    MAX_ROW_BYTES,
    OPTIONAL_ARCHIVE_COLUMNS,
    REJECTS_SCHEMA,
    check_unique,
    conform,
    validate_archive,
)

REJECTS = "_rejects.parquet"
ROW_GROUP_BYTES = 32 * 1024 * 1024  # images are big rows: a few tens of MB per row group
FILE_BYTES = 256 * 1024 * 1024  # and a few hundred MB per file at most
ROW_GROUP_ROWS = 256  # and at most this many rows, so a killed embed job loses little


def stable_id(*parts: str) -> str:
    """A stable image id from the parts that identify an image (e.g. survey and source path)."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:20]


def row_too_big(row: dict) -> str | None:
    size = len(row.get("image") or b"")
    if size >= MAX_ROW_BYTES:
        return f"too large: {size} bytes (rows of {MAX_ROW_BYTES} bytes or more are refused)"
    return None


class ArchiveWriter:
    """Buffers archive rows and writes part files of bounded size with deterministic names.

    A part's name is a hash of the image ids it holds, so re-running the same input writes the
    same file names (idempotent), and the writer never writes an ``image_id`` twice: a repeat is
    not written but kept in ``skipped`` (image_id, source) so the caller can count and report it.
    A row without ``photo_id`` gets its ``image_id`` (one annotation per photo).
    """

    def __init__(
        self,
        out: str,
        skip_ids: Iterable[str] = (),
        row_group_bytes: int = ROW_GROUP_BYTES,
        file_bytes: int = FILE_BYTES,
    ):
        self.out = out
        self.row_group_bytes = row_group_bytes
        self.file_bytes = file_bytes
        self.seen = set(skip_ids)
        self._rows: list[dict] = []
        self._bytes = 0
        self.written_rows = 0
        self.files: list[str] = []
        self.skipped: list[dict] = []

    def add(self, row: dict) -> bool:
        """Buffer a row; returns False (writes nothing, records it in ``skipped``) for a known image_id."""
        if row["image_id"] in self.seen:
            self.skipped.append({"image_id": row["image_id"], "source": row.get("source")})
            return False
        self.seen.add(row["image_id"])
        if not row.get("photo_id"):
            row = {**row, "photo_id": row["image_id"]}
        self._rows.append(row)
        self._bytes += len(row["image"])
        if self._bytes >= self.file_bytes:
            self.flush()
        return True

    def flush(self) -> None:
        if not self._rows:
            return
        table = conform(pa.Table.from_pylist(self._rows, schema=ARCHIVE_SCHEMA), ARCHIVE_SCHEMA)
        avg = max(1, self._bytes // len(self._rows))
        name = "part-" + stable_id(*[r["image_id"] for r in self._rows])[:16] + ".parquet"
        uri = storage.join(self.out, name)
        # Row groups are the units embedding commits and resumes by: bounded in bytes and in rows.
        rg_rows = max(1, min(ROW_GROUP_ROWS, self.row_group_bytes // avg))
        storage.write_parquet(table, uri, row_group_size=rg_rows)
        self.files.append(uri)
        self.written_rows += len(self._rows)
        self._rows, self._bytes = [], 0

    def close(self) -> None:
        self.flush()


def archive_files(uri: str) -> list[str]:
    files = storage.list_files(uri, suffix=".parquet")
    if not files:
        if not storage.exists(uri):
            raise ReidError(f"{uri}: archive not found")
        raise ReidError(f"{uri}: no Parquet files in this archive")
    return files


def dataset(uri: str) -> ds.Dataset:
    """A pyarrow dataset over the archive's part files (``_``-prefixed files skipped)."""
    fs, path = storage.resolve(uri)
    files = [storage.resolve(f)[1] for f in archive_files(uri)]
    d = ds.dataset(
        files, filesystem=fs, format="parquet", partitioning="hive" if "=" in "".join(files) else None
    )
    return d


def read_archive(uri: str, columns: list[str] | None = None, check_ids: bool = True) -> pa.Table:
    """Read (a projection of) the archive, validated: schema per file, unique image ids overall.

    Files written before the optional columns existed read too: ``photo_id`` is then the
    ``image_id`` (one annotation per photo) and ``annotation_id`` is null.
    """
    tables = []
    for f in archive_files(uri):
        if columns is None:
            t = storage.read_parquet(f)
            validate_archive(t.schema, f)
        else:
            fs, path = storage.resolve(f)
            present = set(pq.read_schema(path, filesystem=fs).names)
            want = [c for c in _with_id(columns) if c in present or c not in OPTIONAL_ARCHIVE_COLUMNS]
            t = storage.read_parquet(f, columns=want)
            validate_projection(t.schema, columns, f)
        tables.append(_fill_optional(t, columns))
    table = pa.concat_tables(tables, promote_options="permissive")
    if check_ids:
        check_unique(table, "image_id", uri)
    return table


def _with_id(columns: list[str]) -> list[str]:
    return columns if "image_id" in columns else ["image_id", *columns]


def _fill_optional(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """Add the optional columns an older file lacks (all of them, or those in ``columns``)."""
    for name in OPTIONAL_ARCHIVE_COLUMNS:
        if name in table.column_names or (columns is not None and name not in columns):
            continue
        if name == "photo_id":
            table = table.append_column(
                ARCHIVE_SCHEMA.field(name), table.column("image_id").cast(pa.string())
            )
        else:
            table = table.append_column(ARCHIVE_SCHEMA.field(name), pa.nulls(len(table), pa.string()))
    return table


def validate_projection(schema: pa.Schema, columns: list[str], source: str) -> None:
    """Check the archive columns a reader asks for (plus ``image_id``) against a file's schema,
    so a partial read refuses a wrong file as clearly as a full one."""
    sub = pa.schema([ARCHIVE_SCHEMA.field(c) for c in _with_id(columns) if c in ARCHIVE_SCHEMA.names])
    from reid.schema import check_fields  # one checker for whole and projected reads

    check_fields(schema, sub, source, "archive", OPTIONAL_ARCHIVE_COLUMNS)


def existing_ids(uri: str) -> set[str]:
    """Image ids already committed in an archive (empty when it does not exist yet)."""
    if not storage.list_files(uri, suffix=".parquet"):
        return set()
    return set(read_archive(uri, columns=["image_id"]).column("image_id").to_pylist())


def existing_metadata(uri: str, columns: list[str]) -> dict[str, dict]:
    """image_id -> the given metadata columns of the rows already committed (no image bytes read)."""
    if not storage.list_files(uri, suffix=".parquet"):
        return {}
    table = read_archive(uri, columns=columns)
    return {r["image_id"]: r for r in table.select(_with_id(columns)).to_pylist()}


def update_rows(uri: str, changes: dict[str, dict]) -> list[str]:
    """Write a new version of every part holding a changed row: ``changes`` is image_id -> {column: value}.

    Each affected part is rewritten whole under its own name (atomically, same ids and row groups,
    images untouched), so the archive never holds an image_id twice, even if the job is killed.
    Returns the rewritten part files.
    """
    rewritten = []
    for f in archive_files(uri):
        fs, path = storage.resolve(f)
        pf = pq.ParquetFile(fs.open_input_file(path))
        ids = pf.read(columns=["image_id"]).column("image_id").to_pylist()
        hits = [i for i, image_id in enumerate(ids) if image_id in changes]
        if not hits:
            continue
        rg_rows = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else None
        table = _fill_optional(pf.read(), None)
        for name in sorted({c for i in hits for c in changes[ids[i]]}):
            values = table.column(name).to_pylist()
            for i in hits:
                if name in changes[ids[i]]:
                    values[i] = changes[ids[i]][name]
            idx = table.column_names.index(name)
            table = table.set_column(idx, table.field(name), pa.array(values, type=table.field(name).type))
        storage.write_parquet(table, f, row_group_size=rg_rows)
        rewritten.append(f)
    return rewritten


def iter_rows(uri: str, columns: list[str] | None = None, batch_size: int = 64) -> Iterator[dict]:
    """Stream archive rows file by file (bounded memory)."""
    for f in archive_files(uri):
        fs, path = storage.resolve(f)
        pf = pq.ParquetFile(fs.open_input_file(path))
        validate_archive(pf.schema_arrow, f) if columns is None else validate_projection(
            pf.schema_arrow, columns, f
        )
        present = set(pf.schema_arrow.names)
        cols = None if columns is None else [c for c in _with_id(columns) if c in present]
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            t = _fill_optional(pa.Table.from_batches([batch]), columns)
            yield from (t if columns is None else t.select(columns)).to_pylist()


def write_rejects(uri: str, rejects: list[dict], name: str = REJECTS) -> str:
    """Write (merge into) the rejects table ``uri/_rejects.parquet``: image_id, source, reason."""
    target = storage.join(uri, name)
    new = pa.Table.from_pylist(
        [{k: r.get(k) for k in REJECTS_SCHEMA.names} for r in rejects], schema=REJECTS_SCHEMA
    )
    if storage.exists(target):
        old = storage.read_parquet(target)
        keys = set(zip(new.column("source").to_pylist(), new.column("image_id").to_pylist()))
        keep = [
            i
            for i, k in enumerate(zip(old.column("source").to_pylist(), old.column("image_id").to_pylist()))
            if k not in keys
        ]
        new = pa.concat_tables([old.take(pa.array(keep, type=pa.int64())), new])
    storage.write_parquet(new, target)
    return target


def read_rejects(uri: str, name: str = REJECTS) -> pa.Table:
    target = storage.join(uri, name)
    if not storage.exists(target):
        return REJECTS_SCHEMA.empty_table()
    return storage.read_parquet(target)


__all__ = [
    "ArchiveWriter",
    "SchemaError",
    "archive_files",
    "dataset",
    "existing_ids",
    "existing_metadata",
    "iter_rows",
    "read_archive",
    "read_rejects",
    "row_too_big",
    "stable_id",
    "update_rows",
    "validate_projection",
    "write_rejects",
]
