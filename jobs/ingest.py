"""`reid ingest SRC --out ARCHIVE`: photo folders or metadata files into a Parquet image archive (local or s3://).

SRC may be a folder, a CSV/JSON manifest, a wildlife-datasets table, a COCO file, MegaDetector
batch output or a Camtrap DP package, detected from SRC or named with ``--format``
(:mod:`reid.formats`).

Every candidate (an annotation: a photo, or one box in it) is accounted for in the summary:
``candidates = written + rejected + duplicates_of_existing``. Repeats within the input are
rejects with reason ``duplicate: ...``; rows already in the archive are not written again, and
those whose labels or metadata differ are counted as ``changed`` and rewritten only with
``--update``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import typer
from pydantic import Field, field_validator

from jobs.common import Input, JobConfig, Output, print_summary, progress
from jobs.registry import Alias, Flag, Job, add_job
from reid import archive, ingest, manifest, storage

JOB = "ingest"


class IngestConfig(JobConfig):
    src: Input = Field(
        description="folder with one subfolder per individual, or a metadata file (manifest, "
        "wildlife-datasets table, COCO, MegaDetector output, Camtrap DP package)"
    )
    out: Output = Field(description="archive location: a path or s3://bucket/prefix")
    species: str | None = Field(None, description="species of every photo (unless the manifest says)")
    survey: str | None = Field(None, description="survey label, e.g. 2023 (unless the manifest says)")
    threads: int = Field(4, ge=1, le=64, description="parallel readers/decoders")
    update: bool = Field(False, description="rewrite archive rows whose labels/metadata changed in SRC")
    decode_megapixels: int = Field(
        ingest.DECODE_PIXEL_BUDGET // 1_000_000,
        ge=1,
        le=10_000,
        description="pixels decoded at once, all threads",
    )
    format: str | None = Field(
        None, description=f"input format (default: detected): {', '.join(ingest.FORMATS)}"
    )
    image_root: Input | None = Field(None, description="folder the metadata's file names are relative to")
    min_confidence: float = Field(
        ingest.ReadOptions.min_confidence,
        ge=0.0,
        le=1.0,
        description="MegaDetector: lowest detection confidence kept",
    )
    categories: list[str] = Field(
        list(ingest.ReadOptions.categories),
        min_length=1,
        description="MegaDetector: detection categories kept",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        if v is not None and v not in ingest.FORMATS:
            raise ValueError(f"unknown format {v!r}; use one of {', '.join(ingest.FORMATS)}")
        return v

    def read_options(self) -> ingest.ReadOptions:
        return ingest.ReadOptions(self.image_root, self.min_confidence, tuple(self.categories))


def _sources(previous: dict | None, src: str) -> list[str]:
    """Every source ingested into this archive so far, in order, this one last."""
    earlier = [i.get("uri") for i in (previous or {}).get("inputs", []) if isinstance(i, dict)]
    out = [u for u in earlier if u and u != src]
    return [*dict.fromkeys(out), src]


def run(cfg: IngestConfig) -> dict:
    """Ingest every annotation once: good ones into part files, bad ones into ``_rejects.parquet``."""
    started = manifest.now()
    t0 = time.perf_counter()
    manifest.ensure_writable_output(cfg.out, JOB, force=True)
    previous = manifest.read_manifest(cfg.out)
    src = ingest.absolute_uri(cfg.src)
    candidates = ingest.scan(src, cfg.species, cfg.survey, cfg.format, cfg.read_options())
    existing = archive.existing_metadata(cfg.out, list(ingest.COMPARED))
    todo, rejects, changes, present = ingest.triage(candidates, existing)
    writer = archive.ArchiveWriter(cfg.out, skip_ids=existing)
    budget = ingest.PixelBudget(cfg.decode_megapixels * 1_000_000)
    with ThreadPoolExecutor(cfg.threads) as pool:
        loaded = pool.map(lambda c: ingest.load(c, budget), todo)
        for row, reject in progress(loaded, total=len(todo), desc="ingest"):
            if reject is not None:
                rejects.append(reject)
            elif not writer.add(row):  # triage removed repeats; kept so nothing is ever unaccounted
                rejects.append({**writer.skipped[-1], "reason": "duplicate: image_id already written"})
    writer.close()
    updated = archive.update_rows(cfg.out, changes) if (changes and cfg.update) else []
    if rejects or not storage.exists(storage.join(cfg.out, archive.REJECTS)):
        archive.write_rejects(cfg.out, rejects)
    has_rows = bool(storage.list_files(cfg.out, suffix=".parquet"))
    labels = (
        archive.read_archive(cfg.out, columns=["individual_id"]).column("individual_id").to_pylist()
        if has_rows
        else []
    )
    counts = {
        "candidates": len(candidates),
        "written": writer.written_rows,
        "rejected": len(rejects),
        "duplicates_of_existing": present,
        "changed": len(changes),
        "updated": len(changes) if updated else 0,
        "archive_rows": len(labels),
        "individuals": len({i for i in labels if i is not None}),
    }
    sources = _sources(previous, src)
    manifest.write_manifest(cfg.out, JOB, {**cfg.model_dump(), "src": src}, sources, counts, started)
    return {
        **counts,
        "files": len(writer.files) + len(updated),
        "peak_decode_pixels": budget.peak,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _show(cfg: IngestConfig, summary: dict) -> None:
    print_summary(JOB, summary)
    if summary["rejected"]:
        typer.echo(f"{summary['rejected']} file(s) rejected: see {storage.join(cfg.out, archive.REJECTS)}")
    if summary["changed"] and not cfg.update:
        typer.echo(
            f"{summary['changed']} row(s) already in {cfg.out} differ from {cfg.src} (labels/metadata); "
            "re-run with --update to write them",
            err=True,
        )


add_job(
    Job(
        name=JOB,
        config=IngestConfig,
        run=run,
        help="Ingest photos into a Parquet image archive; unreadable files go to OUT/_rejects.parquet.",
        args=("src",),
        runtime=frozenset({"threads", "decode_megapixels"}),
        flags={"categories": Flag(("--category",))},
        aliases=(Alias("out", "out", positional=True),),  # `reid ingest SRC OUT`, as before
        show=_show,
    )
)
