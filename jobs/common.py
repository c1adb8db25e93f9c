"""Small pieces every job shares: the config base (finite numbers, absolute paths, location
checks, one-line option errors), the closing summary table and the progress bar."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from reid import storage
from reid.errors import ConfigError

console = Console(stderr=True)


def print_summary(job: str, summary: dict) -> None:
    """The closing summary of a job, one row per figure."""
    table = Table(title=f"reid {job}", show_header=False, title_justify="left")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            continue
        table.add_row(str(key), str(value))
    console.print(table)


def progress(items: Iterable, total: int | None = None, desc: str = "", unit: str = "img"):
    """A progress bar on stderr (silent when stderr is not a terminal and REID_PROGRESS unset)."""
    return tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None,
    )


# --------------------------------------------------------------------------------------------
# Job configs: locations resolved in the driver, finite numbers, checks before any work

# `reid submit` parses a job's options on this machine for a run on a cluster: there a relative
# path means nothing, so it is kept as given (and refused by name) rather than resolved here.
_RESOLVE = contextvars.ContextVar("reid_resolve_paths", default=True)


@contextlib.contextmanager
def paths_as_given() -> Iterator[None]:
    """Configs built inside keep local paths as typed (``reid submit`` refuses relative ones)."""
    token = _RESOLVE.set(False)
    try:
        yield
    finally:
        _RESOLVE.reset(token)


def _absolute(value: str) -> str:
    return storage.absolute(value) if _RESOLVE.get() else value


def _absolute_if_path(value: str) -> str:
    return storage.absolute_if_path(value) if _RESOLVE.get() else value


@dataclass(frozen=True)
class Loc:
    """Marks a config field as a location: ``role`` input or output, ``kind`` folder or file."""

    role: str
    kind: str = "folder"


# Field types of job configs. Local paths become absolute at validation, in the driver, so a Ray
# worker running in another working directory (Ray Train's trial folder) finds the same file.
Input = Annotated[str, AfterValidator(_absolute), Loc("input")]
Output = Annotated[str, AfterValidator(_absolute), Loc("output")]
OutputFile = Annotated[str, AfterValidator(_absolute), Loc("output", "file")]
InputOrName = Annotated[str, AfterValidator(_absolute_if_path), Loc("input")]  # path, or 'timm:...'
LocalPath = Annotated[str, AfterValidator(_absolute)]  # a local folder that is neither (a cache)


class JobConfig(BaseModel):
    """Base of every job's config: non-finite numbers (``nan``, ``inf``) are refused everywhere."""

    model_config = ConfigDict(allow_inf_nan=False)


def _markers(annotation: Any) -> list[Loc]:
    found: list[Loc] = []
    if get_origin(annotation) is Annotated:
        args = get_args(annotation)
        found += [a for a in args[1:] if isinstance(a, Loc)]
        annotation = args[0]
    for arg in get_args(annotation):
        found += _markers(arg)
    return found


def location_fields(cls: type[BaseModel]) -> dict[str, Loc]:
    """The fields of a config class that name locations, with their role and kind."""
    out = {}
    for name, field in cls.model_fields.items():
        marks = [m for m in field.metadata if isinstance(m, Loc)] + _markers(field.annotation)
        if marks:
            out[name] = marks[0]
    return out


def locations(cfg: BaseModel) -> list[tuple[str, Loc, str]]:
    """(field, marker, value) of every location set in ``cfg`` (lists give one entry per value)."""
    out = []
    for name, loc in location_fields(type(cfg)).items():
        value = getattr(cfg, name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str) and v:
                out.append((name, loc, v))
    return out


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_locations(cfg: BaseModel) -> None:
    """Every location of a config checked before any work, each refusal one line naming it:
    outputs that cannot be written (an existing file, a missing bucket), S3 inputs whose bucket,
    endpoint or credentials do not answer (short timeouts). Also sweeps a killed run's temp files."""
    for name, loc, value in locations(cfg):
        label = option_name(name) if loc.role == "output" else name
        if loc.role == "output":
            storage.check_output(value, label, loc.kind)
        elif not storage.is_name(value):
            storage.check_input(value, label)
    for _name, loc, value in locations(cfg):
        if loc.role == "output" and loc.kind == "folder":
            storage.sweep_temp(value)


# --------------------------------------------------------------------------------------------
# One-line option errors


def allowed_range(cls: type[BaseModel] | None, field: str) -> str:
    """A field's bounds in words (``1 to 1000``, ``> 0``, ``>= 0 and < 1``), or '' when unbounded."""
    if cls is None or field not in cls.model_fields:
        return ""
    lo = hi = ""
    for m in cls.model_fields[field].metadata:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                lo = f"{sign} {getattr(m, attr)}"
        for attr, sign in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                hi = f"{sign} {getattr(m, attr)}"
    if lo.startswith(">=") and hi.startswith("<="):
        return f"{lo[3:]} to {hi[3:]}"
    return " and ".join(x for x in (lo, hi) if x)


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def options_error(
    job: str, e: ValueError, cls: type[BaseModel] | None = None, as_fields: bool = False
) -> ConfigError:
    """A config's validation error as one line: the option, the value, what is allowed.

    e.g. ``reid match --k 0: out of range (allowed: 1 to 1000)``; several errors are joined by ``;``.
    Every job's command uses it, so every option error reads the same; ``as_fields`` names the
    settings as a pipeline file spells them (``batch_size``) rather than as options.
    """
    if not isinstance(e, ValidationError):
        return ConfigError(f"reid {job}: " + " ".join(str(e).split()))
    parts = []
    for err in e.errors(include_url=False):
        loc = [str(x) for x in err.get("loc", ()) if not isinstance(x, int)]
        kind = err.get("type", "")
        msg = str(err.get("msg", kind)).removeprefix("Value error, ")
        if not loc:  # a check across options (model validator): its own words
            parts.append(msg)
            continue
        value = err.get("input")
        shown = "" if isinstance(value, dict) or kind == "missing" else f" {_show(value)}"
        if kind == "finite_number":
            what = "not a finite number; give a number (nan and inf are refused)"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bounds = allowed_range(cls, loc[0]) or msg.removeprefix("Input should be ")
            what = f"out of range (allowed: {bounds})"
        else:
            what = msg[:1].lower() + msg[1:]
        name = ".".join(loc) if as_fields else option_name(".".join(loc))
        parts.append(f"{name}{shown}: {what}")
    return ConfigError(f"reid {job}: " + "; ".join(parts))


def make(job: str, cls: type[BaseModel], **values: Any) -> Any:
    """``cls(**values)``, a validation error turned into :func:`options_error`'s one line."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise options_error(job, e, cls) from None
