"""Camera Trap Data Packages (Camtrap DP, the TDWG exchange format): a folder with
``datapackage.json``, ``deployments.csv``, ``media.csv`` and ``observations.csv``.

One candidate per media-level ``animal`` observation: ``mediaID`` -> the photo (``filePath``
relative to the package, or ``--image-root``), ``deploymentID`` -> camera, ``timestamp`` ->
capture time, ``individualID`` -> individual (empty = unlabelled), ``scientificName`` -> species,
``bboxX/bboxY/bboxWidth/bboxHeight`` (fractions of the image) -> box, ``viewpoint:<v>`` in
``observationTags`` (or a ``viewpoint`` column) -> viewpoint. ``observationID`` is kept as
``annotation_id``, ``mediaID`` as ``photo_ref``.

An event-level animal observation (no ``mediaID``; as Agouti records identifications) applies to
the deployment's photos from ``eventStart`` to ``eventEnd``: a photo with one unlabelled
media-level box takes its ``individualID``; a photo without media-level observations becomes a
whole-photo annotation (``annotation_id`` = ``observationID/mediaID``).

Rejects, each with its reason: observations of another type (blank, human, vehicle...),
event-level observations of several animals (no box tells them apart) or covering no photo,
photos two event-level observations claim, observations naming a media the package does not
list, bad boxes, and media no observation mentions.
"""

from __future__ import annotations

import csv
import datetime as dt
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


def _count(o: dict) -> int | None:
    try:
        return int(float(none(o.get("count")) or ""))
    except ValueError:
        return None


def _by_deployment(media: dict[str | None, dict]) -> dict[str, list[tuple[dt.datetime, str]]]:
    """deploymentID -> (timestamp, mediaID) of its media, in time order (unparseable times left out)."""
    out: dict[str, list[tuple[dt.datetime, str]]] = {}
    for media_id, m in media.items():
        dep = none(m.get("deploymentID"))
        try:
            t = parse_time(m.get("timestamp"))
        except ValueError:
            t = None
        if media_id and dep and t is not None:
            out.setdefault(dep, []).append((t, media_id))
    return {k: sorted(v) for k, v in out.items()}


def _event_media(o: dict, by_dep: dict[str, list[tuple[dt.datetime, str]]]) -> tuple[list[str], str | None]:
    """The media an event-level observation covers (same deployment, eventStart..eventEnd) and,
    when it cannot be used, why."""
    dep = none(o.get("deploymentID"))
    try:
        start, end = parse_time(o.get("eventStart")), parse_time(o.get("eventEnd"))
    except ValueError as e:
        return [], f"event-level observation with a bad eventStart/eventEnd: {e}"
    if dep is None or start is None or end is None:
        return (
            [],
            "event-level observation without deploymentID, eventStart and eventEnd: no photo to identify",
        )
    found = [mid for t, mid in by_dep.get(dep, []) if start <= t <= end]
    n = _count(o)
    if n is not None and n > 1:
        return (
            found,
            f"event-level observation of {n} animals: no box tells them apart (add media-level boxes)",
        )
    return (
        found,
        None if found else f"event-level observation: no media of deployment {dep!r} from {start} to {end}",
    )


def _media_candidate(base: str, m: dict, o: dict, obs_id: str, media_id: str) -> Candidate:
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
    try:
        c.captured_at = parse_time(m.get("timestamp") or o.get("eventStart"))
    except ValueError as e:
        c.problem = f"bad timestamp: {e}"
    return c


def read(src: str, options: ReadOptions) -> list[Candidate]:
    """One candidate per media-level animal observation, and per photo of an event-level one
    (a whole-photo annotation where no media-level observation describes the photo); everything
    else a reject candidate."""
    root = package_root(src)
    base = options.image_root or root
    media = {m.get("mediaID"): m for m in _table(root, "media.csv")}
    out: list[Candidate] = []
    observed: set[str] = set()
    animals: dict[str, list[Candidate]] = {}  # mediaID -> its usable media-level animal candidates
    events: list[tuple[str, dict]] = []
    for i, o in enumerate(_table(root, "observations.csv"), start=2):
        obs_id = none(o.get("observationID")) or f"row{i}"
        media_id = none(o.get("mediaID"))
        kind = (none(o.get("observationType")) or "animal").lower()
        if media_id is None and kind == "animal":
            events.append((obs_id, o))
            continue
        m = media.get(media_id) if media_id else None
        if m is None or none(m.get("filePath")) is None:
            ref = f"{root}/observations.csv#{obs_id}"
            if kind != "animal":
                why = f"observationType {kind!r}: not an animal"
            else:
                why = f"mediaID {media_id!r} is not in media.csv (or has no filePath)"
            out.append(Candidate(uri=ref, relpath=ref, annotation_id=obs_id, problem=why))
            continue
        c = _media_candidate(base, m, o, obs_id, media_id)
        box, problem = _box(o)
        c.bbox, c.problem = box, c.problem or problem
        if kind != "animal":
            c.problem = f"observationType {kind!r}: not an animal"
        elif c.problem is None:
            animals.setdefault(media_id, []).append(c)
        observed.add(media_id)
        out.append(c)
    out += _expand_events(events, media, animals, observed, base, root)
    for media_id, m in media.items():  # media no observation mentions: nothing to identify
        if media_id not in observed and none(m.get("filePath")) is not None:
            uri, rel = join_ref(base, m["filePath"])
            out.append(Candidate(uri=uri, relpath=rel, problem="no observation of this media"))
    return out


def _expand_events(
    events: list[tuple[str, dict]],
    media: dict[str | None, dict],
    animals: dict[str, list[Candidate]],
    observed: set[str],
    base: str,
    root: str,
) -> list[Candidate]:
    """Event-level animal observations onto their photos. A photo with one unlabelled media-level
    box takes the event's individual; a photo without media-level observations becomes a
    whole-photo annotation; a photo two events claim is a reject (no box tells the animals apart)."""
    by_dep = _by_deployment(media)
    covered = {obs_id: _event_media(o, by_dep) for obs_id, o in events}
    claims: dict[str, int] = {}
    for found, why in covered.values():
        observed.update(found)  # an event mentions them, used or not: not "no observation"
        for mid in found if why is None else []:
            claims[mid] = claims.get(mid, 0) + 1
    out: list[Candidate] = []
    for obs_id, o in events:
        found, why = covered[obs_id]
        if why is not None:
            ref = f"{root}/observations.csv#{obs_id}"
            out.append(Candidate(uri=ref, relpath=ref, annotation_id=obs_id, problem=why))
            continue
        name = individual_or_none(o.get("individualID"))
        for mid in found:
            boxes = animals.get(mid, [])
            if boxes:
                if name and len(boxes) == 1 and boxes[0].individual_id is None and claims[mid] == 1:
                    boxes[0].individual_id = name
                continue
            c = _media_candidate(base, media[mid], o, f"{obs_id}/{mid}", mid)
            if claims[mid] > 1:
                c.problem = f"media {mid!r} is in {claims[mid]} event-level observations: no box tells the animals apart"
            out.append(c)
    return out
