"""The plain manifest: CSV / JSON / JSONL with one row per annotation and a ``path`` column.

Optional columns: individual_id (or individual, identity, individual_name), captured_at (or
timestamp, date), camera_id (or camera), bbox (or bbox_x..bbox_h, pixels), viewpoint, survey,
species, annotation_id. Paths are relative to the manifest (or ``--image-root``). A malformed
row (no path, a bbox that is not four numbers, a date that is not a date) stops the ingest with
the row named: the file itself needs fixing.
"""

from __future__ import annotations

import csv
import io
import json
import os

from reid.errors import ReidError
from reid.formats.base import (
    Candidate,
    ReadOptions,
    first,
    join_ref,
    none,
    parent,
    parse_bbox,
    parse_time,
    read_text,
)
from reid.schema import individual_or_none

__all__ = ["read", "records"]


def records(src: str) -> list[dict]:
    """The rows of a CSV/JSON/JSONL file as dicts (a JSON ``{"images": [...]}`` is unwrapped)."""
    text = read_text(src)
    ext = os.path.splitext(src)[1].lower()
    try:
        if ext == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        elif ext == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows = data["images"] if isinstance(data, dict) and "images" in data else data
    except (ValueError, KeyError, csv.Error) as e:
        raise ReidError(f"{src}: cannot parse manifest: {e}") from e
    if not isinstance(rows, list):
        raise ReidError(f"{src}: a JSON manifest must be a list of objects (or {{'images': [...]}})")
    return rows


def read(src: str, options: ReadOptions) -> list[Candidate]:
    """One candidate per manifest row."""
    ext = os.path.splitext(src)[1].lower()
    base = options.image_root or parent(src)
    out = []
    for i, r in enumerate(records(src), start=2 if ext == ".csv" else 1):
        if not isinstance(r, dict):
            raise ReidError(f"{src}: record {i} is not an object with a 'path'")
        r = {str(k).strip().lower(): v for k, v in r.items() if k is not None}
        raw_path = none(r.get("path") or r.get("file") or r.get("image"))
        if not raw_path:
            raise ReidError(f"{src}: record {i} has no 'path' (columns: {', '.join(r) or 'none'})")
        uri, rel = join_ref(base, raw_path)
        try:
            bbox, problem = parse_bbox(r)
            c = Candidate(
                uri=uri,
                relpath=rel,
                individual_id=individual_or_none(
                    first(r, "individual_id", "individual", "identity", "individual_name")
                ),
                survey=none(r.get("survey")),
                species=none(r.get("species")),
                captured_at=parse_time(r.get("captured_at") or r.get("timestamp") or r.get("date")),
                camera_id=none(r.get("camera_id") or r.get("camera")),
                viewpoint=none(r.get("viewpoint")),
                bbox=bbox,
                annotation_id=none(r.get("annotation_id")),
                problem=problem,
            )
        except ValueError as e:
            raise ReidError(f"{src}: record {i} ({raw_path}): {e}") from e
        out.append(c)
    return out
