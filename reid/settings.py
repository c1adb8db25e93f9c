"""Typed settings: the base of every job's config and the field types that name locations.

A config field typed :data:`Input`, :data:`Output`, :data:`OutputFile` or :data:`InputOrName`
names a place the job reads or writes; :func:`location_fields` finds them, so location checks,
``reid submit``'s input fingerprints and the CLI's argument rules come from the class itself.
Local paths become absolute at validation, in the driver, so a Ray worker running in another
working directory (Ray Train's trial folder) finds the same file.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict

from reid import storage

__all__ = [
    "Input",
    "InputOrName",
    "LocalPath",
    "Loc",
    "Output",
    "OutputFile",
    "Settings",
    "location_fields",
    "locations",
    "paths_as_given",
]

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


Input = Annotated[str, AfterValidator(_absolute), Loc("input")]
Output = Annotated[str, AfterValidator(_absolute), Loc("output")]
OutputFile = Annotated[str, AfterValidator(_absolute), Loc("output", "file")]
InputOrName = Annotated[str, AfterValidator(_absolute_if_path), Loc("input")]  # path, or 'timm:...'
LocalPath = Annotated[str, AfterValidator(_absolute)]  # a local folder that is neither (a cache)


class Settings(BaseModel):
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
