"""Ground truth next to a synthetic archive, and its readers.

Names starting with ``_`` are not archive data: ``_truth.parquet`` (one row per image: true
individual, burst, ...) and ``_truth_history.parquet`` (one row per individual and survey: alive,
seen, images). :func:`truth_capture_history` turns the latter into the individual x survey 0/1
table a capture-recapture check compares against.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from reid import storage
from reid.errors import ReidError
from reid.synthetic.survey import Plan, SynthConfig

__all__ = [
    "HISTORY_SCHEMA",
    "TRUTH",
    "TRUTH_HISTORY",
    "TRUTH_SCHEMA",
    "config_metadata",
    "history_table",
    "read_truth",
    "truth_capture_history",
    "truth_config",
    "truth_table",
    "write_truth",
]

TRUTH = "_truth.parquet"
TRUTH_HISTORY = "_truth_history.parquet"

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("individual_id", pa.string(), nullable=False),  # the true id, also for unlabeled rows
        pa.field("labeled", pa.bool_(), nullable=False),  # False where the archive has null
        pa.field("burst_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),  # position within the burst
        pa.field("survey", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("viewpoint", pa.string(), nullable=False),
        pa.field("captured_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("wide", pa.bool_(), nullable=False),  # animal placed in a bigger frame
    ]
)

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("individual_id", pa.string(), nullable=False),
        pa.field("survey", pa.string(), nullable=False),
        pa.field("alive", pa.int8(), nullable=False),
        pa.field("seen", pa.int8(), nullable=False),  # photographed at least once (labeled or not)
        pa.field("n_images", pa.int32(), nullable=False),
    ]
)


def truth_table(survey_plan: Plan) -> pa.Table:
    """One row per image: the true individual (also where the archive has null), burst, frame..."""
    rows = [
        {
            "image_id": s.image_id,
            "individual_id": s.individual_id,
            "labeled": s.labeled,
            "burst_id": s.burst_id,
            "frame": s.frame,
            "survey": s.survey,
            "camera_id": s.camera_id,
            "viewpoint": s.viewpoint,
            "captured_at": s.captured_at,
            "wide": s.wide,
        }
        for s in survey_plan.sightings
    ]
    return pa.Table.from_pylist(rows, schema=TRUTH_SCHEMA)


def history_table(survey_plan: Plan) -> pa.Table:
    """One row per individual ever alive and survey: alive, seen (0/1), images taken."""
    return pa.Table.from_pylist(survey_plan.history, schema=HISTORY_SCHEMA)


def config_metadata(config: SynthConfig) -> dict[bytes, bytes]:
    """Parquet metadata recording the generator options (a resumed run must match them)."""
    return {b"reid.synth.config": json.dumps(asdict(config), sort_keys=True).encode()}


def write_truth(out: str, survey_plan: Plan) -> tuple[str, str]:
    """Write ``_truth.parquet`` and ``_truth_history.parquet`` next to the archive (atomic each)."""
    meta = config_metadata(survey_plan.config)
    t = truth_table(survey_plan)
    h = history_table(survey_plan)
    a, b = storage.join(out, TRUTH), storage.join(out, TRUTH_HISTORY)
    storage.write_parquet(t.replace_schema_metadata(meta), a)
    storage.write_parquet(h.replace_schema_metadata(meta), b)
    return a, b


def truth_config(out_uri: str) -> dict | None:
    """The generator options recorded in an existing ``_truth.parquet`` (None when there is none)."""
    uri = storage.join(out_uri, TRUTH)
    if not storage.exists(uri):
        return None
    fs, path = storage.resolve(uri)
    meta = pq.read_schema(path, filesystem=fs).metadata or {}
    raw = meta.get(b"reid.synth.config")
    return json.loads(raw) if raw else None


def read_truth(out_uri: str) -> pa.Table:
    """The per-image ground truth of a synthetic archive."""
    uri = storage.join(out_uri, TRUTH)
    if not storage.exists(uri):
        raise ReidError(f"{out_uri}: no {TRUTH}; only archives made by `reid synth` carry ground truth")
    return storage.read_parquet(uri)


def truth_capture_history(out_uri: str, seen_only: bool = True) -> pa.Table:
    """The true capture history: ``individual_id`` plus one int8 0/1 column per survey (seen).

    ``seen_only`` keeps individuals photographed at least once (what any analysis of the
    archive can know about); otherwise individuals alive but never photographed are included.
    """
    uri = storage.join(out_uri, TRUTH_HISTORY)
    if not storage.exists(uri):
        raise ReidError(
            f"{out_uri}: no {TRUTH_HISTORY}; only archives made by `reid synth` carry ground truth"
        )
    long = storage.read_parquet(uri).to_pylist()
    surveys = sorted({r["survey"] for r in long})
    seen: dict[str, dict[str, int]] = {}
    for r in long:
        seen.setdefault(r["individual_id"], {})[r["survey"]] = int(r["seen"])
    ids = sorted(i for i, s in seen.items() if not seen_only or any(s.values()))
    cols = {"individual_id": pa.array(ids, pa.string())}
    for s in surveys:
        cols[s] = pa.array([seen[i].get(s, 0) for i in ids], pa.int8())
    return pa.table(cols)
