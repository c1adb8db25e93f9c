"""The job registry: every job says once what it is, and the CLI, `reid submit` and `reid pipeline`
read it from here.

A job module ends with ``add_job(Job(...))``: its command name, its config class (a pydantic
model whose fields carry every default, bound and description), its ``run(config) -> summary``,
which fields are positional arguments, and which fields are *runtime* settings (how the job runs:
workers, CPUs, a Ray address) rather than *identity* (what it produces). Inputs and outputs are
the config's location-typed fields (:mod:`reid.settings`), so they are declared once, in the type.

The command line is built from the config class (:mod:`jobs.options`): one option per field, named
after it (``batch_size`` -> ``--batch-size``, booleans ``--x/--no-x``), its help the field's
description, its shown default the field's default; the CLI passes on only what the user typed and
pydantic fills in the rest. One rule for locations: inputs positional, outputs ``--out``. A job may
respell a field (:class:`Flag`) or keep an older spelling working as a hidden :class:`Alias`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from reid.errors import ConfigError, ReidError
from reid.settings import location_fields

__all__ = [
    "MODULES",
    "Alias",
    "Flag",
    "Job",
    "get",
    "jobs",
    "key_values",
    "add_job",
]

# Modules that register jobs or commands, in the order of `reid --help`. A module with a
# ``register(app)`` function adds its own commands (serve, submit); the others call add_job(Job).
MODULES = [
    "jobs.synth",
    "jobs.ingest",
    "jobs.split",
    "jobs.train",
    "jobs.embed",
    "jobs.keypoints",
    "jobs.index",
    "jobs.match",
    "jobs.evaluate",
    "jobs.export",
    "jobs.serve",
    "jobs.submit",
    "jobs.pipeline",
]

# Runtime settings most jobs share: where Ray is, how big an embedded one is, redo everything.
RAY = ("address", "num_cpus")


@dataclass(frozen=True)
class Flag:
    """How one field is spelled on the command line, when the rule does not fit."""

    decls: tuple[str, ...] = ()  # option names, e.g. ("--loss-param",), ("--a/--no-a",)
    cli_type: Any = None  # the CLI's type when it differs from the field's (list[str] for a dict)
    parse: Callable[[Any], Any] | None = None  # CLI value -> field value
    hidden: bool = False  # a config field with no option (set in files or by code only)


@dataclass(frozen=True)
class Alias:
    """An older spelling kept working, hidden from help: ``name`` on the CLI sets ``field``."""

    name: str  # parameter name; the option is --name (or a positional argument)
    field: str
    positional: bool = False
    cli_type: Any = str
    value: Callable[[Any], Any] = lambda v: v


@dataclass(frozen=True)
class Job:
    """One job, as the CLI, `reid submit` and `reid pipeline` see it."""

    name: str
    config: type[BaseModel]
    run: Callable[[Any], dict]
    help: str
    args: tuple[str, ...] = ()  # fields given as positional arguments, in order
    runtime: frozenset[str] = frozenset()  # how it runs, not what it produces
    flags: Mapping[str, Flag] = field(default_factory=dict)
    aliases: tuple[Alias, ...] = ()
    show: Callable[[Any, dict], None] | None = None  # prints the summary (default: the table)
    settings_file: Callable[[str], dict] | None = None  # --config FILE: values under the options
    other_names: tuple[str, ...] = ()  # hidden command names that run the same job
    writes: bool = True  # False for a job whose steps write (pipeline): no Output field of its own

    def __post_init__(self) -> None:
        fields = set(self.config.model_fields)
        named = set(self.args) | set(self.runtime) | set(self.flags) | {a.field for a in self.aliases}
        unknown = sorted(named - fields)
        if unknown:
            raise TypeError(f"job {self.name}: {self.config.__name__} has no field(s) {', '.join(unknown)}")
        if self.writes and not self.outputs:
            raise TypeError(f"job {self.name}: {self.config.__name__} has no Output field")

    @property
    def module(self) -> str:
        """The module that defines the job (its ``run``)."""
        return self.run.__module__

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(k for k, loc in location_fields(self.config).items() if loc.role == "input")

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(k for k, loc in location_fields(self.config).items() if loc.role == "output")

    def identity(self, values: dict) -> dict:
        """A config's values without its runtime settings: what the output depends on."""
        return {k: v for k, v in values.items() if k not in self.runtime}


_JOBS: dict[str, Job] = {}


def add_job(job: Job) -> Job:
    """Add a job (called once, at the end of its module); two modules cannot share a name."""
    known = _JOBS.get(job.name)
    if known is not None and known.module != job.module:
        raise TypeError(f"job {job.name}: registered by {known.module} and by {job.module}")
    _JOBS[job.name] = job
    return job


def _load() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise  # a job not built yet is skipped; tests/test_cli.py checks every listed module imports


def jobs() -> dict[str, Job]:
    """Every registered job by name (every module in MODULES imported first)."""
    _load()
    return dict(_JOBS)


def get(name: str) -> Job:
    """The job named ``name``; an unknown name is one line listing the jobs."""
    found = jobs().get(name)
    if found is None:
        raise ReidError(f"reid {name}: not a job that can be submitted; jobs: {', '.join(_JOBS)}")
    return found


# --------------------------------------------------------------------------------------------
# Parsers a Flag may use


def key_values(option: str) -> Callable[[list[str] | None], dict | None]:
    """A parser for a repeatable ``NAME=VALUE`` option (values as JSON when they parse)."""
    import json

    def parse(items: list[str] | None) -> dict | None:
        out: dict = {}
        for item in items or []:
            if "=" not in item:
                raise ConfigError(f"{option} {item!r}: expected NAME=VALUE, e.g. margin=0.2")
            k, v = item.split("=", 1)
            try:
                out[k.strip()] = json.loads(v)
            except ValueError:
                out[k.strip()] = v
        return out or None

    return parse
