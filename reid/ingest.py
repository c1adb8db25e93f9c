"""Turning photo folders or CSV/JSON manifests into archive rows (or rejects with a reason).

Folder layout: ``SRC/<individual>/<photo>``, at any depth (``SRC/train/<individual>/...`` works;
the individual is the photo's parent folder). Photos directly in SRC, or under a folder whose
name means unlabelled (``reid.schema.UNLABELLED_NAMES``: unknown, unidentified, ...), have no
individual. A ``survey=2023`` folder anywhere in the path sets the survey. Folders are walked
without looping through directory links, and a file reached twice through links counts once.

Metadata files (a plain CSV/JSON manifest, a wildlife-datasets table, COCO, MegaDetector output,
a Camtrap DP package) are read by :mod:`reid.formats`, detected by extension and content or named
with ``--format``; each gives one candidate per annotation (an animal in a photo), and records it
cannot use are candidates with a ``problem`` that :func:`load` turns into rejects.

Ids: ``photo_id`` = hash(survey, normalised path); ``image_id`` (one per annotation) = the
photo_id when the whole photo is used, hash(survey, path, bbox) for a box, or hash(survey,
annotation_id) when the manifest gives the user's own annotation id (kept as a column).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator

from PIL import Image

from reid import formats, storage
from reid.archive import row_too_big, stable_id
from reid.errors import ReidError
from reid.formats import FORMATS, ReadOptions
from reid.formats.base import Candidate
from reid.images import imageio
from reid.schema import individual_or_none

__all__ = [
    "COMPARED",
    "DECODE_PIXEL_BUDGET",
    "FORMATS",
    "Candidate",
    "PixelBudget",
    "ReadOptions",
    "absolute_uri",
    "differences",
    "duplicate_reason",
    "image_id_for",
    "load",
    "photo_id_for",
    "scan",
    "triage",
]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
# Pixels decoded at once by all ingest threads together (~3 bytes each in RGB, more while
# converting): a photo larger than this still decodes, but alone.
DECODE_PIXEL_BUDGET = 64_000_000
_VIEWPOINT = re.compile(r"(?:^|[_\-\s.])(left|right|front|back|top)(?:$|[_\-\s.])", re.I)


class PixelBudget:
    """A semaphore weighted by pixels: concurrent decodes together hold at most ``capacity`` pixels.

    A request larger than the capacity waits until nothing else is decoding, then runs alone.
    """

    def __init__(self, capacity: int = DECODE_PIXEL_BUDGET):
        self.capacity = max(1, capacity)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        n = min(max(0, pixels), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.capacity)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def absolute_uri(uri: str) -> str:
    """A local path made absolute and normalised (``file://`` dropped); other URIs unchanged."""
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def scan(
    src: str,
    species: str | None = None,
    survey: str | None = None,
    fmt: str | None = None,
    options: ReadOptions | None = None,
) -> list[Candidate]:
    """List the annotations of a folder or metadata file (no decoding yet); sources are absolute.

    ``fmt``: one of :data:`reid.formats.FORMATS` (default: detected from ``src``).
    """
    src = absolute_uri(src)
    if not storage.exists(src):
        raise ReidError(f"{src}: not found; give a folder of photos or a metadata file (CSV, JSON, COCO...)")
    fmt = fmt or formats.detect(src)
    if fmt == "folder":
        if not storage.is_dir(src):
            raise ReidError(f"{src}: --format folder needs a folder of photos")
        cands = _scan_folder(src)
    else:
        options = options or ReadOptions()
        if options.image_root:
            options = ReadOptions(
                absolute_uri(options.image_root), options.min_confidence, options.categories
            )
        cands = formats.read(src, fmt, options)
    for c in cands:
        c.species = c.species or species
        c.survey = c.survey or survey
    if not cands:
        raise ReidError(f"{src}: no files found")
    return cands


def _walk_local(root: str) -> list[tuple[str, str | None]]:
    """Files under a local folder as (path, None) or (path, path of the file it duplicates).

    Directory links are followed only to folders outside ``root`` not yet visited (a link back
    up, e.g. ``loopdir/up -> ..``, is not walked again); a file reached by several paths (a file
    link) is kept once, at its real path when that path is in the tree. Names starting with
    ``_`` or ``.`` are skipped, as storage.list_files does.
    """
    root_real = os.path.realpath(root)
    visited: set[str] = set()
    found: list[tuple[str, str]] = []  # (path, real path)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(("_", ".")):
                continue
            full = os.path.join(dirpath, d)
            target = os.path.realpath(full)
            inside = target == root_real or target.startswith(root_real + os.sep)
            if os.path.islink(full) and (inside or target in visited):
                continue  # the tree walks that folder itself (or it is a loop)
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not f.startswith(("_", ".")):
                full = os.path.join(dirpath, f)
                found.append((full, os.path.realpath(full)))
    first: dict[str, str] = {}
    for path, real in found:  # prefer the file's own path over a link to it
        if real not in first or (path == real and first[real] != real):
            first[real] = path
    return sorted((p, None if first[r] == p else first[r]) for p, r in found)


def _scan_folder(src: str) -> list[Candidate]:
    out = []
    if storage.is_remote(src):
        files: list[tuple[str, str | None]] = [(u, None) for u in storage.list_files(src)]
    else:
        files = _walk_local(src)
    for uri, same_as in files:
        rel = uri[len(src.rstrip("/")) :].lstrip("/")
        parts = rel.split("/")
        folders = parts[:-1]
        survey = next((p.split("=", 1)[1] for p in folders if p.startswith("survey=")), None)
        named = [p for p in folders if "=" not in p]
        individual = individual_or_none(named[-1]) if named else None
        m = _VIEWPOINT.search(os.path.splitext(parts[-1])[0])
        problem = None
        if same_as is not None:
            problem = f"duplicate: the same file as {same_as} (reached through a link; ingested once)"
        out.append(
            Candidate(
                uri=uri,
                relpath=rel,
                individual_id=individual,
                survey=survey,
                viewpoint=m.group(1).lower() if m else None,
                problem=problem,
            )
        )
    return out


# Columns compared with the archive on re-ingest (a corrected label must not pass unnoticed).
COMPARED = ("individual_id", "species", "camera_id", "viewpoint", "captured_at", "annotation_id")


def differences(c: Candidate, stored: dict) -> dict:
    """Column -> new value where ``c`` differs from the archive row ``stored``.

    ``individual_id`` always counts (a label removed is a change too); the other columns only
    when the input gives a value (a folder re-ingested without ``--species`` changes nothing).
    """
    new = {
        "individual_id": c.individual_id,
        "species": c.species,
        "camera_id": c.camera_id,
        "viewpoint": c.viewpoint,
        "captured_at": c.captured_at,
        "annotation_id": c.annotation_id,
    }
    return {k: v for k, v in new.items() if (v is not None or k == "individual_id") and v != stored.get(k)}


def duplicate_reason(c: Candidate, first: Candidate) -> str:
    """The reject reason of an annotation that repeats an earlier one of the same input."""
    why = f"duplicate: the same annotation as {first.relpath}"
    if c.relpath != first.relpath:
        why += f" (here spelled {c.relpath})"
    if c.individual_id != first.individual_id:
        why += f"; its individual_id {c.individual_id!r} conflicts with {first.individual_id!r}"
    return why + "; ingested once"


def photo_id_for(c: Candidate) -> str:
    """The photo's id, shared by all its annotations (the old image_id of a whole photo)."""
    return stable_id(c.survey or "", c.relpath)


def image_id_for(c: Candidate) -> str:
    """The annotation's id: from the user's annotation id, else the photo and its bbox."""
    if c.annotation_id:
        return stable_id(c.survey or "", "annotation", c.annotation_id)
    if c.bbox is None:
        return photo_id_for(c)
    box = ",".join(repr(float(c.bbox[k])) for k in ("x", "y", "w", "h"))
    return stable_id(c.survey or "", c.relpath, box)


def load(c: Candidate, budget: PixelBudget | None = None) -> tuple[dict | None, dict | None]:
    """Read and check one annotation: returns ``(row, None)`` or ``(None, reject)``.

    ``budget`` bounds the pixels decoded at once across threads (read from the header first).
    """
    image_id = image_id_for(c)
    reject = {"image_id": image_id, "source": c.uri}
    if c.problem:
        return None, {**reject, "reason": c.problem}
    ext = os.path.splitext(c.uri)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return None, {**reject, "reason": f"unsupported file type {ext or '(none)'}: not an image"}
    try:
        data = storage.read_bytes(c.uri)
    except (ReidError, OSError) as e:
        return None, {**reject, "reason": f"unreadable: {e}"}
    row = {"image_id": image_id, "image": data}
    too_big = row_too_big(row)
    if too_big:
        return None, {**reject, "reason": too_big}
    bbox = pixel_box(data, c.bbox) if (c.bbox_normalized and c.bbox) else c.bbox
    # A full decode (JPEGs in draft mode) catches truncated and corrupt files now, not mid-training.
    pixels = imageio.decode_pixels(data, bbox, target_size=64) if budget else 0
    with budget.hold(pixels) if budget else contextlib.nullcontext():
        dec = imageio.decode(data, bbox=bbox, target_size=64, roi=False)  # every byte checked
        damage = imageio.jpeg_damage(data) if dec.ok else None
    if not dec.ok:
        return None, {**reject, "reason": dec.reason}
    if damage:
        return None, {**reject, "reason": damage}
    row.update(
        individual_id=c.individual_id,
        species=c.species,
        survey=c.survey,
        captured_at=c.captured_at or imageio.capture_time(data),
        camera_id=c.camera_id,
        viewpoint=c.viewpoint,
        bbox=bbox,
        source=c.uri,
        width=dec.width,
        height=dec.height,
        photo_id=photo_id_for(c),
        annotation_id=c.annotation_id,
        photo_ref=c.photo_ref,
    )
    return row, None


def pixel_box(data: bytes, box: dict) -> dict:
    """A box in fractions of the upright image (x, y, w, h in 0..1) in pixels of that image.

    The size comes from the header (EXIF orientations 5-8 swap it, as MegaDetector's loader
    rotates photos upright before detecting); an unreadable header leaves the box for decode to
    refuse with its own reason.
    """
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if int(img.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8):
            w, h = h, w
    except Exception:  # noqa: BLE001 - decode() names what is wrong with the file
        return box
    return {"x": box["x"] * w, "y": box["y"] * h, "w": box["w"] * w, "h": box["h"] * h}


def triage(
    candidates: list[Candidate], existing: dict[str, dict]
) -> tuple[list[Candidate], list[dict], dict[str, dict], int]:
    """Split candidates: to load, duplicate rejects, changes to existing rows, count already present."""
    todo: list[Candidate] = []
    rejects: list[dict] = []
    changes: dict[str, dict] = {}
    first: dict[str, Candidate] = {}
    present = 0
    for c in candidates:
        image_id = image_id_for(c)
        if image_id in first:
            rejects.append(
                {"image_id": image_id, "source": c.uri, "reason": duplicate_reason(c, first[image_id])}
            )
            continue
        first[image_id] = c
        if image_id in existing:
            present += 1
            diff = differences(c, existing[image_id])
            if diff:
                changes[image_id] = diff
            continue
        todo.append(c)
    return todo, rejects, changes, present
