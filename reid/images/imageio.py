"""Robust image decoding, in one place for ingest, training, embedding and serving.

Handles EXIF orientation, bbox crops (in pixels of the upright image), every PIL mode (CMYK,
16-bit, palette, RGBA, grayscale) to RGB, JPEG draft-mode decoding when the target is much
smaller than the photo, and a pixel limit against decompression bombs. Failures come back as a
reason string; nothing raises through a job.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from reid.images import jpegroi

MAX_PIXELS = 100_000_000  # larger images are refused as possible decompression bombs
_EXIF_ORIENTATION = 0x0112
_EXIF_DATETIME_ORIGINAL = 0x9003
_EXIF_DATETIME = 0x0132
_EXIF_IFD = 0x8769

# We enforce our own limit (with a clear reason); PIL's own check would raise or only warn.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Decoded:
    """The result of decoding: an RGB image, or a reason it could not be decoded."""

    image: Image.Image | None
    reason: str | None = None
    width: int = 0  # of the upright original, before crop/draft
    height: int = 0

    @property
    def ok(self) -> bool:
        return self.image is not None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        if img.mode == "RGB":
            return img
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (127, 127, 127))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF must not lose the image
        return 1


def decode(
    data: bytes | None,
    bbox: dict | tuple | None = None,
    target_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
    roi: bool = True,
) -> Decoded:
    """Decode encoded bytes to an upright RGB image, cropped to ``bbox`` (x, y, w, h) if given.

    ``target_size``: the smaller side the caller will resize to; JPEGs are then decoded at the
    smallest DCT scale that still keeps at least that many pixels in the crop and, with ``roi``
    (and reid/_jpegroi built), only the crop's window of the file is decoded. Pass
    ``roi=False`` to check every byte of the file (ingest): damage below the crop is then found.
    """
    if not data:
        return Decoded(None, "empty: zero bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Decoded(None, "corrupt: not a recognised image format")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reject, not a crash
        return Decoded(None, f"corrupt: {type(e).__name__}: {e}")
    w0, h0 = img.size
    if w0 <= 0 or h0 <= 0:
        return Decoded(None, "corrupt: zero-sized image")
    if w0 * h0 > max_pixels:
        return Decoded(
            None, f"decompression bomb: {w0}x{h0} = {w0 * h0} pixels exceeds the {max_pixels} limit"
        )
    orient = _orientation(img)
    swap = orient in (5, 6, 7, 8)
    uw, uh = (h0, w0) if swap else (w0, h0)
    box = _bbox_tuple(bbox)
    if box is not None:
        bad = bbox_problem(box)
        if bad:
            return Decoded(None, bad, uw, uh)
        x, y, bw, bh = box
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(uw), x + bw), min(float(uh), y + bh)
        if x1 - x0 < 1 or y1 - y0 < 1:
            return Decoded(None, f"bad bbox: {box} lies outside the {uw}x{uh} image", uw, uh)
        box = (x0, y0, x1, y1)
    denom = 1
    if target_size and img.format == "JPEG":
        crop_w = (box[2] - box[0]) if box else uw
        crop_h = (box[3] - box[1]) if box else uh
        denom = _draft_denom(crop_w, crop_h, target_size)
        if roi and img.mode in ("RGB", "L") and jpegroi.available():
            window = _decode_window(data, box or (0.0, 0.0, float(uw), float(uh)), orient, (w0, h0), denom)
            if window is not None:
                return Decoded(window.image, None, uw, uh)
    try:
        if denom > 1:
            img.draft("RGB", jpegroi.scaled_size(w0, h0, denom))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as e:
        return Decoded(None, f"truncated: {e}", uw, uh)
    except Exception as e:  # noqa: BLE001
        return Decoded(None, f"corrupt: {type(e).__name__}: {e}", uw, uh)
    try:
        img = _to_rgb(img)
        if orient != 1:
            img.info.pop("exif", None)
            img = _transpose(img, orient)
    except Exception as e:  # noqa: BLE001
        return Decoded(None, f"unsupported mode {img.mode}: {type(e).__name__}: {e}", uw, uh)
    if box is not None:
        sx, sy = img.width / uw, img.height / uh
        crop = (
            int(round(box[0] * sx)),
            int(round(box[1] * sy)),
            max(int(round(box[2] * sx)), int(round(box[0] * sx)) + 1),
            max(int(round(box[3] * sy)), int(round(box[1] * sy)) + 1),
        )
        img = img.crop(crop)
    return Decoded(img, None, uw, uh)


def _draft_denom(crop_w: float, crop_h: float, target_size: int) -> int:
    """The JPEG DCT scale (1, 2, 4, 8) that keeps at least ``target_size`` pixels in the crop."""
    scale = target_size / max(1.0, min(crop_w, crop_h))
    return next((d for d in (8, 4, 2) if d * scale <= 1.0), 1)  # as Pillow's draft picks


def bbox_problem(bbox: dict | tuple | None) -> str | None:
    """Why a bbox (x, y, w, h) cannot be used (non-finite, width/height not positive), or None."""
    box = _bbox_tuple(bbox)
    if box is None:
        return None
    if not all(math.isfinite(v) for v in box):
        return f"bad bbox: {box} has a non-finite value (nan/inf); give x, y, w, h in pixels"
    if box[2] <= 0 or box[3] <= 0:
        return f"bad bbox: {box} has a width or height <= 0; give x, y, w, h in pixels"
    return None


def decode_pixels(data: bytes, bbox: dict | tuple | None = None, target_size: int | None = None) -> int:
    """Pixels :func:`decode` will hold for ``data``, read from the header only (0 if unreadable).

    Lets a caller bound the memory of concurrent decodes (a 100-megapixel PNG takes ~1 GB
    decoded) before any pixel is decoded. JPEGs count at the DCT scale decode will use.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - decode() gives the reason; nothing to budget
        return 0
    w, h = img.size
    if target_size and img.format == "JPEG":
        box = _bbox_tuple(bbox)
        if box is None or bbox_problem(box):
            crop_w, crop_h = float(w), float(h)
        else:
            crop_w, crop_h = min(box[2], float(max(w, h))), min(box[3], float(max(w, h)))
        d = _draft_denom(crop_w, crop_h, target_size)
        w, h = -(-w // d), -(-h // d)
    return max(0, w * h)


def jpeg_damage(data: bytes) -> str | None:
    """A reject reason when libjpeg warns about a JPEG's data (corrupt, premature end), else None.

    Pillow decodes such files without a word (the missing or garbled blocks become invented
    pixels), so ingest asks libjpeg itself through reid.images.jpegroi; without that library built,
    Pillow's verdict stands. Non-JPEG data is not checked here.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    status, msg = jpegroi.check(data)
    if status == jpegroi.CORRUPT:
        return f"corrupt: {msg}"
    if status == jpegroi.TRUNCATED:
        return f"truncated: {msg}"
    if status == jpegroi.ERROR:
        return f"corrupt: {msg}"
    return None


def _stored_box(box, orient: int, w0: int, h0: int) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in the upright image -> the same pixels in the stored image."""
    to_stored = {
        1: lambda u, v: (u, v),
        2: lambda u, v: (w0 - u, v),
        3: lambda u, v: (w0 - u, h0 - v),
        4: lambda u, v: (u, h0 - v),
        5: lambda u, v: (v, u),
        6: lambda u, v: (v, h0 - u),
        7: lambda u, v: (w0 - v, h0 - u),
        8: lambda u, v: (w0 - v, u),
    }.get(orient, lambda u, v: (u, v))
    (sa, ta), (sb, tb) = to_stored(box[0], box[1]), to_stored(box[2], box[3])
    return min(sa, sb), min(ta, tb), max(sa, sb), max(ta, tb)


def _decode_window(data: bytes, box, orient: int, size: tuple[int, int], denom: int) -> Decoded | None:
    """The crop through reid.images.jpegroi as an upright RGB image, or None to decode with Pillow."""
    w0, h0 = size
    ow, oh = jpegroi.scaled_size(w0, h0, denom)
    sx0, sy0, sx1, sy1 = _stored_box(box, orient, w0, h0)
    fx, fy = ow / w0, oh / h0
    x0, y0 = min(int(round(sx0 * fx)), ow - 1), min(int(round(sy0 * fy)), oh - 1)
    x1 = min(max(int(round(sx1 * fx)), x0 + 1), ow)
    y1 = min(max(int(round(sy1 * fy)), y0 + 1), oh)
    pixels, status, _ = jpegroi.decode_window(data, denom, (x0, y0, x1 - x0, y1 - y0), fast=denom > 1)
    if status != jpegroi.OK:
        # CMYK, or damage inside the window: Pillow decodes the whole file and gives the verdict,
        # so the fast path never rejects a photo that Pillow would accept (nor words it otherwise).
        return None
    img = Image.fromarray(pixels, "RGB")
    return Decoded(_transpose(img, orient) if orient != 1 else img)


_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _transpose(img: Image.Image, orient: int) -> Image.Image:
    for op in _TRANSPOSE.get(orient, []):
        img = img.transpose(op)
    return img


def _bbox_tuple(bbox) -> tuple[float, float, float, float] | None:
    if bbox is None:
        return None
    if isinstance(bbox, dict):
        if any(bbox.get(k) is None for k in ("x", "y", "w", "h")):
            return None
        return float(bbox["x"]), float(bbox["y"]), float(bbox["w"]), float(bbox["h"])
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def capture_time(data: bytes) -> dt.datetime | None:
    """EXIF DateTimeOriginal (or DateTime) as a UTC-naive-assumed timestamp, when present."""
    try:
        exif = Image.open(io.BytesIO(data)).getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)
        if not raw:
            return None
        return dt.datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").replace(
            tzinfo=dt.timezone.utc
        )
    except Exception:  # noqa: BLE001 - missing or malformed EXIF is simply "unknown"
        return None


def exif_upright(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation to an already-open image (kept for callers that hold a PIL image)."""
    return ImageOps.exif_transpose(img)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
