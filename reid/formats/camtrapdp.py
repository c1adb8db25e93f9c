"""Camera Trap Data Packages (Camtrap DP, the TDWG exchange format): a folder with
``datapackage.json``, ``deployments.csv``, ``media.csv`` and ``observations.csv``.

One candidate per media-level ``animal`` observation: ``mediaID`` -> the photo (``filePath``
relative to the package, or ``--image-root``), ``deploymentID`` -> camera, ``timestamp`` ->
capture time, ``individualID`` -> individual (empty = unlabelled), ``scientificName`` -> species,
``bboxX/bboxY/bboxWidth/bboxHeight`` (fractions of the image) -> box, ``viewpoint:<v>`` in
``observationTags`` (or a ``viewpoint`` column) -> viewpoint. ``observationID`` is kept as
``annotation_id``, ``mediaID`` as ``photo_ref``.

Rejects, each with its reason: observations of another type (blank, human, vehicle...),
event-level observations (no ``mediaID``: no single photo to identify), observations naming a
media the package does not list, bad boxes, and media with no animal observation.
"""

from __future__ import annotations

import csv
import io

from reid import storage
from reid.errors import ReidError
from reid.formats.base import (
    Candidate,
    ReadOptions,
    join_ref,
    none,
    normalized_box_problem,
    parse_time,
    read_text,
    viewpoint,
)
from reid.schema import individual_or_none

__all__ = ["DESCRIPTOR", "looks_like", "package_root", "read", "tags"]

DESCRIPTOR = "datapackage.json"


def package_root(src: str) -> str:
    """The package folder, given the folder or its ``datapackage.json``."""
    return src[: -len(DESCRIPTOR)].rstrip("/") if src.endswith(DESCRIPTOR) else src.rstrip("/")


def looks_like(src: str) -> bool:
    """A Camtrap DP folder (or its descriptor)."""
    root = package_root(src)
    return storage.exists(storage.join(root, DESCRIPTOR)) and storage.exists(storage.join(root, "media.csv"))


def _table(root: str, name: str, required: bool = True) -> list[dict]:
    uri = storage.join(root, name)
    if not storage.exists(uri):
        if required:
            raise ReidError(
                f"{root}: Camtrap DP package without {name}; a package needs media.csv and observations.csv"
            )
        return []
    return list(csv.DictReader(io.StringIO(read_text(uri))))


def tags(text: object) -> dict[str, str]:
    """``observationTags`` (``key:value | key:value``) as a dict."""
    out = {}
    for part in (none(text) or "").split("|"):
        key, sep, value = part.partition(":")
        if sep and key.strip():
            out[key.strip().lower()] = value.strip()
    return out


def _box(o: dict) -> tuple[dict | None, str | None]:
    raw = [none(o.get(k)) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")]
    if all(v is None for v in raw):
        return None, None
    try:
        box = dict(zip("xywh", (float(v) for v in raw), strict=True))
    except (TypeError, ValueError):
        return None, f"bad bbox: bboxX/bboxY/bboxWidth/bboxHeight {raw} are not four numbers"
    return box, normalized_box_problem(box)


def read(src: str, options: ReadOptions) -> list[Candidate]:
    """One candidate per media-level animal observation; everything else a reject candidate."""
    root = package_root(src)
    base = options.image_root or root
    media = {m.get("mediaID"): m for m in _table(root, "media.csv")}
    observations = _table(root, "observations.csv")
    out: list[Candidate] = []
    observed: set[str] = set()
    for i, o in enumerate(observations, start=2):
        obs_id = none(o.get("observationID")) or f"row{i}"
        media_id = none(o.get("mediaID"))
        kind = (none(o.get("observationType")) or "animal").lower()
        m = media.get(media_id) if media_id else None
        if m is None or none(m.get("filePath")) is None:
            ref = f"{root}/observations.csv#{obs_id}"
            if kind != "animal":
                why = f"observationType {kind!r}: not an animal"
            elif media_id is None:
                why = "event-level observation (no mediaID): no single photo to identify"
            else:
                why = f"mediaID {media_id!r} is not in media.csv (or has no filePath)"
            out.append(Candidate(uri=ref, relpath=ref, annotation_id=obs_id, problem=why))
            continue
        uri, rel = join_ref(base, m["filePath"])
        c = Candidate(
            uri=uri,
            relpath=rel,
            individual_id=individual_or_none(o.get("individualID")),
            species=none(o.get("scientificName")),
            camera_id=none(o.get("deploymentID")) or none(m.get("deploymentID")),
            viewpoint=viewpoint(none(o.get("viewpoint")) or tags(o.get("observationTags")).get("viewpoint")),
            annotation_id=obs_id,
            photo_ref=media_id,
            bbox_normalized=True,
        )
        c.bbox, c.problem = _box(o)
        try:
            c.captured_at = parse_time(m.get("timestamp") or o.get("eventStart"))
        except ValueError as e:
            c.problem = c.problem or f"bad timestamp: {e}"
        if kind != "animal":
            c.problem = f"observationType {kind!r}: not an animal"
        observed.add(media_id)
        out.append(c)
    for media_id, m in media.items():  # media no observation mentions: nothing to identify
        if media_id not in observed and none(m.get("filePath")) is not None:
            uri, rel = join_ref(base, m["filePath"])
            out.append(Candidate(uri=uri, relpath=rel, problem="no observation of this media"))
    return out
