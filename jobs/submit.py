"""`reid submit JOB ARGS... --address http://HEAD:8265` and `reid jobs list|status|logs|stop`.

Before anything reaches the cluster, the job's own command (built from :mod:`jobs.registry`)
parses ARGS into its config (the same validation as a local run), every input location is checked, and the submission id is derived
from (job, config, inputs). Then the job is submitted through the Ray Jobs API as
``python -m jobs.cli JOB ARGS...`` with a runtime_env carrying the code and the storage variables.
"""

from __future__ import annotations

import json

import typer
from pydantic import BaseModel

from cluster import dashboard
from cluster import submit as jobs_api
from cluster.submission import (
    check_locations,
    is_location,
    parse_env,
    parse_resources,
    quiet_client_logs,
)
from jobs import registry
from jobs.common import one_line, paths_as_given
from jobs.options import command
from jobs.registry import Job
from reid import storage
from reid.errors import ReidError
from reid.manifest import scrub

# --------------------------------------------------------------------------------------------
# A job's config, parsed here by its own command line


def parse_job_args(job: str, args: list[str]) -> tuple[Job, BaseModel]:
    """The job's registry entry and the config its command line builds from ``args``.

    The command is the one `reid JOB` runs (:func:`jobs.options.command`), so options validate
    exactly as in a local run; its action keeps the config instead of running the job.
    """
    entry = registry.get(job)
    captured: list[BaseModel] = []
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(job)(command(entry, captured.append))
    try:
        with paths_as_given():  # a relative path means nothing on the cluster: refused below, by name
            typer.main.get_command(app).main(args=list(args), prog_name=f"reid {job}", standalone_mode=False)
    except ReidError as e:  # the job's own validation: keep its words, on one line
        raise type(e)(one_line(str(e))) from None
    except (typer.Exit, typer.Abort):
        raise ReidError(f"reid {job}: nothing to submit") from None
    except typer.TyperException as e:  # usage errors: missing argument, unknown option, bad value
        raise ReidError(f"reid {job}: {e.format_message()}") from None
    if captured:
        return entry, captured[0]
    if "--help" in args:
        raise typer.Exit(0)  # the job's help was printed
    raise ReidError(f"reid {job}: nothing to submit")


# --------------------------------------------------------------------------------------------
# Inputs and outputs of a config


def locations(job: Job, config: BaseModel) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(inputs, outputs) of a config as (field, location) pairs, from the job's location fields."""
    values = config.model_dump()
    pairs = lambda names: [(k, v) for k in names for v in _as_list(values.get(k)) if is_location(v)]  # noqa: E731
    return pairs(job.inputs), pairs(job.outputs)


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def prepare(
    job: str,
    args: list[str],
    code: str = "workdir",
    env_vars: dict[str, str] | None = None,
    check_inputs: bool = True,
    python: str = "python",
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
) -> tuple[jobs_api.JobSpec, list[tuple[str, str]]]:
    """Validate a job's args and inputs and build its submission; returns (spec, local paths used)."""
    entry, config = parse_job_args(job, args)
    inputs, outputs = locations(entry, config)
    prints = check_locations(job, inputs, outputs, check_inputs=check_inputs)
    resolved = scrub(json.loads(json.dumps(config.model_dump(mode="json"), default=str)))
    spec = jobs_api.JobSpec(
        job=job,
        args=list(args),
        key=jobs_api.submission_key(job, resolved, prints),
        runtime_env=jobs_api.runtime_env(code, env_vars),
        python=python,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        memory=memory,
        resources=resources,
    )
    local = [(n, u) for n, u in [*inputs, *outputs] if not storage.is_remote(u)]
    return spec, local


# --------------------------------------------------------------------------------------------
# Command line


_ADDRESS = typer.Option(
    None,
    "--address",
    help="Ray dashboard (Jobs API), e.g. http://HEAD:8265 "
    "(default: RAY_ADDRESS when http(s), else http://127.0.0.1:8265)",
)


def register(app: typer.Typer) -> None:
    @app.command(
        "submit",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def submit_cmd(
        ctx: typer.Context,
        job: str = typer.Argument(..., help="the job to run, e.g. embed; its arguments follow"),
        address: str = _ADDRESS,
        retries: int = typer.Option(0, min=0, help="re-submit a failed attempt up to N times (it resumes)"),
        follow: bool = typer.Option(True, "--follow/--no-follow", help="stream the logs until the job ends"),
        again: bool = typer.Option(False, help="submit even if the same job already succeeded"),
        code: str = typer.Option(
            "workdir",
            help="workdir (upload this checkout) | packages | image (the cluster's image has the wheel)",
        ),
        env: list[str] = typer.Option(None, "--env", help="NAME=VALUE for the job (no secrets); repeatable"),
        python: str = typer.Option(
            None,
            help="python on the cluster's nodes (default: this interpreter when the cluster runs on "
            "this machine, else python)",
        ),
        entrypoint_num_cpus: float = typer.Option(None, help="CPUs reserved for the job's driver"),
        entrypoint_num_gpus: float = typer.Option(None, help="GPUs reserved for the job's driver"),
        entrypoint_memory: int = typer.Option(None, help="memory (bytes) reserved for the job's driver"),
        entrypoint_resources: str = typer.Option(
            None, help='custom resources for the driver, JSON: {"r": 1}'
        ),
        check_inputs: bool = typer.Option(
            True, "--check-inputs/--no-check-inputs", help="check from here that every input exists"
        ),
    ):
        """Submit a job to a Ray cluster through the Jobs API (e.g. `reid submit embed ARCHIVE --model M
        --out OUT --address http://HEAD:8265`). Use `--` before job options that clash with these."""
        quiet_client_logs()
        spec, local = prepare(
            job,
            list(ctx.args),
            code=code,
            env_vars=parse_env(env),
            check_inputs=check_inputs,
            python=python or dashboard.default_python(address),
            num_cpus=entrypoint_num_cpus,
            num_gpus=entrypoint_num_gpus,
            memory=entrypoint_memory,
            resources=parse_resources(entrypoint_resources),
        )
        cl = dashboard.client(address)
        if local and not dashboard.is_local_address(address):
            names = ", ".join(u for _, u in local)
            typer.echo(
                f"[reid] note: local path(s) {names} must be visible to every node (shared filesystem)"
            )
        outcome = jobs_api.submit(cl, spec, retries=retries, follow_logs=follow, again=again, echo=typer.echo)
        if outcome.status in ("FAILED", "STOPPED"):
            typer.secho(
                f"{outcome.submission_id}: {outcome.status} after {outcome.attempts} attempt(s)"
                + (f": {outcome.message}" if outcome.message else ""),
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1)
        if not follow:
            typer.echo(f"follow it with: reid jobs logs {outcome.submission_id} --follow")

    jobs = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, stop.", no_args_is_help=True)
    app.add_typer(jobs, name="jobs")

    @jobs.command("list")
    def list_cmd(
        address: str = _ADDRESS,
        all_: bool = typer.Option(False, "--all", help="include jobs not submitted by reid"),
    ):
        """The cluster's jobs, newest first."""
        quiet_client_logs()
        rows = jobs_api.list_jobs(dashboard.client(address), everything=all_)
        if not rows:
            typer.echo("no jobs")
        for r in rows:
            dur = "" if r["duration_s"] is None else f"{r['duration_s']}s"
            typer.echo(
                f"{r['id']:<40} {r['status']:<10} {r['job']:<10} {r['attempt']:>3} {r['started']:<20} "
                f"{dur:>8}  {r['message'][:60]}"
            )

    @jobs.command("status")
    def status_cmd(submission_id: str = typer.Argument(..., metavar="ID"), address: str = _ADDRESS):
        """Status of one job: state, message, entrypoint, times."""
        quiet_client_logs()
        info = jobs_api.get(dashboard.client(address), submission_id)
        typer.echo(f"{submission_id}: {jobs_api.status_of(info)}")
        for key in ("message", "entrypoint", "driver_node_id", "start_time", "end_time", "metadata"):
            value = getattr(info, key, None)
            if value:
                typer.echo(f"  {key}: {value}")

    @jobs.command("logs")
    def logs_cmd(
        submission_id: str = typer.Argument(..., metavar="ID"),
        address: str = _ADDRESS,
        follow_: bool = typer.Option(False, "--follow", "-f", help="stream until the job ends"),
    ):
        """A job's logs (with --follow: until it ends; exit status 1 unless it succeeded)."""
        quiet_client_logs()
        cl = dashboard.client(address)
        jobs_api.get(cl, submission_id)
        if not follow_:
            typer.echo(cl.get_job_logs(submission_id), nl=False)
            return
        status = jobs_api.follow(cl, submission_id, echo=typer.echo)
        typer.echo(f"[reid] {submission_id}: {status}")
        if status != "SUCCEEDED":
            raise typer.Exit(1)

    @jobs.command("stop")
    def stop_cmd(submission_id: str = typer.Argument(..., metavar="ID"), address: str = _ADDRESS):
        """Stop a running job (it keeps what it committed; re-submit to resume)."""
        quiet_client_logs()
        status = jobs_api.stop(dashboard.client(address), submission_id)
        typer.echo(f"{submission_id}: {status}")
