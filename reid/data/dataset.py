"""The training and validation images as a torch Dataset read lazily from a cache file (memory map)."""

from __future__ import annotations

import os
from bisect import bisect_right

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from reid.errors import ReidError
from reid.images.imageio import decode

__all__ = ["CachedImages"]


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
