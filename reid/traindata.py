"""Training data: labels, identity-disjoint splits, and a local Arrow cache read lazily.

The archive may sit on S3 and may not fit in RAM. Training therefore first copies the rows it
needs into a local Arrow IPC file (one per split and preprocessing), decoded once and
shrunk to what the model needs, then reads it through a memory map: pages come from disk on demand
and the OS page cache decides what stays in memory. Re-runs (and resumed runs) reuse the file;
concurrent workers on one machine build it once (a file lock), the others wait and share it.

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
from bisect import bisect_right
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import Dataset

from reid import archive, storage
from reid.errors import ConfigError, ReidError
from reid.imageio import decode

CACHE_VERSION = 1
LABEL_COLUMNS = ["image_id", "individual_id", "viewpoint", "survey", "camera_id", "captured_at"]
_BATCH_ROWS = 256
_KEEP_BYTES_BELOW = 1.5  # keep the original bytes when the short side is within 1.5x the cache side


# ----------------------------------------------------------------------------------------- labels
def read_labels(archive_uri: str) -> pa.Table:
    """The metadata columns of every archive row (no image bytes are read)."""
    return archive.read_archive(archive_uri, columns=LABEL_COLUMNS)


def labeled(table: pa.Table) -> pa.Table:
    """Rows whose individual is known (unknown individuals cannot be trained or validated on)."""
    return table.filter(pc.is_valid(table.column("individual_id")))


def images_per_individual(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table.column("individual_id")).to_pylist()
    return {c["values"]: c["counts"] for c in counts if c["values"] is not None}


def _unit_hash(text: str, seed: int) -> float:
    h = hashlib.sha1(f"{seed}\x1f{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def holdout_individuals(table: pa.Table, fraction: float, seed: int = 0, min_images: int = 2) -> set[str]:
    """A deterministic identity-disjoint hold-out: about ``fraction`` of the individuals with at
    least ``min_images`` images (a singleton cannot be retrieved leave-one-out), chosen by hash."""
    counts = images_per_individual(table)
    eligible = sorted(i for i, n in counts.items() if n >= min_images)
    if fraction <= 0 or not eligible:
        return set()
    n = max(1, int(round(fraction * len(eligible))))
    return set(sorted(eligible, key=lambda i: _unit_hash(i, seed))[:n])


def read_split(uri: str) -> dict[str, str]:
    """``image_id -> train|test|unlabeled`` from a `reid split` table (checked by reid.split)."""
    from reid.split import read_split as read_split_table

    table, _ = read_split_table(uri)
    return dict(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(), strict=True))


@dataclass
class Split:
    """Training and validation rows; training rows carry a class (``keys``, codes = index in ``classes``)."""

    train: pa.Table
    val: pa.Table
    source: str  # "auto:<fraction>" or the split URI
    classes: list[str] = field(default_factory=list)  # training classes, in code order
    keys: list[str] = field(default_factory=list)  # the class of each training row
    dropped_singletons: int = 0  # classes left out for having too few training images

    def codes(self) -> dict[str, int]:
        """image_id -> class code of every training row."""
        index = {c: i for i, c in enumerate(self.classes)}
        return {
            iid: index[k] for iid, k in zip(self.train.column("image_id").to_pylist(), self.keys, strict=True)
        }


def class_keys(table: pa.Table, by_viewpoint: bool) -> list[str]:
    """The training class of each row: the individual, or individual + viewpoint when
    ``by_viewpoint`` (left and right flanks of one animal carry different patterns, so a pair of
    opposite flanks teaches the network nothing it can see). Rows without a viewpoint keep the
    individual alone."""
    inds = table.column("individual_id").to_pylist()
    if not by_viewpoint:
        return inds
    views = table.column("viewpoint").to_pylist()
    return [f"{i}|{v}" if v else i for i, v in zip(inds, views, strict=True)]


def make_split(
    table: pa.Table,
    split_uri: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_train_images: int = 1,
    by_viewpoint: bool = False,
) -> Split:
    """Split labelled rows into train/val, identity-disjoint (from a `reid split` output or by hash).

    ``min_train_images``: training classes with fewer images are dropped from training (pair
    losses need 2) and counted in ``dropped_singletons``. Validation always matches individuals.
    """
    table = labeled(table)
    if split_uri:
        # Train on the split's train rows; validate on its test rows of individuals unseen in train
        # (an identity split holds only those; open/closed splits also hold known individuals). A
        # closed split has none: training then runs without validation and keeps its last epoch;
        # score it with `reid evaluate --protocol split` (test photos against the train photos).
        assignment = read_split(split_uri)
        names = np.array([assignment.get(i, "") for i in table.column("image_id").to_pylist()])
        if not (names != "").any():
            raise ConfigError(f"split {split_uri}: names none of this archive's images; split this archive")
        train = table.filter(pa.array(names == "train"))
        test = table.filter(pa.array(names == "test"))
        seen = pa.array(sorted(set(train.column("individual_id").to_pylist())), pa.string())
        val = test.filter(pc.invert(pc.is_in(test.column("individual_id"), seen)))
        source = split_uri
    else:
        held = holdout_individuals(table, val_fraction, seed)
        mask = pc.is_in(table.column("individual_id"), pa.array(sorted(held), pa.string()))
        train, val, source = table.filter(pc.invert(mask)), table.filter(mask), f"auto:{val_fraction}"
    keys = class_keys(train, by_viewpoint)
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    classes = sorted(k for k, n in counts.items() if n >= min_train_images)
    dropped = len(counts) - len(classes)
    if dropped:
        keep = set(classes)
        mask = [k in keep for k in keys]
        train = train.filter(pa.array(mask))
        keys = [k for k in keys if k in keep]
    return Split(train=train, val=val, source=source, classes=classes, keys=keys, dropped_singletons=dropped)


# ------------------------------------------------------------------------------------------ cache
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


class CachedImages(Dataset):
    """Items ``(image tensor, label code)`` read lazily from an Arrow cache file via a memory map.

    ``labels``: image_id -> class code (default: the individual, coded in sorted order).
    ``transform``: PIL -> tensor for ``train`` caches; ``eval`` caches need ``mean``/``std``.
    Picklable: each process (DataLoader worker) opens its own memory map on first use.
    """

    def __init__(
        self,
        path: str,
        labels: dict[str, int] | None = None,
        transform=None,
        mean=None,
        std=None,
        size: int | None = None,
    ):
        self.path, self.transform, self.size = path, transform, size
        self.mean = torch.tensor(mean or (0.0, 0.0, 0.0)).view(3, 1, 1)
        self.std = torch.tensor(std or (1.0, 1.0, 1.0)).view(3, 1, 1)
        with pa.memory_map(path) as mm:
            reader = pa.ipc.open_file(mm)
            ids, inds, offsets = [], [], [0]
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                ids += batch.column("image_id").to_pylist()
                inds += batch.column("individual_id").to_pylist()
                offsets.append(offsets[-1] + batch.num_rows)
        self.image_ids, self.individuals, self._offsets = ids, inds, offsets
        if labels is None:  # validation: individuals, coded in sorted order
            codes = {v: i for i, v in enumerate(sorted(set(inds)))}
            labels = {iid: codes[ind] for iid, ind in zip(ids, inds, strict=True)}
        try:
            self.labels = np.array([labels[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise ReidError(f"{path}: image {e.args[0]!r} has no label code") from e
        self._reader = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_reader"], d["_pid"] = None, None
        return d

    def _raw(self, i: int):
        if self._reader is None or self._pid != os.getpid():
            self._reader = pa.ipc.open_file(pa.memory_map(self.path))
            self._pid = os.getpid()
        b = bisect_right(self._offsets, i) - 1
        return self._reader.get_batch(b).column("image")[i - self._offsets[b]].as_buffer()

    def __getitem__(self, i: int):
        buf = self._raw(int(i))
        if self.transform is None:  # eval cache: the exact uint8 square the embed job computes
            arr = np.frombuffer(buf, dtype=np.uint8).reshape(self.size, self.size, 3)
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
            x = (x - self.mean) / self.std
        else:
            dec = decode(buf.to_pybytes())
            if not dec.ok:  # cannot happen for a cache built here; name it if it does
                raise ReidError(f"{self.path}: row {i} ({self.image_ids[i]}) no longer decodes: {dec.reason}")
            x = self.transform(dec.image)
        return x, int(self.labels[i])
