"""Archive photos by ``image_id``: the row lookup the review page reads, the archive an index or
embeddings output was computed from (its lineage), and the one thumbnail function (page and report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from PIL import Image

from reid import archive, manifest, storage
from reid.errors import ReidError
from reid.images import imageio

if TYPE_CHECKING:
    from reid.search.index_store import IndexInfo

__all__ = ["ArchiveLookup", "archive_from_lineage", "lineage_archives", "thumbnail_jpeg"]


class ArchiveLookup:
    """image_id -> (file, row group, row) over one or more archives; reads one row group per fetch."""

    def __init__(self, uris: list[str], wanted: set[str] | None = None):
        self.uris = uris
        self.files: list[str] = []
        self.where: dict[str, tuple[int, int, int]] = {}
        self.source: dict[str, str] = {}  # image_id -> the photo's file name (its source's last part)
        for uri in uris:
            for f in archive.archive_files(uri):
                fs, path = storage.resolve(f)
                with fs.open_input_file(path) as fh:
                    pf = pq.ParquetFile(fh)
                    archive.validate_projection(pf.schema_arrow, ["image", "bbox"], f)
                    fi = len(self.files)
                    self.files.append(f)
                    cols = ["image_id"] + (["source"] if "source" in pf.schema_arrow.names else [])
                    for rg in range(pf.metadata.num_row_groups):
                        t = pf.read_row_group(rg, columns=cols)
                        ids = t.column("image_id").to_pylist()
                        sources = t.column("source").to_pylist() if "source" in cols else [None] * len(ids)
                        for row, (image_id, src) in enumerate(zip(ids, sources, strict=True)):
                            if wanted is None or image_id in wanted:
                                self.where.setdefault(image_id, (fi, rg, row))
                                if src:
                                    self.source.setdefault(
                                        image_id, src.replace("\\", "/").rsplit("/", 1)[-1]
                                    )

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.where

    def get(self, image_id: str) -> dict:
        """The archive row's ``image`` bytes and ``bbox``."""
        fi, rg, row = self.where[image_id]
        fs, path = storage.resolve(self.files[fi])
        with fs.open_input_file(path) as fh:
            t = pq.ParquetFile(fh).read_row_group(rg, columns=["image", "bbox"])
        return {"image": t.column("image")[row].as_py(), "bbox": t.column("bbox")[row].as_py()}


def archive_from_lineage(embeddings_manifest: dict | None) -> str | None:
    """The archive an embeddings output was computed from, as its manifest's lineage records it."""
    if not embeddings_manifest:
        return None
    inputs = embeddings_manifest.get("inputs") or []
    for entry in inputs:
        if entry.get("job") == "ingest" or entry.get("job") == "synth":
            return entry.get("uri")
    cfg = embeddings_manifest.get("config") or {}
    if cfg.get("archive"):
        return cfg["archive"]
    return inputs[0].get("uri") if inputs else None


def lineage_archives(info: IndexInfo) -> list[str]:
    """The archives the index's embeddings were computed from (their embed manifests say)."""
    out: list[str] = []
    for src in info.sources:
        uri = archive_from_lineage(manifest.read_manifest(src))
        if uri and uri not in out:
            out.append(uri)
    return out


def thumbnail_jpeg(data: bytes | None, bbox: dict | None, size: int, quality: int = 85) -> bytes:
    """JPEG bytes of an archive photo cropped to its bbox, at most ``size`` pixels a side.

    Raises :class:`ReidError` with the decoder's reason when the photo does not decode.
    """
    dec = imageio.decode(data, bbox, target_size=size)
    if dec.image is None:
        raise ReidError(dec.reason or "does not decode")
    img = dec.image
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return imageio.encode_jpeg(img, quality=quality)
