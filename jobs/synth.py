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
    print_summary,
)
from jobs.registry import Alias, Job, add_job
from reid import archive, manifest, storage
from reid.errors import ConfigError, ReidError
from reid.progress import progress
from reid.synthetic import scenes, survey, truth

JOB = "synth"


_DEFAULT = survey.SynthConfig()  # the generator's defaults: written once, in reid.synthetic.survey


class SynthJobConfig(JobConfig):
    """The generator's options a user sets (bounds and help here, defaults from the generator)."""

    out: Output = Field(description="archive location: a path or s3://bucket/prefix")
    individuals: int = Field(_DEFAULT.individuals, ge=1, description="initial population")
    years: int = Field(_DEFAULT.years, ge=1, le=100, description="yearly surveys, from first_year on")
    images_per_individual: float = Field(
        _DEFAULT.images_per_individual, ge=1, description="mean images per seen individual per survey"
    )
    image_size: int = Field(
        _DEFAULT.image_size, ge=32, le=1024, description="frame size in pixels (some frames are bigger)"
    )
    seed: int = Field(_DEFAULT.seed, ge=0, description="same seed, same bytes")
    unlabeled_fraction: float = Field(
        _DEFAULT.unlabeled_fraction, ge=0, lt=1, description="fraction of images with no individual_id"
    )
    species: str = Field(_DEFAULT.species, description="species name written to every row")
    first_year: int = Field(_DEFAULT.first_year, ge=1900, le=2200, description="year of the first survey")

    def generator(self) -> survey.SynthConfig:
        return survey.SynthConfig(**self.model_dump(exclude={"out"}))


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


def _show(cfg: SynthJobConfig, summary: dict) -> None:
    print_summary(JOB, summary)
    table = "  ".join(
        f"{s}: {v['alive']} alive, {v['seen']} seen, {v['images']} images"
        for s, v in summary["per_survey"].items()
    )
    typer.echo(table)
    typer.echo(f"ground truth: {storage.join(cfg.out, truth.TRUTH)}")


add_job(
    Job(
        name=JOB,
        config=SynthJobConfig,
        run=run,
        help="Generate a synthetic camera-trap survey archive, with ground truth in OUT/_truth*.parquet.",
        aliases=(Alias("out", "out", positional=True),),  # `reid synth OUT`, as before
        show=_show,
    )
)


__all__ = ["JOB", "ReidError", "SynthJobConfig", "run"]
