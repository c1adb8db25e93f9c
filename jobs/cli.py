"""The ``reid`` command line: one sub-command per registered job (:mod:`jobs.registry`), plus the
modules that add their own commands (serve, submit). User errors print one line, exit 2."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from jobs import registry
from jobs.options import add_commands
from reid.errors import ReidError

app = typer.Typer(
    help="Wildlife re-identification at archive scale: ingest, train, embed, index, match, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Wildlife re-identification at archive scale."""


# The modules behind the commands, in the order of `reid --help` (tests/test_cli.py imports each).
JOB_MODULES = registry.MODULES


def _register_all() -> None:
    jobs = registry.jobs()
    for name in JOB_MODULES:
        module = sys.modules.get(name) or _import(name)
        if module is None:
            continue
        if hasattr(module, "register"):  # a module with commands of its own (serve, submit)
            module.register(app)
        for job in jobs.values():
            if job.module == name:
                add_commands(app, job)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:  # a job not built yet
            return None
        raise


def _config_class(title: str) -> type | None:
    """The job config class a pydantic error is about (by its name), to state allowed ranges."""
    return next((j.config for j in registry.jobs().values() if j.config.__name__ == title), None)


def user_message(e: BaseException, argv: list[str]) -> str:
    """One line for a user error: a job's own words, or its options' validation error, reworded."""
    from pydantic import ValidationError

    from jobs.common import options_error

    job = next((a for a in argv if not a.startswith("-")), "")
    cause = e if isinstance(e, ValidationError) else e.__cause__
    if isinstance(cause, ValidationError):
        return str(options_error(job, cause, _config_class(cause.title)))
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if isinstance(e, OSError) and not isinstance(e, ReidError):
        text = f"{type(e).__name__}: {text or e!r} (set REID_DEBUG=1 for the traceback)"
    return text


def main(argv: list[str] | None = None) -> None:
    """Run a ``reid`` command. User errors (bad options, inputs, storage settings) print one line
    ``error: ...`` and exit 2, with no traceback; REID_DEBUG=1 shows the traceback instead."""
    from pydantic import ValidationError

    _register_all()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=argv, standalone_mode=True)
    except (ReidError, ValidationError, OSError) as e:
        if os.environ.get("REID_DEBUG"):
            raise
        typer.secho(f"error: {user_message(e, args)}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
