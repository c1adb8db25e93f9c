"""Input formats of ``reid ingest``: each maps its records onto the same :class:`Candidate` rows.

==================  =====================================================================
folder              ``SRC/<individual>/<photo>`` (walked by :mod:`reid.ingest`)
manifest            CSV / JSON / JSONL, one row per annotation with a ``path``
wildlife-datasets   its ``metadata.csv`` / ``.parquet`` (image_id, identity, path, ...)
coco                COCO JSON (images / annotations / categories)
megadetector        MegaDetector batch output JSON
camtrapdp           a Camtrap DP package folder (or its ``datapackage.json``)
==================  =====================================================================

:func:`detect` picks one by extension and content; ``reid ingest --format`` overrides it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable

from reid import storage
from reid.errors import ReidError
from reid.formats import camtrapdp, coco, manifest, megadetector, wildlife_datasets
from reid.formats.base import Candidate, ReadOptions, read_text

__all__ = ["FORMATS", "Candidate", "ReadOptions", "detect", "read"]

Reader = Callable[[str, ReadOptions], list[Candidate]]
READERS: dict[str, Reader] = {
    "manifest": manifest.read,
    "wildlife-datasets": wildlife_datasets.read,
    "coco": coco.read,
    "megadetector": megadetector.read,
    "camtrapdp": camtrapdp.read,
}
FORMATS = ("folder", *READERS)


def _csv_columns(src: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(read_text(src))), [])
    except csv.Error as e:
        raise ReidError(f"{src}: cannot parse CSV: {e}") from e


def detect(src: str) -> str:
    """The format of ``src``: a folder, a Camtrap DP package, or a metadata file by extension
    and content (a ``.json`` may be COCO, MegaDetector output or a plain manifest)."""
    if storage.is_dir(src):
        return "camtrapdp" if camtrapdp.looks_like(src) else "folder"
    if src.endswith(camtrapdp.DESCRIPTOR):
        return "camtrapdp"
    ext = os.path.splitext(src)[1].lower()
    if ext == ".parquet":
        return "wildlife-datasets"
    if ext == ".csv":
        return "wildlife-datasets" if wildlife_datasets.looks_like(_csv_columns(src)) else "manifest"
    if ext == ".json":
        try:
            data = json.loads(read_text(src))
        except ValueError as e:
            raise ReidError(f"{src}: not valid JSON ({e})") from e
        if coco.looks_like(data):
            return "coco"
        if megadetector.looks_like(data):
            return "megadetector"
        return "manifest"
    if ext == ".jsonl":
        return "manifest"
    raise ReidError(
        f"{src}: not a folder nor a metadata file (.csv, .parquet, .json, .jsonl, datapackage.json); "
        f"give one, or name its format with --format ({', '.join(FORMATS)})"
    )


def read(src: str, fmt: str, options: ReadOptions | None = None) -> list[Candidate]:
    """The candidates of a metadata file in format ``fmt`` (any of ``FORMATS`` but ``folder``)."""
    if fmt not in READERS:
        raise ReidError(f"--format {fmt!r}: unknown; use one of {', '.join(FORMATS)}")
    if fmt != "camtrapdp" and storage.is_dir(src):
        raise ReidError(f"{src}: is a folder, but --format {fmt} reads a file; give the {fmt} file")
    return READERS[fmt](src, options or ReadOptions())
