"""wildlife-datasets metadata tables (``metadata.csv`` / ``.parquet``), as its dataset classes write.

Columns: ``image_id`` (the user's id, kept as ``annotation_id``), ``identity`` (``unknown`` =
unlabelled), ``path`` (relative to the dataset root: the table's folder or ``--image-root``),
optional ``bbox`` ([x, y, w, h] pixels), ``date``, ``orientation`` / ``position`` / ``viewpoint``,
``species``, ``camera``/``camera_id``, ``survey``. A row that cannot be used (no path, a bad box,
a date that is not a date) is a reject with the reason; the rest of the table still ingests.
"""

from __future__ import annotations

import os

from reid import storage
from reid.formats import manifest
from reid.formats.base import (
    Candidate,
    ReadOptions,
    first,
    join_ref,
    none,
    parent,
    parse_bbox,
    parse_time,
    viewpoint,
)
from reid.schema import individual_or_none

__all__ = ["COLUMNS", "looks_like", "read", "rows"]

COLUMNS = ("image_id", "identity", "path")  # the columns every wildlife-datasets table has


def rows(src: str) -> list[dict]:
    """The table's rows (CSV through the manifest reader, Parquet through pyarrow)."""
    if os.path.splitext(src)[1].lower() == ".parquet":
        return storage.read_parquet(src).to_pylist()
    return manifest.records(src)


def looks_like(columns: list[str]) -> bool:
    """A table with wildlife-datasets' own columns."""
    names = {str(c).strip().lower() for c in columns}
    return all(c in names for c in COLUMNS)


def _row(r: dict, i: int, src: str, base: str) -> Candidate:
    r = {str(k).strip().lower(): v for k, v in r.items() if k is not None}
    user_id = none(r.get("image_id"))
    raw_path = none(r.get("path"))
    if raw_path is None:
        ref = f"{src}#row{i}"
        return Candidate(uri=ref, relpath=ref, annotation_id=user_id, problem=f"row {i}: no path")
    uri, rel = join_ref(base, raw_path)
    c = Candidate(
        uri=uri,
        relpath=rel,
        individual_id=individual_or_none(first(r, "identity", "individual_id")),
        species=none(r.get("species")),
        camera_id=none(first(r, "camera_id", "camera")),
        survey=none(r.get("survey")),
        viewpoint=viewpoint(first(r, "viewpoint", "orientation", "position")),
        annotation_id=user_id,
    )
    try:
        c.bbox, c.problem = parse_bbox(r) if none(r.get("bbox")) not in (None, "nan", "[]") else (None, None)
    except ValueError as e:
        c.problem = f"bad bbox: {e}"
    try:
        c.captured_at = parse_time(first(r, "date", "captured_at", "timestamp"))
    except ValueError as e:
        c.problem = c.problem or f"bad date: {e}"
    return c


def read(src: str, options: ReadOptions) -> list[Candidate]:
    """One candidate per table row; unusable rows carry their reason in ``problem``."""
    base = options.image_root or parent(src)
    return [_row(r, i, src, base) for i, r in enumerate(rows(src), start=1)]
