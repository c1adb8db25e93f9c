"""Turning photo folders or CSV/JSON manifests into archive rows (or rejects with a reason).

Folder layout: ``SRC/<individual>/<photo>``, at any depth (``SRC/train/<individual>/...`` works;
the individual is the photo's parent folder). Photos directly in SRC, or under a folder whose
name means unlabelled (``reid.schema.UNLABELLED_NAMES``: unknown, unidentified, ...), have no
individual. A ``survey=2023`` folder anywhere in the path sets the survey. Folders are walked
without looping through directory links, and a file reached twice through links counts once.

Manifests (.csv / .json / .jsonl; a CSV may start with Excel's byte-order mark) have one row per
annotation (an animal in a photo) with a ``path`` column (relative to the manifest) and optional
individual_id, captured_at, camera_id, bbox, viewpoint, survey, species, annotation_id. Several
rows may name one photo (several animals, each with its bbox).

Ids: ``photo_id`` = hash(survey, normalised path); ``image_id`` (one per annotation) = the
photo_id when the whole photo is used, hash(survey, path, bbox) for a box, or hash(survey,
annotation_id) when the manifest gives the user's own annotation id (kept as a column).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import posixpath
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from reid import imageio, storage
from reid.archive import row_too_big, stable_id
from reid.errors import ReidError
from reid.schema import individual_or_none

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
# Pixels decoded at once by all ingest threads together (~3 bytes each in RGB, more while
# converting): a photo larger than this still decodes, but alone.
DECODE_PIXEL_BUDGET = 64_000_000
MANIFEST_EXTENSIONS = {".csv", ".json", ".jsonl"}
_VIEWPOINT = re.compile(r"(?:^|[_\-\s.])(left|right|front|back|top)(?:$|[_\-\s.])", re.I)


@dataclass
class Candidate:
    """One annotation to ingest (a photo, or a box in it): where it is and what the source says.

    ``problem``: a reason found while scanning (bad bbox, duplicate link) that makes it a reject.
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
    problem: str | None = None
    extra: dict = field(default_factory=dict)


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


def scan(src: str, species: str | None = None, survey: str | None = None) -> list[Candidate]:
    """List the annotations of a folder or manifest (no decoding yet); sources are absolute."""
    src = absolute_uri(src)
    if not storage.exists(src):
        raise ReidError(f"{src}: not found; give a folder of photos or a CSV/JSON manifest")
    ext = os.path.splitext(src)[1].lower()
    if not storage.is_dir(src):
        if ext not in MANIFEST_EXTENSIONS:
            raise ReidError(f"{src}: not a folder nor a .csv/.json/.jsonl manifest")
        cands = _scan_manifest(src)
    else:
        cands = _scan_folder(src)
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
    if storage.is_s3(src):
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


def _read_manifest_text(src: str) -> str:
    data = storage.read_bytes(src)
    try:
        return data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise ReidError(
            f"{src}: not UTF-8 text (byte {e.start}); save the manifest as UTF-8 (Excel: CSV UTF-8)"
        ) from e


def _scan_manifest(src: str) -> list[Candidate]:
    text = _read_manifest_text(src)
    ext = os.path.splitext(src)[1].lower()
    try:
        if ext == ".csv":
            records = list(csv.DictReader(io.StringIO(text)))
        elif ext == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            records = data["images"] if isinstance(data, dict) and "images" in data else data
    except (ValueError, KeyError, csv.Error) as e:
        raise ReidError(f"{src}: cannot parse manifest: {e}") from e
    if not isinstance(records, list):
        raise ReidError(f"{src}: a JSON manifest must be a list of objects (or {{'images': [...]}})")
    base = src.rsplit("/", 1)[0] if "/" in src else "."
    out = []
    for i, r in enumerate(records, start=2 if ext == ".csv" else 1):
        if not isinstance(r, dict):
            raise ReidError(f"{src}: record {i} is not an object with a 'path'")
        r = {str(k).strip().lower(): v for k, v in r.items() if k is not None}
        raw_path = _none(r.get("path") or r.get("file") or r.get("image"))
        if not raw_path:
            raise ReidError(f"{src}: record {i} has no 'path' (columns: {', '.join(r) or 'none'})")
        path = _normpath(raw_path)
        uri = path if (path.startswith("s3://") or os.path.isabs(path)) else _join(base, path)
        try:
            bbox, problem = _parse_bbox(r)
            c = Candidate(
                uri=uri,
                relpath=path,
                individual_id=individual_or_none(
                    _first(r, "individual_id", "individual", "identity", "individual_name")
                ),
                survey=_none(r.get("survey")),
                species=_none(r.get("species")),
                captured_at=_parse_time(r.get("captured_at") or r.get("timestamp") or r.get("date")),
                camera_id=_none(r.get("camera_id") or r.get("camera")),
                viewpoint=_none(r.get("viewpoint")),
                bbox=bbox,
                annotation_id=_none(r.get("annotation_id")),
                problem=problem,
            )
        except ValueError as e:
            raise ReidError(f"{src}: record {i} ({raw_path}): {e}") from e
        out.append(c)
    return out


def _first(r: dict, *keys: str):
    """The first of ``keys`` present with a non-empty value (so "unknown" is not skipped over)."""
    for k in keys:
        if _none(r.get(k)) is not None:
            return r[k]
    return None


def _normpath(path: str) -> str:
    """One spelling per file: ``./img/b.jpg`` and ``img/../img/b.jpg`` are ``img/b.jpg``."""
    if path.startswith("s3://"):
        return "s3://" + posixpath.normpath(path[5:])
    if path.startswith("file://"):
        path = path[len("file://") :]
    return posixpath.normpath(path.replace(os.sep, "/"))


def _join(base: str, rel: str) -> str:
    return (
        ("s3://" + posixpath.normpath(posixpath.join(base[5:], rel)))
        if base.startswith("s3://")
        else (os.path.normpath(os.path.join(base, rel)))
    )


def _none(v):
    if v is None:
        return None
    v = str(v).strip()
    return v or None


def _parse_time(v) -> dt.datetime | None:
    v = _none(v)
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


def _parse_bbox(r: dict) -> tuple[dict | None, str | None]:
    """The bbox of a record and, when its values are unusable (nan, inf, w/h <= 0), why.

    A malformed bbox (not four numbers) raises: the manifest itself is wrong.
    """
    raw = r.get("bbox")
    if isinstance(raw, dict):
        vals = [raw.get(k) for k in ("x", "y", "w", "h")]
    elif isinstance(raw, (list, tuple)):
        vals = list(raw)
    elif _none(raw):
        vals = re.split(r"[,\s;]+", str(raw).strip("[]() "))
    elif all(_none(r.get(f"bbox_{k}")) for k in ("x", "y", "w", "h")):
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
    # A full decode (JPEGs in draft mode) catches truncated and corrupt files now, not mid-training.
    pixels = imageio.decode_pixels(data, c.bbox, target_size=64) if budget else 0
    with budget.hold(pixels) if budget else contextlib.nullcontext():
        dec = imageio.decode(data, bbox=c.bbox, target_size=64, roi=False)  # every byte checked
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
        bbox=c.bbox,
        source=c.uri,
        width=dec.width,
        height=dec.height,
        photo_id=photo_id_for(c),
        annotation_id=c.annotation_id,
    )
    return row, None
