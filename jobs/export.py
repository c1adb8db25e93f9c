"""`reid export MATCHES --out RESULTS`: a match run's results as files people open.

A sightings table (CSV and Parquet: one row per annotation with individual, decision, score,
survey, date, camera, source file and box), crops per individual with a spreadsheet, COCO with
individual names, a Camtrap DP package with ``individualID`` filled, and capture histories; see
:mod:`reid.export`. The archive and reviews default to those the match run names.
"""

from __future__ import annotations

import time

import typer
from pydantic import Field

from jobs.common import Input, JobConfig, Output, print_summary
from jobs.registry import Job, add_job
from reid import export, manifest, storage
from reid.errors import ReidError

JOB = "export"


class ExportConfig(JobConfig):
    matches: Input | None = Field(
        None, description="a `reid match` output (omit to export --archive's labels)"
    )
    out: Output = Field(description="results folder: a path or a URI")
    archive: Input | None = Field(
        None, description="the archive matched (default: from the match run's lineage)"
    )
    reviews: Input | None = Field(
        None,
        description="reviewers' decisions to apply: an index or reviews folder (default: the match run's)",
    )
    crops: bool = Field(True, description="write a crop per annotation under OUT/individuals/<individual>/")
    crop_size: int = Field(512, ge=16, le=8192, description="longest side of a crop, in pixels")


def run(cfg: ExportConfig) -> dict:
    """Write the export files, then the manifest; returns the summary."""
    if cfg.matches is None and cfg.archive is None:
        raise ReidError("reid export: give a match output (MATCHES) or an archive (--archive)")
    started, t0 = manifest.now(), time.perf_counter()
    manifest.ensure_writable_output(cfg.out, JOB, force=True)
    counts = export.export(cfg.matches, cfg.out, cfg.archive, cfg.reviews, cfg.crops, cfg.crop_size)
    inputs = [u for u in (cfg.matches, counts["archive"], counts["reviews"]) if u]
    figures = {k: v for k, v in counts.items() if isinstance(v, int)}
    manifest.write_manifest(cfg.out, JOB, cfg.model_dump(), list(dict.fromkeys(inputs)), figures, started)
    return {**counts, "wall_s": round(time.perf_counter() - t0, 2)}


def _show(cfg: ExportConfig, summary: dict) -> None:
    print_summary(JOB, summary)
    typer.echo(f"sightings: {storage.join(cfg.out, 'sightings.csv')}")
    if summary.get("crops_failed"):
        typer.echo(
            f"{summary['crops_failed']} crop(s) failed: see {storage.join(cfg.out, '_rejects.parquet')}"
        )


add_job(
    Job(
        name=JOB,
        config=ExportConfig,
        run=run,
        help="Export a match run's results: sightings CSV/Parquet, crops per individual, COCO, Camtrap DP.",
        args=("matches",),
        show=_show,
    )
)
