"""Turning photo folders or CSV/JSON manifests into archive rows (or rejects with a reason).

Folder layout: ``SRC/<individual>/<photo>``, at any depth (``SRC/train/<individual>/...`` works;
the individual is the photo's parent folder). Photos directly in SRC, or under a folder named
``unknown``/``unlabeled``, have no individual. A ``survey=2023`` folder anywhere in the path sets
the survey. Manifests (.csv / .json / .jsonl) have one row per photo with a ``path`` column
(relative to the manifest) and optional individual_id, captured_at, camera_id, bbox, viewpoint,
survey, species.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass, field

from reid import imageio, storage
from reid.archive import row_too_big, stable_id
from reid.errors import ReidError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
UNLABELED_FOLDERS = {"unknown", "unlabeled", "unlabelled", "_unknown"}
MANIFEST_EXTENSIONS = {".csv", ".json", ".jsonl"}
_VIEWPOINT = re.compile(r"(?:^|[_\-\s.])(left|right|front|back|top)(?:$|[_\-\s.])", re.I)


@dataclass
class Candidate:
    """One photo to ingest: where it is and what the source says about it."""

    uri: str
    relpath: str
    individual_id: str | None = None
    survey: str | None = None
    species: str | None = None
    captured_at: dt.datetime | None = None
    camera_id: str | None = None
    viewpoint: str | None = None
    bbox: dict | None = None
    extra: dict = field(default_factory=dict)


def scan(src: str, species: str | None = None, survey: str | None = None) -> list[Candidate]:
    """List the photos of a folder or manifest (no decoding yet)."""
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


def _scan_folder(src: str) -> list[Candidate]:
    out = []
    for uri in storage.list_files(src):
        rel = uri[len(src.rstrip("/")) :].lstrip("/")
        parts = rel.split("/")
        folders = parts[:-1]
        survey = next((p.split("=", 1)[1] for p in folders if p.startswith("survey=")), None)
        named = [p for p in folders if "=" not in p]
        individual = named[-1] if named and named[-1].lower() not in UNLABELED_FOLDERS else None
        m = _VIEWPOINT.search(os.path.splitext(parts[-1])[0])
        out.append(
            Candidate(
                uri=uri,
                relpath=rel,
                individual_id=individual,
                survey=survey,
                viewpoint=m.group(1).lower() if m else None,
            )
        )
    return out


def _scan_manifest(src: str) -> list[Candidate]:
    text = storage.read_text(src)
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
        path = r.get("path") or r.get("file") or r.get("image")
        if not path:
            raise ReidError(f"{src}: record {i} has no 'path'")
        uri = path if (path.startswith("s3://") or os.path.isabs(path)) else _join(base, path)
        try:
            c = Candidate(
                uri=uri,
                relpath=path,
                individual_id=_none(r.get("individual_id") or r.get("individual") or r.get("identity")),
                survey=_none(r.get("survey")),
                species=_none(r.get("species")),
                captured_at=_parse_time(r.get("captured_at") or r.get("timestamp") or r.get("date")),
                camera_id=_none(r.get("camera_id") or r.get("camera")),
                viewpoint=_none(r.get("viewpoint")),
                bbox=_parse_bbox(r),
            )
        except ValueError as e:
            raise ReidError(f"{src}: record {i} ({path}): {e}") from e
        out.append(c)
    return out


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


def _parse_bbox(r: dict) -> dict | None:
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
        return None
    if len(vals) != 4:
        raise ValueError(f"bbox must be x,y,w,h in pixels, got {raw!r}")
    x, y, w, h = (float(v) for v in vals)
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox width/height must be positive, got {raw!r}")
    return {"x": x, "y": y, "w": w, "h": h}


def image_id_for(c: Candidate) -> str:
    return stable_id(c.survey or "", c.relpath)


def load(c: Candidate) -> tuple[dict | None, dict | None]:
    """Read and check one photo: returns ``(row, None)`` or ``(None, reject)``."""
    image_id = image_id_for(c)
    reject = {"image_id": image_id, "source": c.uri}
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
    dec = imageio.decode(data, bbox=c.bbox, target_size=64, roi=False)  # every byte checked
    if not dec.ok:
        return None, {**reject, "reason": dec.reason}
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
    )
    return row, None
