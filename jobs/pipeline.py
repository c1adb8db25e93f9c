"""`reid pipeline PIPELINE.toml`: ingest/train/embed/index/match/evaluate as one job graph.

Each table of the file is a step: a job (the table's name, or ``job = "..."``) and its config
fields. ``${name}`` takes a value from ``[vars]``; ``${step.field}`` takes another step's field and
makes that step run first. A step is skipped when its output is committed and current: its
``_manifest.json`` exists, records the same config (the job's runtime settings, such as workers,
CPUs or actors, aside: each job declares them in :mod:`jobs.registry`), and its inputs still carry
the manifests it was built from. Reading the file (vars, references, order) is :mod:`reid.graph`. So "reprocess the archive with
model v2 and rebuild the population index" is one command::

    reid pipeline survey.toml --set model=s3://bucket/models/v2 --set tag=v2

The steps run in this process (each on Ray as usual); to run the whole graph on a cluster, submit
it like any job: ``reid submit pipeline s3://bucket/survey.toml --address http://HEAD:8265``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from jobs import registry
from jobs.common import Input, JobConfig, console, options_error, print_summary
from jobs.registry import RAY, Flag, Job, add_job
from reid import graph, manifest
from reid.errors import ConfigError, ReidError

JOB = "pipeline"


class PipelineConfig(JobConfig):
    file: Input = Field(description="pipeline file (TOML or YAML): a path or s3:// URI")
    set: list[str] = Field(default_factory=list, description="overrides: VAR=VALUE or STEP.FIELD=VALUE")
    force: list[str] = Field(default_factory=list, description="steps to run even when current")
    plan: bool = Field(False, description="say what would run and why; run nothing")
    address: str | None = Field(None, description="Ray cluster for the steps (default: RAY_ADDRESS/local)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray")


@dataclass
class Step:
    name: str
    job: str
    fields: dict[str, Any]
    entry: Job | None = None
    config: BaseModel | None = None
    deps: list[str] = field(default_factory=list)

    @property
    def out(self) -> str | None:
        names = self.entry.outputs
        return getattr(self.config, names[0]) if names else None


# --------------------------------------------------------------------------------------------
# Loading: file -> vars and steps -> resolved configs in dependency order


def load(cfg: PipelineConfig) -> list[Step]:
    """Read the pipeline, resolve references and configs; returns the steps in run order."""
    data = graph.read_graph(cfg.file)
    graph.apply_overrides(data, cfg.set, cfg.file)
    raw_vars = data.pop("vars", {}) or {}
    steps = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{cfg.file}: `{name}` is not a step table ([{name}] with the job's fields)")
        fields = dict(table)
        job = fields.pop("job", name)
        steps[name] = Step(name=name, job=str(job), fields=fields)
    for name in cfg.force:
        if name not in steps:
            raise ConfigError(f"--force {name}: {cfg.file} has no step [{name}] (steps: {', '.join(steps)})")
    if not steps:
        raise ConfigError(f"{cfg.file}: no steps")
    var = graph.Vars(raw_vars, list(steps), cfg.file)

    def lookup(name: str, attr: str | None, where: str) -> Any:
        if attr is None:
            return var(name, None, where)
        values = steps[name].config.model_dump()  # steps run in order: this one is resolved already
        if attr not in values:
            raise ConfigError(
                f"{cfg.file}: {where} refers to ${{{name}.{attr}}}; reid {steps[name].job} has no {attr}"
            )
        return values[attr]

    order = []
    for name, deps in graph.dependency_order({n: st.fields for n, st in steps.items()}, cfg.file):
        step = steps[name]
        step.deps = deps
        order.append(step)
        step.entry = registry.get(step.job)
        cls = step.entry.config
        unknown = sorted(set(step.fields) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"{cfg.file}: step [{step.name}] ({step.job}): unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(cls.model_fields)}"
            )
        values = {k: graph.substitute(v, lookup, f"[{step.name}] {k}") for k, v in step.fields.items()}
        for key in ("address", "num_cpus"):
            if getattr(cfg, key) is not None and key in cls.model_fields and key not in values:
                values[key] = getattr(cfg, key)
        try:
            step.config = cls(**values)
        except ValidationError as e:
            why = str(options_error(step.job, e, cls, as_fields=True)).removeprefix(f"reid {step.job}: ")
            raise ConfigError(f"{cfg.file}: step [{step.name}] ({step.job}): {why}") from None
    return order


# --------------------------------------------------------------------------------------------
# Committed and current


def _comparable(config: dict, entry: Job) -> dict:
    """What an output depends on: the config without the job's runtime settings (jobs/registry.py)."""
    return entry.identity(json.loads(json.dumps(manifest.scrub(config), default=str)))


def staleness(step: Step) -> str | None:
    """Why ``step`` must run, or None when its output is committed and current."""
    out = step.out
    if out is None:
        return "no output to check"
    m = manifest.read_manifest(out)
    if m is None:
        return "no committed output"
    if m.get("job") != step.job:
        raise ReidError(
            f"step [{step.name}]: {out} holds the output of `reid {m.get('job')}`; choose another out"
        )
    now, then = (
        _comparable(step.config.model_dump(), step.entry),
        _comparable(m.get("config") or {}, step.entry),
    )
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if changed:
        return f"config changed: {', '.join(changed)}"
    for entry in m.get("inputs") or []:
        if "ended_at" not in entry:
            continue  # a source outside the pipeline (photo folder): not tracked
        current = manifest.read_manifest(entry["uri"])
        if current is None or current.get("ended_at") != entry["ended_at"]:
            return f"input {entry['uri']} changed"
    return None


# --------------------------------------------------------------------------------------------
# Running


def run(cfg: PipelineConfig) -> dict:
    """Run every step that is not committed and current, in dependency order; returns the summary."""
    t0 = time.perf_counter()
    steps = load(cfg)  # every step's config is validated before anything runs
    ran: set[str] = set()
    rows = []
    for step in steps:
        upstream = [d for d in step.deps if d in ran]
        reason = (
            "forced"
            if step.name in cfg.force
            else (f"after {', '.join(upstream)}" if upstream and cfg.plan else staleness(step))
        )
        row = {
            "step": step.name,
            "job": step.job,
            "out": step.out,
            "action": "skip",
            "reason": reason or "current",
        }
        rows.append(row)
        if reason is None:
            say(f"[pipeline] {step.name}: committed and current, skipped ({step.out})")
            continue
        row["action"] = "would run" if cfg.plan else "ran"
        ran.add(step.name)
        if cfg.plan:
            continue
        say(f"[pipeline] {step.name}: running reid {step.job} ({reason})")
        s0 = time.perf_counter()
        row["summary"] = _run_step(step, forced=step.name in cfg.force)
        row["wall_s"] = round(time.perf_counter() - s0, 2)
        print_summary(step.job, row["summary"])
    _print_plan(rows, cfg.file)
    return {
        "steps": len(rows),
        "ran": sum(r["action"] == "ran" for r in rows),
        "would_run": sum(r["action"] == "would run" for r in rows),
        "skipped": sum(r["action"] == "skip" for r in rows),
        "wall_s": round(time.perf_counter() - t0, 2),
        "detail": rows,
    }


def say(line: str) -> None:
    console.print(line, markup=False, highlight=False)


def _run_step(step: Step, forced: bool) -> dict:
    """Run one step; when the job declined to redo a stale output, run it again with force."""
    has_force = "force" in type(step.config).model_fields
    config = step.config.model_copy(update={"force": True}) if forced and has_force else step.config
    try:
        summary = step.entry.run(config)
        if not forced and step.out and staleness(step) is not None:
            if not has_force:
                raise ReidError(
                    f"reid {step.job} left {step.out} stale ({staleness(step)}); remove it and re-run"
                )
            say(f"[pipeline] {step.name}: the job kept its old output; running again with force")
            summary = step.entry.run(step.config.model_copy(update={"force": True}))
    except ReidError as e:
        raise type(e)(f"step [{step.name}] (reid {step.job}): {e}") from e
    return summary


def _print_plan(rows: list[dict], uri: str) -> None:
    from rich.table import Table

    table = Table(title=f"reid pipeline {uri}", title_justify="left")
    for col in ("step", "job", "action", "reason", "wall_s", "out"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["step"], r["job"], r["action"], r["reason"], str(r.get("wall_s", "")), str(r["out"] or "")
        )
    console.print(table)


add_job(
    Job(
        name=JOB,
        config=PipelineConfig,
        run=run,
        help="Run a pipeline of jobs, skipping steps whose outputs are committed and current.",
        args=("file",),
        runtime=frozenset({"plan", *RAY}),
        flags={"set": Flag(("--set",)), "force": Flag(("--force",))},
        other_names=("run",),
        writes=False,
    )
)
