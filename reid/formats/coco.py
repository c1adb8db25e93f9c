"""COCO annotation files: ``images`` / ``annotations`` / ``categories``, one candidate per annotation.

The individual's name comes from the annotation attribute WBIA/Wildbook exports use (``name``),
or ``individual_id`` / ``individual`` / ``identity`` / ``individual_ids[0]`` (also inside an
``attributes`` dict, as CVAT writes); ``bbox`` is ``[x, y, w, h]`` in pixels; ``viewpoint`` is
read when present (a box covering the whole image, as COCO's ``width``/``height`` give it, is
the whole photo). The annotation's ``id`` is kept as ``annotation_id`` (or its ``annotation_id``
attribute, where `reid export` keeps an id that is not a number), the image's ``id`` as
``photo_ref`` (or its ``photo_ref``, as `reid export` writes it). Images are found by
``file_name`` relative to the JSON's folder (or ``--image-root``); ``date_captured``,
``camera_id`` and ``survey`` on an image are read too (``reid export`` writes them).

Rejects: an annotation naming an image the file does not list, an annotation without a box or
with a bad one, and an image without any annotation (nothing to identify in it).
"""

from __future__ import annotations

import json

from reid.errors import ReidError
from reid.formats.base import (
    Candidate,
    ReadOptions,
    join_ref,
    none,
    parent,
    parse_bbox,
    parse_time,
    read_text,
    viewpoint,
)
from reid.schema import individual_or_none

__all__ = ["looks_like", "read", "individual_name"]

NAME_KEYS = ("name", "individual_id", "individual", "identity", "individual_name")
WBIA_UNKNOWN = "____"  # the name WBIA/Wildbook gives an annotation of no known individual


def looks_like(data: object) -> bool:
    """A parsed JSON document in COCO's shape."""
    return isinstance(data, dict) and isinstance(data.get("images"), list) and "annotations" in data


def individual_name(ann: dict) -> str | None:
    """The individual an annotation names (None: unlabelled)."""
    for where in (ann, ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}):
        for key in NAME_KEYS:
            if none(where.get(key)) is not None:
                name = str(where[key]).strip()
                return None if name == WBIA_UNKNOWN else individual_or_none(name)
        ids = where.get("individual_ids")
        if isinstance(ids, list) and ids:
            return individual_or_none(ids[0])
    return None


def _whole(box: dict, img: dict) -> bool:
    """A box covering exactly the image COCO says it is: the whole photo."""
    try:
        size = (float(img["width"]), float(img["height"]))
    except (KeyError, TypeError, ValueError):
        return False
    return (box["x"], box["y"], box["w"], box["h"]) == (0.0, 0.0, *size)


def _load(src: str) -> dict:
    try:
        data = json.loads(read_text(src))
    except ValueError as e:
        raise ReidError(f"{src}: not valid JSON ({e})") from e
    if not looks_like(data):
        raise ReidError(f"{src}: not a COCO file (needs 'images' and 'annotations' lists)")
    return data


def read(src: str, options: ReadOptions) -> list[Candidate]:
    """One candidate per annotation, plus a reject candidate per unusable record."""
    data = _load(src)
    base = options.image_root or parent(src)
    categories = {
        c.get("id"): none(c.get("name")) for c in data.get("categories") or [] if isinstance(c, dict)
    }
    images: dict[object, dict] = {}
    out: list[Candidate] = []
    for i, img in enumerate(data["images"], start=1):
        if not isinstance(img, dict) or none(img.get("file_name")) is None:
            ref = f"{src}#images[{i}]"
            out.append(Candidate(uri=ref, relpath=ref, problem=f"image record {i} has no file_name"))
            continue
        images[img.get("id")] = img
    used: set[object] = set()
    for j, ann in enumerate(data.get("annotations") or [], start=1):
        ann = ann if isinstance(ann, dict) else {}
        ann_id = none(ann.get("annotation_id")) or none(ann.get("id"))  # reid export keeps text ids there
        img = images.get(ann.get("image_id"))
        if img is None:
            ref = f"{src}#annotations[{j}]"
            why = f"annotation {ann_id or j} names image_id {ann.get('image_id')!r}, which the file does not list"
            out.append(Candidate(uri=ref, relpath=ref, annotation_id=ann_id, problem=why))
            continue
        used.add(ann.get("image_id"))
        uri, rel = join_ref(base, str(img["file_name"]))
        attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        c = Candidate(
            uri=uri,
            relpath=rel,
            individual_id=individual_name(ann),
            species=none(ann.get("species")) or categories.get(ann.get("category_id")),
            survey=none(img.get("survey")),
            camera_id=none(img.get("camera_id")),
            viewpoint=viewpoint(ann.get("viewpoint") or attrs.get("viewpoint")),
            annotation_id=ann_id,
            # reid export writes photo_ref (null where the photo had no id of the user's)
            photo_ref=none(img["photo_ref"]) if "photo_ref" in img else none(img.get("id")),
        )
        try:
            c.captured_at = parse_time(img.get("date_captured") or img.get("datetime"))
        except ValueError as e:
            c.problem = f"bad date_captured: {e}"
        if ann.get("bbox") in (None, [], ""):
            c.problem = c.problem or f"annotation {ann_id or j} has no bbox"
        else:
            try:
                c.bbox, problem = parse_bbox({"bbox": ann["bbox"]})
                c.problem = c.problem or problem
            except ValueError as e:
                c.problem = c.problem or f"bad bbox: {e}"
            if c.bbox is not None and _whole(c.bbox, img):
                c.bbox = None  # the whole photo (as `reid export` writes an annotation without a box)
        out.append(c)
    for key, img in images.items():
        if key not in used:
            uri, rel = join_ref(base, str(img["file_name"]))
            out.append(
                Candidate(uri=uri, relpath=rel, problem="no annotation: nothing to identify in this image")
            )
    return out
