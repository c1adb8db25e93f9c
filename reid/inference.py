"""Bulk inference in units: an archive row group is a unit, planned with a stable key, decoded,
embedded by a model loaded once, and committed as one Parquet part (its rejects first).

The callables here are what `reid embed`'s Ray Data operators run (``DecodeUnits`` in decode
actors, ``Embedder``/``DecodeEmbedder`` in model actors); nothing here imports Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reid import archive, storage
from reid.schema import (
    CARRIED_COLUMNS,
    OPTIONAL_CARRIED_COLUMNS,
    REJECTS_SCHEMA,
    conform,
    embeddings_schema,
)

if TYPE_CHECKING:
    from reid.model.spec import ModelSpec

__all__ = [
    "REJECTS_DIR",
    "DecodeEmbedder",
    "DecodeUnits",
    "Embedder",
    "check_region_decoder",
    "commit_unit",
    "decode_units",
    "gather_units",
    "plan_units",
    "read_row_group",
    "unit_uri",
]

REJECTS_DIR = "_rejects"  # one Parquet file of rejects per unit, before the unit's part


def plan_units(archive_uri: str) -> list[dict]:
    """One unit per (file, row group), with a deterministic key; validates every file's schema."""
    units = []
    for f in archive.archive_files(archive_uri):
        fs, path = storage.resolve(f)
        md = pq.ParquetFile(fs.open_input_file(path))
        archive.validate_projection(md.schema_arrow, ["image", "bbox", *CARRIED_COLUMNS], f)
        rel = f[len(archive_uri.rstrip("/")) :].lstrip("/")
        for rg in range(md.metadata.num_row_groups):
            units.append(
                {
                    "file": f,
                    "row_group": rg,
                    "rows": md.metadata.row_group(rg).num_rows,
                    "unit": archive.stable_id(rel, str(rg))[:16],
                }
            )
    return units


def unit_uri(out: str, unit: str) -> str:
    return storage.join(out, f"part-{unit}.parquet")


def read_row_group(file: str, row_group: int, columns: list[str], optional: bool = False) -> pa.Table:
    """One row group; with ``optional``, also the optional carried columns (``photo_id``: the
    image_id in archives written before it existed)."""
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        if not optional:
            return pf.read_row_group(row_group, columns=columns)
        present = set(pf.schema_arrow.names)
        extra = [c for c in OPTIONAL_CARRIED_COLUMNS if c in present and c not in columns]
        table = pf.read_row_group(row_group, columns=[*columns, *extra])
    if "photo_id" not in table.column_names:
        table = table.append_column("photo_id", table.column("image_id"))
    return table


def decode_units(batch: dict, size: int) -> dict:
    """A batch of unit descriptors -> decoded uint8 pixels of their images (rejects: blank + reason)."""
    from reid.images.preprocess import decode_for_model

    ids, units, pixels, reasons = [], [], [], []
    blank = np.zeros((size, size, 3), np.uint8)
    for file, rg, unit in zip(batch["file"], batch["row_group"], batch["unit"]):
        t = read_row_group(str(file), int(rg), ["image_id", "image", "bbox"])
        for image_id, data, bbox in zip(
            t.column("image_id").to_pylist(), t.column("image").to_pylist(), t.column("bbox").to_pylist()
        ):
            arr, reason = decode_for_model(data, bbox, size)
            ids.append(image_id)
            units.append(unit)
            pixels.append(blank if arr is None else arr)
            reasons.append(reason or "")
    return {
        "image_id": np.array(ids, dtype=object),
        "unit": np.array(units, dtype=object),
        "pixels": np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8),
        "reason": np.array(reasons, dtype=object),
    }


def check_region_decoder() -> None:
    """Say so when JPEGs will be decoded whole: in each actor's log (Ray keeps actors' output in
    its session logs), and once in the driver for its own machine, which a local Ray's actors share."""
    from reid.images import jpegroi

    if not jpegroi.available():
        import logging

        logging.getLogger(__name__).warning(
            "reid/_jpegroi is not built on this node: JPEGs are decoded whole by Pillow (slower); "
            "install the package with libjpeg headers and a C compiler present (pip install .)"
        )


class DecodeUnits:
    """Ray Data UDF (CPU actors feeding GPU actors): unit descriptors -> decoded pixels."""

    def __init__(self, size: int) -> None:
        self.size = size
        check_region_decoder()

    def __call__(self, batch: dict) -> dict:
        return decode_units(batch, self.size)


class Embedder:
    """Ray Data actor: loads the model once, embeds decoded batches (rejects pass through)."""

    def __init__(self, model: str, batch_size: int, threads: int | None) -> None:
        import torch

        from reid.allocator import keep_freed_memory
        from reid.model.package import load_package

        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            keep_freed_memory()  # no mmap/munmap of activations per batch (benchmarks/allocator.py)
        self.model, self.spec = load_package(model)
        self.model = self.model.to(self.device).eval()
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import torch

        from reid.images.preprocess import normalize

        ok = batch["reason"] == ""
        n, d = len(ok), self.spec.embedding_dim
        emb = np.zeros((n, d), np.float32)
        idx = np.flatnonzero(ok)
        with torch.inference_mode(), torch.autocast("cuda", enabled=self.device == "cuda"):
            for s in range(0, len(idx), self.batch_size):
                sel = idx[s : s + self.batch_size]
                x = normalize(batch["pixels"][sel], self.spec.mean, self.spec.std, self.device)
                emb[sel] = self.model(x).float().cpu().numpy()
        return {
            "image_id": batch["image_id"],
            "unit": batch["unit"],
            "embedding": emb,
            "reason": batch["reason"],
        }


class DecodeEmbedder(Embedder):
    """Ray Data actor (CPU-only layout): decodes its units' images, then embeds them."""

    def __init__(self, model: str, batch_size: int, threads: int | None) -> None:
        super().__init__(model, batch_size, threads)
        check_region_decoder()

    def __call__(self, batch: dict) -> dict:
        return super().__call__(decode_units(batch, self.spec.input_size))


# --------------------------------------------------------------------------------------------
# Committing units


def commit_unit(
    out: str, spec: ModelSpec, unit: dict, rows: dict[str, tuple[np.ndarray, str]]
) -> tuple[int, int]:
    """Write one unit: its rejects (if any), then its embeddings part (the commit). Returns counts."""
    meta = read_row_group(
        unit["file"], unit["row_group"], ["image_id", "source", *CARRIED_COLUMNS], optional=True
    )
    good, bad = [], []
    for i, image_id in enumerate(meta.column("image_id").to_pylist()):
        emb, reason = rows[image_id]
        (bad if reason else good).append((i, image_id, emb, reason))
    if bad:
        rej = pa.Table.from_pylist(
            [{"image_id": b[1], "source": meta.column("source")[b[0]].as_py(), "reason": b[3]} for b in bad],
            schema=REJECTS_SCHEMA,
        )
        storage.write_parquet(rej, storage.join(out, REJECTS_DIR, f"{unit['unit']}.parquet"))
    take = pa.array([g[0] for g in good], type=pa.int64())
    dim = spec.embedding_dim
    flat = np.concatenate([g[2] for g in good]).astype(np.float32) if good else np.zeros(0, np.float32)
    cols = {
        "image_id": pa.array([g[1] for g in good], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
        "model_id": pa.array([spec.model_id] * len(good), pa.string()),
    }
    for c in (*CARRIED_COLUMNS, *OPTIONAL_CARRIED_COLUMNS):
        cols[c] = meta.column(c).take(take)
    table = conform(pa.table(cols), embeddings_schema(dim))
    storage.write_parquet(table, unit_uri(out, unit["unit"]))
    return len(good), len(bad)


def gather_units(out: str, units: list[dict]) -> tuple[int, int]:
    """Once every unit is committed: the rows of all parts, and every unit's rejects gathered into
    ``OUT/_rejects.parquet`` (an empty table when none). Returns (embeddings, rejects)."""
    n_rows = 0
    for u in units:
        fs, path = storage.resolve(unit_uri(out, u["unit"]))
        with fs.open_input_file(path) as f:
            n_rows += pq.ParquetFile(f).metadata.num_rows
    rej_files = storage.list_files(storage.join(out, REJECTS_DIR), suffix=".parquet")
    rejects = (
        pa.concat_tables([storage.read_parquet(f) for f in rej_files])
        if rej_files
        else REJECTS_SCHEMA.empty_table()
    )
    storage.write_parquet(rejects, storage.join(out, archive.REJECTS))
    return n_rows, rejects.num_rows
