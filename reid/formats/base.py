"""What every input format maps onto: :class:`Candidate` (one annotation to ingest) and the
small parsers the formats share (paths, times, boxes, viewpoints).

A record a format cannot use (a missing photo reference, a bad box, a low-confidence detection,
a filtered category) is still a candidate, with ``problem`` saying why: ingest turns it into a
reject with that reason, so nothing a source lists is dropped uncounted.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import posixpath
import re
from dataclasses import dataclass, field

from reid import storage
from reid.errors import ReidError
from reid.images import imageio

__all__ = [
    "Candidate",
    "ReadOptions",
    "first",
    "join_ref",
    "none",
    "normalized_box_problem",
    "normpath",
    "parent",
    "parse_bbox",
    "parse_time",
    "read_text",
    "viewpoint",
]


@dataclass
class Candidate:
    """One annotation to ingest (a photo, or a box in it): where it is and what the source says.

    ``problem``: a reason found while scanning (bad bbox, duplicate link, filtered record) that
    makes it a reject. ``bbox_normalized``: ``bbox`` is in fractions of the upright image
    (MegaDetector, Camtrap DP); ingest turns it into pixels once the image size is known.
    """

    uri: str
    relpath: str
    individual_id: str | None = None
    survey: str | None = None
    species: str | None = None
    captured_at: dt.datetime | None = None
    camera_id: str | None = None
    viewpoint: str | None = None
    bbox: dict | None = None
    annotation_id: str | None = None
    photo_ref: str | None = None  # the user's own id of the photo (COCO image id, Camtrap DP mediaID)
    problem: str | None = None
    bbox_normalized: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReadOptions:
    """Settings of the format readers (``reid ingest`` options).

    ``image_root``: the folder the format's file names are relative to (default: the folder of
    the metadata file). ``min_confidence`` and ``categories``: which MegaDetector detections are
    animals to identify (the rest are rejects saying why).
    """

    image_root: str | None = None
    min_confidence: float = 0.2
    categories: tuple[str, ...] = ("animal",)


def none(v: object) -> str | None:
    """A cell as text, or None when it is empty (also a float NaN, as pandas writes missing cells)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    text = str(v).strip()
    return text or None


def first(r: dict, *keys: str) -> object:
    """The first of ``keys`` present with a non-empty value (so "unknown" is not skipped over)."""
    for k in keys:
        if none(r.get(k)) is not None:
            return r[k]
    return None


def read_text(src: str) -> str:
    """A metadata file as text (UTF-8, with or without Excel's byte-order mark)."""
    data = storage.read_bytes(src)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ReidError(
            f"{src}: not UTF-8 text (byte {e.start}); save the manifest as UTF-8 (Excel: CSV UTF-8)"
        ) from e


def normpath(path: str) -> str:
    """One spelling per file: ``./img/b.jpg`` and ``img/../img/b.jpg`` are ``img/b.jpg``."""
    if storage.is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://" + posixpath.normpath(rest)
    if path.startswith("file://"):
        path = path[len("file://") :]
    return posixpath.normpath(path.replace(os.sep, "/"))


def join_ref(base: str, ref: str) -> tuple[str, str]:
    """``(uri, relpath)`` of a file named ``ref`` in a metadata file under folder ``base``.

    An absolute path or a URI stands for itself; a relative name is joined onto ``base``.
    """
    path = normpath(ref)
    if storage.is_remote(path) or os.path.isabs(path):
        return path, path
    if storage.is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.normpath(posixpath.join(rest, path)), path
    return os.path.normpath(os.path.join(base, path)), path


def parent(src: str) -> str:
    """The folder holding a metadata file (a URI keeps its scheme)."""
    return src.rsplit("/", 1)[0] if "/" in src else "."


def parse_time(v: object) -> dt.datetime | None:
    """An ISO 8601 date/time (or EXIF's ``2023:06:01 12:34:56``) as UTC-aware; naive = UTC."""
    v = none(v)
    if v is None:
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        try:
            t = dt.datetime.strptime(v, "%Y:%m:%d %H:%M:%S")
        except ValueError as e:
            raise ValueError(f"captured_at {v!r} is not an ISO date/time") from e
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def parse_bbox(r: dict) -> tuple[dict | None, str | None]:
    """The bbox of a record and, when its values are unusable (nan, inf, w/h <= 0), why.

    Read from ``bbox`` (``x,y,w,h`` text, ``[x, y, w, h]``, a list or a dict) or ``bbox_x`` ..
    ``bbox_h``. A malformed bbox (not four numbers) raises ValueError: the file itself is wrong.
    """
    raw = r.get("bbox")
    if isinstance(raw, dict):
        vals = [raw.get(k) for k in ("x", "y", "w", "h")]
    elif isinstance(raw, (list, tuple)):
        vals = list(raw)
    elif none(raw):
        vals = re.split(r"[,\s;]+", str(raw).strip("[]() "))
    elif all(none(r.get(f"bbox_{k}")) for k in ("x", "y", "w", "h")):
        vals = [r[f"bbox_{k}"] for k in ("x", "y", "w", "h")]
    else:
        return None, None
    if len(vals) != 4:
        raise ValueError(f"bbox must be x,y,w,h in pixels, got {raw!r}")
    try:
        x, y, w, h = (float(v) for v in vals)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bbox must be x,y,w,h in pixels, got {raw!r}") from e
    box = {"x": x, "y": y, "w": w, "h": h}
    return box, imageio.bbox_problem(box)


def normalized_box_problem(box: dict) -> str | None:
    """Why a box in fractions of the image (x, y, w, h in 0..1) cannot be used, or None."""
    bad = imageio.bbox_problem(box)
    if bad:
        return bad
    if box["x"] < 0 or box["y"] < 0 or box["x"] + box["w"] > 1.0001 or box["y"] + box["h"] > 1.0001:
        return f"bad bbox: {box} is not within the image (normalised x, y, w, h must lie in 0..1)"
    return None


def viewpoint(v: object) -> str | None:
    """A viewpoint label as stored: lower case, no spaces (``Left`` -> ``left``, ``front left`` -> ``frontleft``)."""
    text = none(v)
    if text is None or text.lower() in ("unknown", "nan", "none", "-"):
        return None
    return re.sub(r"[\s_\-]+", "", text.lower())
