"""`reid ingest SRC OUT`: photo folders or manifests into a Parquet image archive (local or s3://)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import typer
from pydantic import BaseModel, Field

from jobs.common import print_summary, progress
from reid import archive, ingest, manifest, storage
from reid.errors import ReidError

JOB = "ingest"


class IngestConfig(BaseModel):
    src: str = Field(description="folder with one subfolder per individual, or a CSV/JSON manifest")
    out: str = Field(description="archive location: a path or s3://bucket/prefix")
    species: str | None = None
    survey: str | None = None
    threads: int = Field(4, ge=1, le=64)


def run(cfg: IngestConfig) -> dict:
    """Ingest every photo once: good ones into part files, bad ones into ``_rejects.parquet``."""
    started = manifest.now()
    t0 = time.perf_counter()
    manifest.ensure_writable_output(cfg.out, JOB, force=True)
    candidates = ingest.scan(cfg.src, species=cfg.species, survey=cfg.survey)
    done = archive.existing_ids(cfg.out)
    todo = [c for c in candidates if ingest.image_id_for(c) not in done]
    writer = archive.ArchiveWriter(cfg.out, skip_ids=done)
    rejects: list[dict] = []
    with ThreadPoolExecutor(cfg.threads) as pool:
        for row, reject in progress(pool.map(ingest.load, todo), total=len(todo), desc="ingest"):
            if reject is not None:
                rejects.append(reject)
            else:
                writer.add(row)
    writer.close()
    if rejects or not storage.exists(storage.join(cfg.out, archive.REJECTS)):
        archive.write_rejects(cfg.out, rejects)
    has_rows = bool(storage.list_files(cfg.out, suffix=".parquet"))
    labels = (
        archive.read_archive(cfg.out, columns=["individual_id"]).column("individual_id").to_pylist()
        if has_rows
        else []
    )
    individuals = len({i for i in labels if i is not None})
    counts = {
        "candidates": len(candidates),
        "already_present": len(candidates) - len(todo),
        "written": writer.written_rows,
        "rejected": len(rejects),
        "archive_rows": len(labels),
        "individuals": individuals,
    }
    manifest.write_manifest(cfg.out, JOB, cfg.model_dump(), [cfg.src], counts, started)
    return {**counts, "files": len(writer.files), "wall_s": round(time.perf_counter() - t0, 2)}


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_cmd(
        src: str = typer.Argument(..., help="photo folder (SRC/<individual>/<photo>) or CSV/JSON manifest"),
        out: str = typer.Argument(..., help="archive output: path or s3://bucket/prefix"),
        species: str = typer.Option(None, help="species of every photo (unless the manifest says)"),
        survey: str = typer.Option(None, help="survey label, e.g. 2023 (unless the manifest says)"),
        threads: int = typer.Option(4, help="parallel readers/decoders"),
    ):
        """Ingest photos into a Parquet image archive; unreadable files go to OUT/_rejects.parquet."""
        try:
            cfg = IngestConfig(src=src, out=out, species=species, survey=survey, threads=threads)
        except ValueError as e:
            raise ReidError(f"bad ingest options: {e}") from e
        summary = run(cfg)
        print_summary(JOB, summary)
        if summary["rejected"]:
            typer.echo(f"{summary['rejected']} file(s) rejected: see {storage.join(out, archive.REJECTS)}")
