"""One photo -> its candidate individuals: the index's model and every shard, loaded once in process.

Candidates are individuals, not photos: the nearest neighbours are grouped by ``individual_id``
(unlabelled photos are skipped: there is nothing to confirm them as), searching deeper until ``k``
individuals are found or :data:`MAX_DEPTH` neighbours were seen (never a full scan).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Protocol

import numpy as np
import pyarrow as pa

from reid import matching
from reid.errors import ReidError
from reid.search import index_store
from reid.serving.lookup import ArchiveLookup, lineage_archives, thumbnail_jpeg

__all__ = ["MAX_DEPTH", "Matcher", "MatcherSettings", "RecentQueries"]

MAX_DEPTH = 4096  # neighbours searched at most to find k distinct individuals


class MatcherSettings(Protocol):
    """What the matcher reads from its configuration (``jobs.serve.ServeConfig`` holds the defaults)."""

    index: str
    model: str
    archive: list[str] | None
    k: int
    threshold: float | None
    examples: int
    thumb_size: int
    seed: int


class Matcher:
    """Embeds one photo with the index's model and finds its candidate individuals (no Ray)."""

    def __init__(self, cfg: MatcherSettings):
        import torch

        from reid.model.package import load_package

        self.cfg = cfg
        self.info = index_store.open_index(cfg.index)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.spec = load_package(cfg.model, map_location=self.device)
        index_store.check_compatible(self.info, self.spec.model_id, self.spec.embedding_dim, cfg.model)
        self.threshold = cfg.threshold if cfg.threshold is not None else self.info.threshold
        self.shards: list[tuple[object, matching.GalleryMeta, int]] = []
        tables = []
        for i, s in enumerate(self.info.shards):
            index, ids = index_store.load_shard(self.info, i)
            self.shards.append((index, matching.GalleryMeta(ids), s.offset))
            tables.append(ids)
        self.gallery = pa.concat_tables(tables).combine_chunks()
        self.row_of = {v: i for i, v in enumerate(self.gallery.column("image_id").to_pylist())}
        labels = self.gallery.column("individual_id")
        self.n_images: dict[str, int] = {
            d["values"]: d["counts"] for d in labels.drop_null().value_counts().to_pylist()
        }
        uris = cfg.archive or lineage_archives(self.info)
        if not uris:
            raise ReidError(
                f"{cfg.index}: cannot tell which archive the index was built from (no embed manifest "
                "names one); pass --archive ARCHIVE for the thumbnails"
            )
        self.archive = ArchiveLookup(uris, wanted=set(self.row_of))
        self.examples = self._pick_examples(cfg.examples, cfg.seed)
        self._lock = threading.Lock()
        self._thumbs_lock = threading.Lock()
        self._thumbs: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()

    # -- queries

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [S, S, 3] (from reid.images.preprocess.decode_for_model) -> L2-normalised [1, d]."""
        import torch

        from reid.images.preprocess import normalize

        with torch.inference_mode():
            x = normalize(pixels[None].copy(), self.spec.mean, self.spec.std, self.device)
            return self.model(x).float().cpu().numpy()

    def search(self, vec: np.ndarray, query_meta: pa.Table | None, k: int) -> list[dict]:
        """The best neighbour of each of the ``k`` most similar labelled individuals (one query)."""
        exclude = (
            matching.Exclusions(self_match=True, same_camera_day=True)
            if query_meta is not None
            else matching.Exclusions(self_match=False)
        )
        ntotal = self.info.ntotal
        depth = min(ntotal, max(4 * k, 32))
        limit = min(ntotal, MAX_DEPTH)
        while True:
            parts = []
            for index, meta, offset in self.shards:
                d, i = matching.search_shard(index, vec, depth, query_meta, meta, exclude, self.info.nprobe)
                parts.append((d, matching.to_global(i, offset)))
            scores, gids = matching.merge_topk(parts, depth)
            found = self._group(scores[0], gids[0], k)
            if len(found) >= k or depth >= limit:
                return found  # at most MAX_DEPTH neighbours: fewer candidates, never a full scan
            depth = min(limit, depth * 4)

    def _group(self, scores: np.ndarray, gids: np.ndarray, k: int) -> list[dict]:
        ok = gids >= 0
        take = pa.array(gids[ok])
        labels = self.gallery.column("individual_id").take(take).to_pylist()
        ids = self.gallery.column("image_id").take(take).to_pylist()
        out: dict[str, dict] = {}
        for s, ind, image_id in zip(scores[ok].tolist(), labels, ids, strict=True):
            if ind is None:  # unlabelled photos are not candidates (nothing to confirm them as)
                continue
            if ind not in out:
                if len(out) == k:
                    continue
                out[ind] = {"individual_id": ind, "score": s, "image_id": image_id, "images": []}
            if len(out[ind]["images"]) < 3:
                out[ind]["images"].append({"image_id": image_id, "score": s})
        for rank, c in enumerate(out.values(), start=1):
            c["rank"] = rank
            c["n_images"] = self.n_images.get(c["individual_id"], 0)
        return list(out.values())

    def query(self, pixels: np.ndarray, query_meta: pa.Table | None = None, k: int | None = None) -> dict:
        """Candidates, best score, threshold, the "new individual" verdict and timings for one photo."""
        t0 = time.perf_counter()
        with self._lock:
            vec = self.embed(pixels)
            t1 = time.perf_counter()
            cands = self.search(vec, query_meta, k or self.cfg.k)
        t2 = time.perf_counter()
        best = cands[0]["score"] if cands else None
        is_new = best is None or (self.threshold is not None and best < self.threshold)
        return {
            "candidates": cands,
            "best_score": best,
            "threshold": self.threshold,
            "is_new": bool(is_new),
            "timing_ms": {"embed": round(1e3 * (t1 - t0), 2), "search": round(1e3 * (t2 - t1), 2)},
        }

    # -- archive photos

    def archive_pixels(self, image_id: str) -> tuple[np.ndarray | None, str | None]:
        """An archive photo decoded for the model, or None and the reason."""
        from reid.images.preprocess import decode_for_model

        row = self.archive.get(image_id)
        return decode_for_model(row["image"], row["bbox"], self.spec.input_size)

    def query_meta(self, image_id: str) -> pa.Table:
        """The index's row for an archive photo (its own exclusions: self, same camera and day)."""
        return self.gallery.slice(self.row_of[image_id], 1)

    def thumbnail(self, image_id: str, size: int | None = None) -> bytes:
        """JPEG of an archive photo cropped to its bbox, at most ``size`` pixels a side (default the
        thumbnail size), from a bounded cache; :class:`ReidError` naming it when it does not decode."""
        size = size or self.cfg.thumb_size
        with self._thumbs_lock:
            data = self._thumbs.get((image_id, size))
        if data is not None:
            return data
        row = self.archive.get(image_id)
        try:
            data = thumbnail_jpeg(row["image"], row["bbox"], size, quality=85)
        except ReidError as e:
            raise ReidError(f"{image_id}: {e}") from None
        with self._thumbs_lock:
            self._thumbs[(image_id, size)] = data
            while len(self._thumbs) > 4096:
                self._thumbs.popitem(last=False)
        return data

    def _pick_examples(self, n: int, seed: int) -> list[dict]:
        """``n`` archive photos of distinct individuals that have other photos in the index."""
        if n == 0:
            return []
        labels = self.gallery.column("individual_id").to_pylist()
        ids = self.gallery.column("image_id").to_pylist()
        rng = np.random.default_rng(seed)
        by_ind: dict[str, list[str]] = collections.defaultdict(list)
        for image_id, ind in zip(ids, labels, strict=True):
            if ind is not None and self.n_images.get(ind, 0) >= 2 and image_id in self.archive:
                by_ind[ind].append(image_id)
        names = sorted(by_ind)
        picked = [names[i] for i in rng.permutation(len(names))[:n]]
        return [{"image_id": by_ind[name][rng.integers(len(by_ind[name]))], "individual_id": name}
                for name in sorted(picked)]  # fmt: skip

    def describe(self) -> dict:
        """What is being served: index, model, threshold and where it came from, device."""
        return {
            "index": self.cfg.index,
            "version": self.info.version,
            "images": self.info.ntotal,
            "individuals": len(self.n_images),
            "factory": self.info.factory,
            "model_id": self.spec.model_id,
            "backbone": self.spec.backbone,
            "threshold": self.threshold,
            "threshold_source": "override" if self.cfg.threshold is not None else "calibrated with the index",
            "calibration": self.info.calibration,
            "k": self.cfg.k,
            "device": self.device,
        }


class RecentQueries:
    """The last queries answered, so a decision is recorded with what the page was shown."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._items: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, query_id: str, item: dict) -> None:
        with self._lock:
            self._items[query_id] = item
            self._items.move_to_end(query_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, query_id: str) -> dict | None:
        with self._lock:
            return self._items.get(query_id)
