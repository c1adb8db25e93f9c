"""`reid split ARCHIVE --out SPLIT.parquet --kind ...`: a leak-free train/test split of an archive."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from jobs.common import (
    Input,
    JobConfig,
    OutputFile,
    check_locations,
)
from jobs.registry import Job, add_job
from reid import archive, manifest, storage
from reid.data import splits
from reid.errors import ConfigError, ReidError

JOB = "split"


class SplitConfig(JobConfig):
    archive: Input = Field(description="archive location: a path or s3://bucket/prefix")
    out: OutputFile = Field(description="split table to write: a .parquet path or s3:// key")
    kind: Literal["identity", "open", "closed", "closed-photo", "time"] = Field(
        "identity", description="closed-photo: by photo, as published baselines"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="approximate share of labeled images in test")
    unknown_fraction: float = Field(
        0.5, gt=0, lt=1, description="open split: share of test images unseen in train"
    )
    cutoff: str | None = Field(None, description="time split: first survey that goes to test")
    seed: int = Field(0, ge=0, description="same seed, same split")


def run(cfg: SplitConfig) -> dict:
    """Read the archive's metadata columns (not the images), split, write table + manifest at once."""
    started = manifest.now()
    t0 = time.perf_counter()
    if cfg.kind == "time" and not cfg.cutoff:
        raise ConfigError("a time split needs --cutoff, the first survey that goes to test (e.g. 2023)")
    if storage.is_dir(cfg.out):
        raise ReidError(f"{cfg.out} is a folder; --out names the split's Parquet file, e.g. split.parquet")
    check_locations(cfg)
    manifest.require_manifest(cfg.archive)
    table = archive.read_archive(cfg.archive, columns=splits.INPUT_COLUMNS)
    result = splits.make_split(
        table,
        cfg.kind,
        test_fraction=cfg.test_fraction,
        unknown_fraction=cfg.unknown_fraction,
        cutoff=cfg.cutoff,
        seed=cfg.seed,
        source=cfg.archive,
    )
    counts = splits.split_counts(result)
    m = {
        "job": JOB,
        "config": manifest.scrub(cfg.model_dump()),
        "code_version": manifest.code_version(),
        "inputs": manifest.lineage([cfg.archive]),
        "counts": counts,
        "started_at": started,
        "ended_at": manifest.now(),
    }
    splits.write_split(result, cfg.out, m)
    return {"kind": cfg.kind, **counts, "wall_s": round(time.perf_counter() - t0, 2)}


add_job(
    Job(
        name=JOB,
        config=SplitConfig,
        run=run,
        help="Split an archive into train/test (+ unlabeled) without leaking bursts or same-day sightings.",
        args=("archive",),
    )
)
