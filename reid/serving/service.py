"""What each request of the review page does, without the web framework: the routes in
:mod:`jobs.serve` only read the request and turn :class:`HttpError` into a response.

One :class:`ReviewService` holds the matcher (model + index shards), the decode budget, the last
queries answered (a decision is recorded with what the page was shown) and, with a match output,
the review desk (the queue and its decisions).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from reid import review
from reid.errors import ReidError
from reid.serving.desk import ReviewDesk, query_decision
from reid.serving.matcher import Matcher, RecentQueries
from reid.serving.uploads import Busy, DecodeGate, UploadError, check_upload

__all__ = ["NO_QUEUE", "Decision", "HttpError", "QueueAnswer", "ReviewService", "Undo"]

NO_QUEUE = "no review queue: restart reid serve with --matches MATCHES (a `reid match` output)"


# request bodies


class Decision(BaseModel):
    query_id: str = Field(max_length=300)
    decision: Literal["same", "different", "new"]
    individual_id: str | None = Field(None, max_length=64)
    reviewer: str | None = Field(None, max_length=64)
    note: str | None = Field(None, max_length=500)


class QueueAnswer(BaseModel):
    item_id: str = Field(max_length=600)
    answer: Literal["same", "different", "new", "merge", "split"]
    reviewer: str | None = Field(None, max_length=64)
    note: str | None = Field(None, max_length=500)
    name: str | None = Field(None, max_length=64)
    candidate: str | None = Field(None, max_length=64)


class Undo(BaseModel):
    review_id: str = Field(max_length=100)
    reviewer: str | None = Field(None, max_length=64)


class HttpError(Exception):
    """A request refused with an HTTP status, a message for the page and optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class ReviewService:
    """The page's requests as methods (``cfg``: a ``jobs.serve.ServeConfig``)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.gate = DecodeGate(cfg.decode_slots, cfg.decode_pixels, cfg.decode_wait_s)
        self.matcher = Matcher(cfg)
        self.recent = RecentQueries()
        self.reviews_dir = cfg.reviews or cfg.index
        self.desk: ReviewDesk | None = None
        if cfg.matches:
            m = self.matcher
            self.desk = ReviewDesk(
                cfg.matches,
                self.reviews_dir,
                cfg.id_format,
                m.spec.model_id,
                m.info.version,
                m.archive.source,
            )
            meta = self.desk.queue.meta  # the index's id table also knows each photo's viewpoint
            ids, views = m.gallery.column("image_id").to_pylist(), m.gallery.column("viewpoint").to_pylist()
            for image_id, view in zip(ids, views, strict=True):
                if image_id in meta and meta[image_id].get("viewpoint") is None:
                    meta[image_id]["viewpoint"] = view

    def info(self) -> dict:
        """What is served: index, model, threshold, limits, decode stats, examples, the queue's source."""
        cfg = self.cfg
        examples = [{**e, "thumb": f"/thumb/{e['image_id']}"} for e in self.matcher.examples]
        limits = {
            k: getattr(cfg, k) for k in ("max_upload_bytes", "max_pixels", "decode_slots", "decode_pixels")
        }
        queue = {"matches": cfg.matches, "reviews": self.reviews_dir, "id_format": cfg.id_format}
        return {
            **self.matcher.describe(),
            **limits,
            "decodes": self.gate.stats(),
            "examples": examples,
            **queue,
        }

    # -- queries

    def check_length(self, declared: str | None, size: int | None = None) -> None:
        """Refuse an upload over the byte limit, from its Content-Length or the bytes read so far."""
        limit = self.cfg.max_upload_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"upload too large: {int(declared):,} bytes, the limit is {limit:,}")
        if size is not None and size > limit:
            raise HttpError(413, f"upload too large: over the {limit:,}-byte limit")

    def _answer(self, query_id: str, sha: str, image_id: str | None, result: dict, **extra) -> dict:
        self.recent.put(query_id, {"sha256": sha, "image_id": image_id, **result})
        for c in result["candidates"]:
            c["thumb"] = f"/thumb/{c['image_id']}"
            for im in c["images"]:
                im["thumb"] = f"/thumb/{im['image_id']}"
        return {"query_id": query_id, "sha256": sha, "image_id": image_id, **result, **extra}

    def query_upload(self, data: bytes, t0: float) -> dict:
        """An uploaded photo's candidates: header checks, decode under the budget, embed, search."""
        from reid.images.preprocess import decode_for_model

        try:
            fmt, w, h = check_upload(data, self.cfg.max_pixels)
        except UploadError as e:
            raise HttpError(e.status, e.message) from None
        t1 = time.perf_counter()
        try:
            with self.gate.hold(w * h):
                pixels, reason = decode_for_model(data, None, self.matcher.spec.input_size)
        except Busy as e:
            raise HttpError(503, str(e), {"Retry-After": "5"}) from None
        if pixels is None:
            raise HttpError(422, f"could not decode this {fmt} image ({reason}): upload another photo")
        t2 = time.perf_counter()
        result = self.matcher.query(pixels)
        sha = hashlib.sha256(data).hexdigest()
        ms = {"read": t1 - t0, "decode": t2 - t1, "total": time.perf_counter() - t0}
        result["timing_ms"].update({k: round(1e3 * v, 2) for k, v in ms.items()})
        return self._answer(sha, sha, None, result, width=w, height=h, format=fmt)

    def _require(self, image_id: str) -> None:
        if image_id not in self.matcher.row_of or image_id not in self.matcher.archive:
            raise HttpError(404, "no such archive image")

    def query_example(self, image_id: str) -> dict:
        """Query with an archive photo; the photo itself and its burst are excluded."""
        t0 = time.perf_counter()
        self._require(image_id)
        pixels, reason = self.matcher.archive_pixels(image_id)
        if pixels is None:
            raise HttpError(422, f"archive image {image_id} does not decode: {reason}")
        meta = self.matcher.query_meta(image_id)
        result = self.matcher.query(pixels, meta)
        result["timing_ms"]["total"] = round(1e3 * (time.perf_counter() - t0), 2)
        sha = hashlib.sha256(self.matcher.archive.get(image_id)["image"]).hexdigest()
        truth = meta.column("individual_id")[0].as_py()
        return self._answer(f"image:{image_id}", sha, image_id, result, archive_label=truth)

    def picture(self, image_id: str, size: int | None = None) -> bytes:
        """JPEG of an indexed archive photo (thumbnail size by default)."""
        self._require(image_id)
        try:
            return self.matcher.thumbnail(image_id, size)
        except ReidError as e:
            raise HttpError(422, str(e)) from None

    def keypoint_matches(self, image_a: str, image_b: str, height: int = 320) -> tuple[bytes, int]:
        """Two archive photos' verified SIFT matches drawn side by side (PNG) and their inlier count:
        why the review view's pair is, or is not, called the same animal."""
        from reid.local.pairs import draw_matches, matched_keypoints

        self._require(image_a)
        self._require(image_b)
        a, b = self.matcher.archive.get(image_a), self.matcher.archive.get(image_b)
        try:
            found = matched_keypoints(a["image"], b["image"], a["bbox"], b["bbox"])
            png = draw_matches(a["image"], b["image"], found, a["bbox"], b["bbox"], height)
        except ReidError as e:
            raise HttpError(422, str(e)) from None
        return png, int(found["inliers"])

    # -- decisions

    def decision(self, query_id: str, decision: str, individual_id: str | None, reviewer: str | None,
                 note: str | None) -> dict:  # fmt: skip
        """A decision about a photo the page queried recently."""
        shown = self.recent.get(query_id)
        if shown is None:
            raise HttpError(404, "unknown or expired query: run the query again, then decide")
        m = self.matcher
        rec = query_decision(self.reviews_dir, shown, decision, individual_id, reviewer, note,
                             m.spec.model_id, m.info.version)  # fmt: skip
        return {"stored": rec}

    def reviews(self, limit: int = 20) -> dict:
        """The latest decisions, newest first."""
        t = review.read_reviews(self.reviews_dir)
        rows = t.slice(max(0, len(t) - max(0, min(limit, 500)))).to_pylist()
        for r in rows:
            r["decided_at"] = r["decided_at"].isoformat()
        return {"count": len(t), "reviews": rows[::-1]}

    def _desk(self) -> ReviewDesk:
        if self.desk is None:
            raise HttpError(404, NO_QUEUE)
        return self.desk

    def queue(self, offset: int = 0, limit: int = 20, include_decided: bool = False, **filters: str) -> dict:
        """A page of the review queue, filtered by the query photo's survey, camera and dates."""
        return self._desk().page(
            **filters, offset=max(0, offset), limit=min(max(0, limit), 200), include_decided=include_decided
        )

    def review_item(self, item_id: str, answer: str, reviewer: str | None, note: str | None,
                    name: str | None, candidate: str | None = None) -> dict:  # fmt: skip
        return {"stored": self._desk().decide(item_id, answer, reviewer, note, name, candidate)}

    def individuals(self) -> dict:
        """The individuals a reviewer may name (the review view's search list)."""
        return {"individuals": self._desk().individuals()}

    def undo(self, review_id: str, reviewer: str | None) -> dict:
        return {"stored": self._desk().undo(review_id, reviewer)}
