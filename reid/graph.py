"""A pipeline file as a graph of steps: TOML or YAML tables (one per step, plus ``[vars]``),
``--set`` overrides, ``${var}`` and ``${step.field}`` references, and the run order they imply.
Nothing here knows the jobs: ``jobs/pipeline.py`` turns each step's fields into its job's config."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from reid import storage
from reid.errors import ConfigError

__all__ = [
    "REF",
    "Vars",
    "apply_overrides",
    "dependency_order",
    "literal",
    "read_graph",
    "refs",
    "substitute",
]

REF = re.compile(r"\$\{([A-Za-z_][\w-]*)(?:\.([A-Za-z_]\w*))?\}")
# lookup(name, attr or None, where) -> the referenced value
Lookup = Callable[[str, "str | None", str], Any]


def _one_line(message: str) -> str:
    return " ".join(ln.strip() for ln in message.splitlines() if ln.strip())


def read_graph(uri: str) -> dict:
    """The file's tables: steps and ``[vars]`` (a parse error is one line naming the file)."""
    text = storage.read_text(uri)
    try:
        if uri.endswith((".yaml", ".yml")):
            data = yaml.safe_load(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        raise ConfigError(f"{uri}: cannot parse: {_one_line(str(e))}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: expected tables of steps (and [vars])")
    return data


def literal(text: str) -> Any:
    """A --set value: JSON when it parses as JSON (numbers, lists, true), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(data: dict, overrides: list[str], uri: str) -> None:
    """``--set`` values into the file's tables: ``VAR=VALUE`` ([vars]) or ``STEP.FIELD=VALUE``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected VAR=VALUE or STEP.FIELD=VALUE")
        key, value = item.split("=", 1)
        if "." in key:
            step, name = key.split(".", 1)
            if not isinstance(data.get(step), dict) or step == "vars":
                raise ConfigError(f"--set {item!r}: {uri} has no step [{step}]")
            data[step][name] = literal(value)
        else:
            data.setdefault("vars", {})[key] = literal(value)


def substitute(value: Any, lookup: Lookup, where: str) -> Any:
    """Replace ``${...}`` references in a value (strings inside lists too)."""
    if isinstance(value, list):
        return [substitute(v, lookup, where) for v in value]
    if not isinstance(value, str):
        return value
    whole = REF.fullmatch(value)
    if whole:  # the value is one reference: keep the referenced value's type (a list, a number)
        return lookup(whole.group(1), whole.group(2), where)
    return REF.sub(lambda m: str(lookup(m.group(1), m.group(2), where)), value)


def refs(value: Any) -> set[str]:
    """The steps a value refers to (``${step.field}``)."""
    if isinstance(value, list):
        return set().union(*(refs(v) for v in value)) if value else set()
    return {m.group(1) for m in REF.finditer(value) if m.group(2)} if isinstance(value, str) else set()


def dependency_order(fields: dict[str, dict], uri: str) -> list[tuple[str, list[str]]]:
    """Steps (name -> fields) in dependency order, each with the steps it depends on (file order
    among independent steps); refuses references to missing steps and cycles."""
    deps_of = {}
    for name, values in fields.items():
        deps = set().union(*(refs(v) for v in values.values())) if values else set()
        for dep in sorted(deps - set(fields)):
            raise ConfigError(
                f"{uri}: step [{name}] refers to ${{{dep}.FIELD}}, but there is no step [{dep}]"
            )
        deps_of[name] = [d for d in fields if d in deps]
    done: list[str] = []
    pending = list(fields)
    while pending:
        ready = [n for n in pending if all(d in done for d in deps_of[n])]
        if not ready:
            raise ConfigError(f"{uri}: steps depend on each other in a cycle: {', '.join(pending)}")
        done.append(ready[0])
        pending.remove(ready[0])
    return [(n, deps_of[n]) for n in done]


class Vars:
    """``[vars]`` values, resolved on first use (they may refer to each other, not to steps)."""

    def __init__(self, raw: dict, steps: list[str], uri: str) -> None:
        self.raw, self.steps, self.uri = raw, steps, uri
        self.values: dict[str, Any] = {}
        self.resolving: list[str] = []

    def __call__(self, name: str, attr: str | None, where: str) -> Any:
        uri = self.uri
        if attr is not None:
            raise ConfigError(f"{uri}: {where} uses ${{{name}.{attr}}}: [vars] cannot refer to steps")
        if name in self.values:
            return self.values[name]
        if name not in self.raw:
            hint = f" (a step? write ${{{name}.out}})" if name in self.steps else ""
            raise ConfigError(f"{uri}: {where} uses ${{{name}}}, which [vars] does not define{hint}")
        if name in self.resolving:
            raise ConfigError(f"{uri}: [vars] refer to each other in a cycle: {' -> '.join(self.resolving)}")
        self.resolving.append(name)
        self.values[name] = substitute(self.raw[name], self, f"[vars] {name}")
        self.resolving.pop()
        return self.values[name]
