"""Embeddings outputs (``reid embed``): the one validated reader.

An embeddings output is a folder (or prefix) of Parquet part files in the contract of
:func:`reid.schema.embeddings_schema` plus ``_manifest.json``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from reid import manifest, storage
from reid.errors import ReidError
from reid.schema import check_unique, validate_embeddings

__all__ = ["read_embeddings"]


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