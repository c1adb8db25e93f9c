"""A job's command line, built from its registry entry and config class (:mod:`jobs.registry`).

Each config field is one parameter: positional when the job lists it in ``args`` (its inputs),
else an option named after the field. The parameter's default is None ("not typed"): the value
comes from the config class, whose default the help shows, so a default is written once. The same
command parses `reid JOB ...` (action: run and print) and `reid submit JOB ...` (action: keep the
config for the submission).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from jobs.registry import Alias, Flag, Job
from reid.errors import ConfigError

__all__ = [
    "SETTINGS_FILE",
    "CliOption",
    "add_commands",
    "cli_options",
    "command",
    "config_from_cli",
    "shown_default",
]


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


def shown_default(value: Any) -> str | bool:
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
    shown = shown_default(opt.default)
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
        if value is None:
            continue
        if alias.field in values and values[alias.field] != alias.value(value):
            option = "--" + alias.field.replace("_", "-")
            raise ConfigError(
                f"reid {job.name}: {option} is given twice ({values[alias.field]!r} and {value!r}); give it once"
            )
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
