"""The job registry: every job says once what it is, and the CLI, `reid submit` and `reid pipeline`
read it from here.

A job module ends with ``add_job(Job(...))``: its command name, its config class (a pydantic
model whose fields carry every default, bound and description), its ``run(config) -> summary``,
which fields are positional arguments, and which fields are *runtime* settings (how the job runs:
workers, CPUs, a Ray address) rather than *identity* (what it produces). Inputs and outputs are
the config's location-typed fields (:mod:`reid.settings`), so they are declared once, in the type.

The command line is built from the config class (:func:`command`): one option per field, named
after it (``batch_size`` -> ``--batch-size``, booleans ``--x/--no-x``), its help the field's
description, its shown default the field's default; the CLI passes on only what the user typed and
pydantic fills in the rest. One rule for locations: inputs positional, outputs ``--out``. A job may
respell a field (:class:`Flag`) or keep an older spelling working as a hidden :class:`Alias`.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from reid.errors import ConfigError, ReidError
from reid.settings import location_fields

__all__ = [
    "MODULES",
    "Alias",
    "Flag",
    "Job",
    "cli_options",
    "command",
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

    def __post_init__(self) -> None:
        fields = set(self.config.model_fields)
        named = set(self.args) | set(self.runtime) | set(self.flags) | {a.field for a in self.aliases}
        unknown = sorted(named - fields)
        if unknown:
            raise TypeError(f"job {self.name}: {self.config.__name__} has no field(s) {', '.join(unknown)}")
        if not self.outputs and self.name != "pipeline":
            raise TypeError(f"job {self.name}: {self.config.__name__} has no Output field")

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
    """Add a job (called once, at the end of its module)."""
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
    """Every registered job by name, in the order of MODULES."""
    _load()
    return dict(_JOBS)


def get(name: str) -> Job:
    """The job named ``name``; an unknown name is one line listing the jobs."""
    found = jobs().get(name)
    if found is None:
        raise ReidError(f"reid {name}: not a job that can be submitted; jobs: {', '.join(_JOBS)}")
    return found


# --------------------------------------------------------------------------------------------
# The command line of a job, from its config class


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


def _base(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """The CLI type of a field annotation (Annotated and Optional removed), and Literal choices."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _base(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _base(args[0]) if len(args) == 1 else (str, ())
    if origin is Literal:
        return str, tuple(str(a) for a in get_args(annotation))
    if origin is list:
        inner, _ = _base(get_args(annotation)[0])
        return list[inner], ()
    if annotation in (int, float, bool, str):
        return annotation, ()
    return str, ()


@dataclass(frozen=True)
class CliOption:
    """One parameter of a job's command: the field it sets and how it is shown."""

    field: str
    decls: tuple[str, ...]  # empty for a positional argument
    cli_type: Any
    help: str
    default: Any  # the field's default (PydanticUndefined when required)
    required: bool
    positional: bool


def _shown(value: Any) -> str | bool:
    if value is None or value is PydanticUndefined or value in ([], {}):
        return False
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def cli_options(job: Job) -> dict[str, CliOption]:
    """The parameters of a job's command by field: one per config field not hidden."""
    out = {}
    aliased = {a.field for a in job.aliases}
    for name, info in job.config.model_fields.items():
        flag = job.flags.get(name, Flag())
        if flag.hidden:
            continue
        cli_type, choices = _base(info.annotation)
        cli_type = flag.cli_type or cli_type
        default = PydanticUndefined if info.is_required() else info.get_default(call_default_factory=True)
        text = info.description or ""
        if choices:
            text = f"{text} ({' | '.join(choices)})" if text else " | ".join(choices)
        positional = name in job.args
        decls = flag.decls
        if not positional and not decls:
            dashed = "--" + name.replace("_", "-")
            decls = (f"{dashed}/--no-{name.replace('_', '-')}",) if cli_type is bool else (dashed,)
        required = info.is_required() and name not in aliased
        out[name] = CliOption(
            name, () if positional else decls, cli_type, text, default, required, positional
        )
    return out


def _parameter(opt: CliOption) -> inspect.Parameter:
    shown = _shown(opt.default)
    if opt.positional:
        metavar = opt.field.upper() + ("..." if get_origin(opt.cli_type) is list else "")
        info = typer.Argument(
            ... if opt.required else None, metavar=metavar, help=opt.help, show_default=shown
        )
    else:
        info = typer.Option(... if opt.required else None, *opt.decls, help=opt.help, show_default=shown)
    annotation = opt.cli_type if opt.required else opt.cli_type | None
    return inspect.Parameter(opt.field, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _alias_parameter(alias: Alias) -> inspect.Parameter:
    name = f"alias_{alias.name}"
    if alias.positional:
        info = typer.Argument(None, metavar=alias.name.upper(), hidden=True)
    elif alias.cli_type is bool:
        info = typer.Option(None, "--" + alias.name.replace("_", "-"), hidden=True)
    else:
        info = typer.Option(None, "--" + alias.name.replace("_", "-"), hidden=True)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=alias.cli_type | None
    )


SETTINGS_FILE = "settings_file_"


def config_from_cli(job: Job, given: dict[str, Any]) -> BaseModel:
    """The job's config from its command's parameters (None = not typed: the field's default)."""
    from jobs.common import parse_config

    values: dict[str, Any] = {}
    for name, value in given.items():
        if name == SETTINGS_FILE or name.startswith("alias_") or value is None or value in ([], ()):
            continue
        parse = job.flags.get(name, Flag()).parse
        value = parse(list(value) if isinstance(value, tuple) else value) if parse else value
        if value is not None:
            values[name] = list(value) if isinstance(value, tuple) else value
    for alias in job.aliases:
        value = given.get(f"alias_{alias.name}")
        if value is not None and alias.field not in values:
            values[alias.field] = alias.value(value)
    if job.settings_file and given.get(SETTINGS_FILE):
        values = {**job.settings_file(given[SETTINGS_FILE]), **values}
    return parse_config(job.name, job.config, **values)


def command(job: Job, action: Callable[[BaseModel], None]) -> Callable[..., None]:
    """The job's command as a function Typer reads (its signature lists the parameters); it builds
    the config from what was typed and hands it to ``action`` (run it, or capture it to submit)."""
    params = [_parameter(opt) for opt in cli_options(job).values()]
    params += [_alias_parameter(a) for a in job.aliases]
    if job.settings_file:
        info = typer.Option(None, "--config", help="TOML/YAML file of settings (options override it)")
        params.append(
            inspect.Parameter(
                SETTINGS_FILE, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=str | None
            )
        )
    # Typer lists arguments in signature order: positional ones first, in the job's order.
    order = {name: i for i, name in enumerate(job.args)}
    params.sort(
        key=lambda p: (
            order.get(p.name, len(order))
            if isinstance(p.default, typer.models.ArgumentInfo)
            else len(order) + 1
        )
    )

    def cmd(**given: Any) -> None:
        action(config_from_cli(job, given))

    cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cmd.__doc__ = job.help
    cmd.__name__ = f"{job.name}_cmd"
    return cmd


def add_commands(app: typer.Typer, job: Job) -> None:
    """``reid NAME``: run the job, print its summary."""
    from jobs.common import print_summary

    def run_and_show(cfg: BaseModel) -> None:
        summary = job.run(cfg)
        if job.show is not None:
            job.show(cfg, summary)
        else:
            print_summary(job.name, summary)

    fn = command(job, run_and_show)
    app.command(job.name, help=job.help)(fn)
    for other in job.other_names:
        app.command(other, hidden=True, help=f"Same as `reid {job.name}`.")(fn)
