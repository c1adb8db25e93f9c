"""MegaDetector batch output (``md_results.json``): the usual source of camera-trap crops.

``{"detection_categories": {"1": "animal", ...}, "images": [{"file": ..., "detections":
[{"category": "1", "conf": 0.93, "bbox": [x, y, w, h]}]}]}`` with boxes in fractions of the image
(ingest turns them into pixels once it knows the image's size). Every detection of a wanted
category (``--category``, default ``animal``) with ``conf >= --min-confidence`` is an unlabelled
annotation. Rejects, each with its reason: detections below the threshold or of another
category, images MegaDetector failed on, and images with no detection at all. File names are
relative to the folder MegaDetector ran on: the JSON's folder unless ``--image-root`` says.
"""

from __future__ import annotations

import json

from reid.errors import ReidError
from reid.formats.base import (
    Candidate,
    ReadOptions,
    join_ref,
    none,
    normalized_box_problem,
    parent,
    read_text,
)

__all__ = ["looks_like", "read"]

DEFAULT_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


def looks_like(data: object) -> bool:
    """A parsed JSON document in MegaDetector's batch-output shape."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return False
    if "detection_categories" in data:
        return True
    return any(isinstance(i, dict) and "detections" in i for i in data["images"][:10])


def _box(det: dict) -> tuple[dict | None, str | None]:
    raw = det.get("bbox")
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None, f"bad bbox: {raw!r} is not [x, y, w, h]"
    try:
        box = dict(zip("xywh", (float(v) for v in raw), strict=True))
    except (TypeError, ValueError):
        return None, f"bad bbox: {raw!r} is not four numbers"
    return box, normalized_box_problem(box)


def read(src: str, options: ReadOptions) -> list[Candidate]:
    """One candidate per kept detection; every other detection and image is a reject candidate."""
    try:
        data = json.loads(read_text(src))
    except ValueError as e:
        raise ReidError(f"{src}: not valid JSON ({e})") from e
    if not looks_like(data):
        raise ReidError(f"{src}: not MegaDetector batch output (needs 'images' with 'detections')")
    names = {str(k): str(v) for k, v in (data.get("detection_categories") or DEFAULT_CATEGORIES).items()}
    wanted = {c.lower() for c in options.categories}
    base = options.image_root or parent(src)
    out: list[Candidate] = []
    for i, img in enumerate(data["images"], start=1):
        file = none(img.get("file")) if isinstance(img, dict) else None
        if file is None:
            ref = f"{src}#images[{i}]"
            out.append(Candidate(uri=ref, relpath=ref, problem=f"image record {i} has no 'file'"))
            continue
        uri, rel = join_ref(base, file.replace("\\", "/"))  # batch runs on Windows write backslashes
        if none(img.get("failure")):
            out.append(
                Candidate(uri=uri, relpath=rel, problem=f"MegaDetector failed on it: {img['failure']}")
            )
            continue
        detections = img.get("detections") or []
        if not detections:
            out.append(Candidate(uri=uri, relpath=rel, problem="no detection: MegaDetector found nothing"))
            continue
        for det in detections:
            box, problem = _box(det)
            category = names.get(str(det.get("category")), str(det.get("category")))
            conf = det.get("conf")
            if category.lower() not in wanted:
                problem = f"category {category!r} filtered out (kept: {', '.join(sorted(wanted))})"
            elif not isinstance(conf, (int, float)) or conf < options.min_confidence:
                problem = f"low confidence: {conf} < {options.min_confidence} (--min-confidence)"
            c = Candidate(uri=uri, relpath=rel, bbox=box, bbox_normalized=True, problem=problem)
            c.extra["confidence"] = conf
            out.append(c)
    return out
