"""`reid synth OUT`: a synthetic open-population survey archive with its ground truth (demo and tests)."""

from __future__ import annotations

import time
from dataclasses import asdict

import typer
from pydantic import Field

from jobs.common import (
    JobConfig,
    Output,
    check_locations,
    parse_config,
    print_summary,
    progress,
)
from reid import archive, manifest, storage
from reid.errors import ConfigError, ReidError
from reid.synthetic import scenes, survey, truth

JOB = "synth"


class SynthJobConfig(JobConfig):
    out: Output = Field(description="archive location: a path or s3://bucket/prefix")
    individuals: int = Field(50, ge=1, description="initial population")
    years: int = Field(3, ge=1, le=100, description="yearly surveys, from first_year on")
    images_per_individual: float = Field(8.0, ge=1, description="mean images per seen individual per survey")
    image_size: int = Field(128, ge=32, le=1024)
    seed: int = Field(0, ge=0)
    unlabeled_fraction: float = Field(0.1, ge=0, lt=1)
    species: str = "synthetic-cat"
    first_year: int = Field(2021, ge=1900, le=2200)

    def generator(self) -> survey.SynthConfig:
        return survey.SynthConfig(
            individuals=self.individuals,
            years=self.years,
            images_per_individual=self.images_per_individual,
            image_size=self.image_size,
            seed=self.seed,
            species=self.species,
            unlabeled_fraction=self.unlabeled_fraction,
            first_year=self.first_year,
        )


def _check_same_survey(cfg: SynthJobConfig, gen: survey.SynthConfig) -> None:
    """Image ids depend on seed and index only: refuse to mix two different surveys in one OUT."""
    m = manifest.ensure_writable_output(cfg.out, JOB, force=False)
    previous = m.get("generator") if m else truth.truth_config(cfg.out)  # truth is written before images
    if previous is not None and previous != asdict(gen):
        changed = sorted(k for k in previous if previous.get(k) != asdict(gen).get(k))
        raise ConfigError(
            f"{cfg.out} already holds a synthetic survey made with other options ({', '.join(changed)}); "
            "re-run with the same options to complete it, or choose another OUT"
        )


def run(cfg: SynthJobConfig) -> dict:
    """Generate the survey; images already in OUT are not rendered again (idempotent re-runs)."""
    started = manifest.now()
    t0 = time.perf_counter()
    check_locations(cfg)
    gen = cfg.generator()
    _check_same_survey(cfg, gen)
    survey_plan = survey.plan(gen)
    if not survey_plan.sightings:
        raise ConfigError(
            "synthetic survey: the population produced no images; raise --individuals or --years"
        )
    done = archive.existing_ids(cfg.out)
    truth.write_truth(cfg.out, survey_plan)  # first: it records the options a resumed run must match
    todo = sum(1 for s in survey_plan.sightings if s.image_id not in done)
    writer = archive.ArchiveWriter(cfg.out, skip_ids=done)
    for row in progress(
        scenes.generate(gen, skip_ids=done, survey_plan=survey_plan), total=todo, desc="synth"
    ):
        writer.add(row)
    writer.close()
    n = len(survey_plan.sightings)
    labeled = sum(s.labeled for s in survey_plan.sightings)
    history = truth.history_table(survey_plan).to_pylist()
    counts = {
        "images": n,
        "written": writer.written_rows,
        "already_present": n - todo,
        "labeled": labeled,
        "unlabeled": n - labeled,
        "individuals_seen": len({s.individual for s in survey_plan.sightings}),
        "individuals_ever_alive": len({h["individual_id"] for h in history}),
        "bursts": len({s.burst for s in survey_plan.sightings}),
        "surveys": len(gen.surveys()),
    }
    per_survey = {
        s: {
            "alive": sum(h["alive"] for h in history if h["survey"] == s),
            "seen": sum(h["seen"] for h in history if h["survey"] == s),
            "images": sum(h["n_images"] for h in history if h["survey"] == s),
        }
        for s in gen.surveys()
    }
    manifest.write_manifest(
        cfg.out,
        JOB,
        cfg.model_dump(),
        [],
        counts,
        started,
        generator=asdict(gen),
        per_survey=per_survey,
        truth=[truth.TRUTH, truth.TRUTH_HISTORY],
    )
    return {**counts, "per_survey": per_survey, "wall_s": round(time.perf_counter() - t0, 2)}


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth_cmd(
        out: str = typer.Argument(..., help="archive output: path or s3://bucket/prefix"),
        individuals: int = typer.Option(50, help="initial population"),
        years: int = typer.Option(3, help="number of yearly surveys"),
        images_per_individual: float = typer.Option(8.0, help="mean images per seen individual per survey"),
        image_size: int = typer.Option(128, help="frame size in pixels (some frames are bigger)"),
        seed: int = typer.Option(0, help="same seed, same bytes"),
        unlabeled_fraction: float = typer.Option(0.1, help="fraction of images with no individual_id"),
        species: str = typer.Option("synthetic-cat", help="species name written to every row"),
        first_year: int = typer.Option(2021, help="year of the first survey"),
    ):
        """Generate a synthetic camera-trap survey archive, with ground truth in OUT/_truth*.parquet."""
        cfg = parse_config(
            JOB,
            SynthJobConfig,
            out=out,
            individuals=individuals,
            years=years,
            images_per_individual=images_per_individual,
            image_size=image_size,
            seed=seed,
            unlabeled_fraction=unlabeled_fraction,
            species=species,
            first_year=first_year,
        )
        summary = run(cfg)
        print_summary(JOB, summary)
        table = "  ".join(
            f"{s}: {v['alive']} alive, {v['seen']} seen, {v['images']} images"
            for s, v in summary["per_survey"].items()
        )
        typer.echo(table)
        typer.echo(f"ground truth: {storage.join(out, truth.TRUTH)}")


__all__ = ["JOB", "ReidError", "SynthJobConfig", "register", "run"]
