"""What an uploaded photo may be, and the budget uploads share while they decode.

An upload is checked from its header (type, pixel count) before any pixel is decoded, and the
decodes run under a pixel-weighted budget, so a few large photos cannot exhaust the memory.
"""

from __future__ import annotations

import collections
import contextlib
import io
import threading
import time
from collections.abc import Iterator

__all__ = ["UPLOAD_FORMATS", "Busy", "DecodeGate", "UploadError", "check_upload"]

UPLOAD_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "MPO"}


class UploadError(Exception):
    """An upload refused with an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_upload(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Refuse what is not a supported image, or is too large in pixels, before decoding pixels."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(400, "empty upload: choose a photo file")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            fmt, (w, h) = img.format, img.size
    except UnidentifiedImageError:
        raise UploadError(415, "not an image: upload a photo (JPEG, PNG, WebP, TIFF, BMP or GIF)") from None
    except Exception as e:  # noqa: BLE001 - a broken header is the user's file, not our bug
        raise UploadError(415, f"unreadable image ({type(e).__name__}): upload another photo") from None
    if fmt not in UPLOAD_FORMATS:
        raise UploadError(415, f"{fmt} images are not accepted: upload a JPEG, PNG, WebP, TIFF, BMP or GIF")
    if w * h > max_pixels:
        raise UploadError(
            413, f"image too large: {w}x{h} = {w * h:,} pixels, the limit is {max_pixels:,}; downscale it"
        )
    return fmt, w, h


class Busy(Exception):
    """Every decode slot stayed taken for longer than the wait allows (an HTTP 503)."""


class DecodeGate:
    """At most ``slots`` decodes and ``pixels`` pixels in flight at once, first come first served.

    A decoded photo costs about 4 bytes a pixel (a 40-megapixel PNG of 116 KB: 150 MB, 8 s), so
    the weight is the pixel count read from the header; a photo larger than the whole budget
    waits until it can run alone. Who waits longer than ``wait_s`` gets :class:`Busy`.
    """

    def __init__(self, slots: int, pixels: int, wait_s: float):
        self.slots, self.pixels, self.wait_s = slots, pixels, wait_s
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self.in_flight = self.pixels_in_flight = 0
        self.peak = self.peak_pixels = self.waited = self.refused = self.decoded = 0

    def _fits(self, ticket: object, weight: int) -> bool:
        return (
            self._queue[0] is ticket
            and self.in_flight < self.slots
            and self.pixels_in_flight + weight <= self.pixels
        )

    @contextlib.contextmanager
    def hold(self, pixels: int, wait_s: float | None = None) -> Iterator[int]:
        """Hold one slot and ``pixels`` of the budget while the block runs; yields the weight."""
        weight = max(1, min(pixels, self.pixels))
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                if not self._fits(ticket, weight):
                    self.waited += 1
                while not self._fits(ticket, weight):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.refused += 1
                        raise Busy(
                            f"busy: {self.in_flight} photo(s) of {self.pixels_in_flight / 1e6:.1f} megapixels "
                            f"are being decoded (at most {self.slots} at once, {self.pixels / 1e6:.0f} "
                            "megapixels in all); try again in a few seconds"
                        )
                    self._cond.wait(left)
                self.in_flight += 1
                self.pixels_in_flight += weight
                self.peak = max(self.peak, self.in_flight)
                self.peak_pixels = max(self.peak_pixels, self.pixels_in_flight)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        try:
            yield weight
        finally:
            with self._cond:
                self.in_flight -= 1
                self.pixels_in_flight -= weight
                self.decoded += 1
                self._cond.notify_all()

    def stats(self) -> dict:
        """Slots and pixels in flight, peaks, and how many decodes waited, were refused, ran."""
        with self._cond:
            return {
                "slots": self.slots, "pixels": self.pixels, "wait_s": self.wait_s,
                "in_flight": self.in_flight, "pixels_in_flight": self.pixels_in_flight,
                "peak": self.peak, "peak_pixels": self.peak_pixels,
                "waited": self.waited, "refused": self.refused, "decoded": self.decoded,
            }  # fmt: skip
