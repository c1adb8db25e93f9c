"""The local training cache: the rows training needs, decoded once, shrunk, in an Arrow IPC file.

The archive may sit on S3 and may not fit in RAM. Training therefore first copies the rows it
needs into a local Arrow IPC file (one per split and preprocessing), decoded once and
shrunk to what the model needs, then reads it through a memory map (:mod:`reid.data.dataset`):
pages come from disk on demand and the OS page cache decides what stays in memory. Re-runs (and
resumed runs) reuse the file; concurrent workers on one machine build it once (a file lock), the
others wait and share it.

Training rows keep encoded bytes (cropped to the bbox and downscaled when that saves work, so
random crops still see the whole animal). Validation rows are stored as the exact uint8 square
the embedding job feeds the model (decode, bbox crop, bicubic resize to ``input_size``), so the
numbers a checkpoint is selected on match what ``reid embed`` will compute.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from reid import archive, storage
from reid.errors import ConfigError
from reid.images.imageio import decode

__all__ = ["CACHE_SCHEMA", "CACHE_VERSION", "CacheInfo", "cache_key", "ensure_cache", "square_pixels"]

CACHE_VERSION = 1
_BATCH_ROWS = 256
_KEEP_BYTES_BELOW = 1.5  # keep the original bytes when the short side is within 1.5x the cache side


def _archive_key(archive_uri: str) -> str:
    """Identity of an archive's committed content: part file names and sizes."""
    fs, _ = storage.resolve(archive_uri)
    files = archive.archive_files(archive_uri)
    infos = fs.get_file_info([storage.resolve(f)[1] for f in files])
    return json.dumps([[f, i.size] for f, i in zip(files, infos, strict=True)])


def cache_key(archive_uri: str, image_ids: Iterable[str], mode: str, size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}\x1f{mode}\x1f{size}\x1f{_archive_key(archive_uri)}".encode())
    for iid in sorted(image_ids):
        h.update(iid.encode())
        h.update(b"\x00")
    return h.hexdigest()[:20]


def _prepare_train(row: dict, side: int) -> tuple[bytes | None, str | None]:
    """Encoded bytes for training: the original when already small and uncropped, else a JPEG
    of the bbox crop with its short side at ``side`` (never upscaled)."""
    data, bbox = row["image"], row.get("bbox")
    has_box = bbox is not None and all(bbox.get(k) is not None for k in ("x", "y", "w", "h"))
    dec = decode(data, bbox if has_box else None, target_size=side)
    if not dec.ok:
        return None, dec.reason
    img = dec.image
    short = min(img.size)
    if not has_box and short <= _KEEP_BYTES_BELOW * side and dec.width == img.width:
        return data, None
    if short > side:
        scale = side / short
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
        )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), None


def square_pixels(data: bytes | None, bbox, size: int) -> tuple[np.ndarray | None, str | None]:
    """The model's exact input before normalisation: decode, crop, bicubic resize to size x size."""
    dec = decode(data, bbox, target_size=size)
    if not dec.ok:
        return None, dec.reason
    img = dec.image
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8), None


def _prepare_eval(row: dict, size: int) -> tuple[bytes | None, str | None]:
    arr, reason = square_pixels(row["image"], row.get("bbox"), size)
    return (None, reason) if arr is None else (arr.tobytes(), None)


@dataclass
class CacheInfo:
    path: str
    rows: int
    rejects: list[dict]
    built: bool  # False when an existing cache was reused


CACHE_SCHEMA = pa.schema([("image_id", pa.string()), ("individual_id", pa.string()), ("image", pa.binary())])


def ensure_cache(
    archive_uri: str,
    image_ids: Iterable[str],
    cache_dir: str,
    mode: str,
    size: int,
    threads: int | None = None,
    progress=None,
) -> CacheInfo:
    """Build (or reuse) the local Arrow cache of ``image_ids``; ``mode`` is ``train`` or ``eval``.

    Undecodable rows are left out and returned as rejects (image_id, source, reason).
    """
    if mode not in ("train", "eval"):
        raise ValueError(mode)
    if storage.is_remote(cache_dir):
        raise ConfigError(f"cache_dir {cache_dir}: must be a local folder (it is memory-mapped)")
    wanted = set(image_ids)
    key = cache_key(archive_uri, wanted, mode, size)
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{mode}-{size}-{key}.arrow")
    meta_path = path + ".json"
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait and reuse
        if os.path.exists(path) and os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            return CacheInfo(path, meta["rows"], meta["rejects"], built=False)
        rows, rejects = _build(archive_uri, wanted, path, mode, size, threads, progress)
        tmp = meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {"rows": rows, "rejects": rejects, "archive": archive_uri, "mode": mode, "size": size}, f
            )
        os.replace(tmp, meta_path)
    return CacheInfo(path, rows, rejects, built=True)


def _build(archive_uri, wanted, path, mode, size, threads, progress) -> tuple[int, list[dict]]:
    prepare = _prepare_train if mode == "train" else _prepare_eval
    side = int(round(size * 1.15)) if mode == "train" else size
    tmp = f"{path}.tmp-{os.getpid()}"
    rejects: list[dict] = []
    n = 0
    columns = ["image_id", "individual_id", "image", "bbox", "source"]

    def flush(writer, chunk):
        nonlocal n
        results = list(pool.map(lambda r: prepare(r, side), chunk))
        ok = {"image_id": [], "individual_id": [], "image": []}
        for row, (data, reason) in zip(chunk, results, strict=True):
            if data is None:
                rejects.append({"image_id": row["image_id"], "source": row.get("source"), "reason": reason})
                continue
            ok["image_id"].append(row["image_id"])
            ok["individual_id"].append(row["individual_id"])
            ok["image"].append(data)
        if ok["image_id"]:
            writer.write_batch(pa.RecordBatch.from_pydict(ok, schema=CACHE_SCHEMA))
            n += len(ok["image_id"])
        if progress is not None:
            progress.update(len(chunk))

    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, CACHE_SCHEMA) as writer:
            chunk: list[dict] = []
            for row in archive.iter_rows(archive_uri, columns=columns, batch_size=64):
                if row["image_id"] not in wanted:
                    continue
                chunk.append(row)
                if len(chunk) >= _BATCH_ROWS:
                    flush(writer, chunk)
                    chunk = []
            if chunk:
                flush(writer, chunk)
    os.replace(tmp, path)
    return n, rejects
