"""Small pieces every job shares: the config base and location types (:mod:`reid.settings`),
location checks before any work, one-line option errors, the closing summary table. Progress is
:mod:`reid.progress`; Ray wiring more than one job uses is in :mod:`cluster` (``runtime.ray_get``,
``search.knn``)."""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from reid import storage
from reid.errors import ConfigError
from reid.progress import LineProgress, follow_epochs, progress  # noqa: F401 - re-exported for the jobs
from reid.settings import (  # noqa: F401 - re-exported for the jobs
    Input,
    InputOrName,
    Loc,
    LocalPath,
    Output,
    OutputFile,
    Settings,
    location_fields,
    locations,
    paths_as_given,
)

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


def print_summary_and_rejects(job: str, out: str, summary: dict) -> None:
    """The closing summary, then where the rejected images are listed (``total_rejects`` > 0)."""
    from reid.archive import REJECTS

    print_summary(job, summary)
    if summary.get("total_rejects"):
        print(f"{summary['total_rejects']} image(s) rejected: see {storage.join(out, REJECTS)}")


# --------------------------------------------------------------------------------------------
# Job configs: locations resolved in the driver, finite numbers, checks before any work

# Config base and location field types: reid.settings (re-exported here for the jobs).
JobConfig = Settings


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


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_config(job: str, cls: type[ConfigT], **values: Any) -> ConfigT:
    """A job's config from its command's options; a validation error becomes one line
    (:func:`options_error`), so every command builds and reports its options the same way."""
    try:
        return cls(**values)
    except ValueError as e:
        raise options_error(job, e, cls) from e


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


def one_line(message: str) -> str:
    """A multi-line error (pydantic's) as one line, without its links and error-type tags."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines if not ln.startswith("For further information"))
    return re.sub(r" \[type=[^\]]*\]", "", text)
