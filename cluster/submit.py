"""Ray Jobs: submit a job to a cluster, follow its logs, re-submit failed attempts, list/stop jobs.

A submission's id is derived from (job, config, inputs), so submitting the same work twice is
detected: while an attempt is pending or running a second submit is refused, and after a success
it is a no-op. Ray Jobs never retries; ``retries`` re-submits a failed attempt as ``<id>-r2``,
``<id>-r3``..., and the job resumes from its committed outputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cluster.dashboard import (
    missing_module_hint,
)
from cluster.runtime import storage_env
from reid import __version__
from reid.errors import ReidError
from reid.manifest import scrub

ID_PREFIX = "reid-"
REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("reid", "jobs", "cluster")
# Never uploaded with the working dir (Ray also honours .gitignore): environments, VCS, caches, data,
# weights. Root-anchored where a package could hold a folder of the same name.
EXCLUDES = [
    "/.venv",
    "/venv",
    ".git",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "/build",
    "/dist",
    "/out",
    "/data",
    "/datasets",
    "/shared",
    "**/*.parquet",
    "**/*.safetensors",
    "**/*.pt",
    "**/*.ckpt",
    "**/*.faiss",
    "**/*.zip",
    "**/*.tar*",
]
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Right after `ray start --head` the dashboard answers before its job agent is registered, and a
# submission gets "No available agent to submit job, please try again later." (HTTP 503).
_NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 30.0


# --------------------------------------------------------------------------------------------
# What is submitted


def submission_key(job: str, config: dict, inputs: list[dict]) -> str:
    """Deterministic hash of (job, resolved config, input fingerprints): the same work, the same key."""
    blob = json.dumps({"job": job, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def base_id(job: str, key: str) -> str:
    return f"{ID_PREFIX}{re.sub(r'[^a-z0-9]+', '-', job.lower())}-{key}"


def attempt_id(base: str, attempt: int) -> str:
    return base if attempt == 1 else f"{base}-r{attempt}"


def attempt_of(base: str, submission_id: str | None) -> int | None:
    """The attempt number of ``submission_id`` when it belongs to ``base``, else None."""
    if submission_id == base:
        return 1
    m = re.fullmatch(re.escape(base) + r"-r(\d+)", submission_id or "")
    return int(m.group(1)) if m else None


def check_env_vars(env_vars: dict[str, str]) -> None:
    """Refuse secret-looking variables: a runtime_env is stored in plain text in the job table."""
    for name in env_vars:
        if scrub({name: "x"})[name] == "***":
            raise ReidError(
                f"--env {name}: looks like a secret, and a job's runtime_env is readable by anyone with "
                "dashboard access; give the nodes credentials instead (instance role, Kubernetes secret)"
            )


def runtime_env(
    code: str = "workdir", env_vars: dict[str, str] | None = None, working_dir: str | Path | None = None
) -> dict:
    """The job's runtime_env: the code (``workdir`` upload, ``packages`` upload, or ``image``) and env vars.

    ``workdir`` uploads the checkout minus ``EXCLUDES``; ``packages`` uploads only the reid/jobs/cluster
    packages (works from an installed copy too); ``image`` uploads nothing: the cluster's image already
    holds the built wheel (infra/Dockerfile). Storage variables are forwarded, credentials never.
    """
    env = {**storage_env(include_secrets=False), "PYTHONUNBUFFERED": "1", "REID_SUBMITTED": "1"}
    env.update(env_vars or {})
    check_env_vars(env)
    out: dict = {"env_vars": env}
    if code == "workdir":
        root = Path(working_dir or REPO)
        if not (root / "pyproject.toml").is_file() or not (root / "jobs").is_dir():
            raise ReidError(
                f"--code workdir: {root} is not a checkout of the project; use --code packages or image"
            )
        out["working_dir"] = str(root)
        out["excludes"] = list(EXCLUDES)
    elif code == "packages":
        out["py_modules"] = [str(REPO / p) for p in PACKAGES]
        out["excludes"] = list(EXCLUDES)
    elif code != "image":
        raise ReidError(f"--code {code}: choose workdir, packages or image")
    return out


@dataclass
class JobSpec:
    """One job to submit: the entrypoint command, its identity and what it asks of the cluster."""

    job: str
    args: list[str]
    key: str
    runtime_env: dict
    python: str = "python"
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    resources: dict[str, float] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return base_id(self.job, self.key)

    @property
    def entrypoint(self) -> str:
        return shlex.join([self.python, "-m", "jobs.cli", self.job, *self.args])


# --------------------------------------------------------------------------------------------
# Submitting, following, retrying


@dataclass
class Outcome:
    submission_id: str
    status: str
    attempts: int
    message: str = ""
    submitted: bool = True


def attempts(cl, base: str) -> list:
    """The earlier attempts of one submission (JobDetails), oldest first."""
    found = [(attempt_of(base, j.submission_id), j) for j in cl.list_jobs()]
    return [j for _, j in sorted(((n, j) for n, j in found if n), key=lambda t: t[0])]


def status_of(job) -> str:
    return str(getattr(job.status, "value", job.status))


def follow(cl, submission_id: str, echo: Callable[[str], None] = print, poll_s: float = 1.0) -> str:
    """Stream a job's logs until it ends; returns its final status (falls back to polling)."""

    async def tail() -> None:
        async for chunk in cl.tail_job_logs(submission_id):
            echo(chunk.rstrip("\n"))

    try:
        asyncio.run(tail())
    except Exception as e:  # the log stream broke (head restarted, network): keep waiting by status
        echo(f"[reid] log stream interrupted ({type(e).__name__}); waiting for the job to end")
    return wait(cl, submission_id, poll_s=poll_s)


def wait(cl, submission_id: str, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(cl.get_job_status(submission_id).value)
        if status in _TERMINAL or (deadline and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


def submit(
    cl,
    spec: JobSpec,
    retries: int = 0,
    follow_logs: bool = True,
    again: bool = False,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Submit ``spec`` (attempt n+1 after n earlier ones), follow it, and re-submit failures.

    Refuses a second submission while an attempt is pending or running; after a success, submits
    nothing unless ``again``. A stopped job is not retried (someone stopped it on purpose).
    """
    if retries and not follow_logs:
        raise ReidError("--retries needs to watch the job: drop --no-follow")
    earlier = attempts(cl, spec.base)
    if earlier:
        last = earlier[-1]
        status = status_of(last)
        if status in ("PENDING", "RUNNING"):
            raise ReidError(_already_running(last.submission_id, status))
        if status == "SUCCEEDED" and not again:
            echo(
                f"[reid] {spec.job}: the same job (same config and inputs) already succeeded as "
                f"{last.submission_id}; nothing submitted (pass --again to run it anyway)"
            )
            return Outcome(last.submission_id, status, 0, last.message or "", submitted=False)
    attempt = 1 + max((attempt_of(spec.base, j.submission_id) for j in earlier), default=0)
    tries = 0
    while True:
        sid = attempt_id(spec.base, attempt)
        _submit_one(cl, spec, sid, attempt)
        tries += 1
        echo(f"[reid] submitted {spec.job} as {sid} (attempt {attempt}): {spec.entrypoint}")
        if not follow_logs:
            return Outcome(sid, "PENDING", tries)
        status = follow(cl, sid, echo=echo)
        info = cl.get_job_info(sid)
        message = (info.message or "").strip().splitlines()[0] if info.message else ""
        echo(f"[reid] {sid}: {status}" + (f" ({message})" if message and status != "SUCCEEDED" else ""))
        hint = (
            missing_module_hint(_job_logs(cl, sid, info.message), spec.python) if status == "FAILED" else None
        )
        if hint:  # a retry would fail the same way
            return Outcome(sid, status, tries, hint)
        if status == "SUCCEEDED" or status == "STOPPED" or tries > retries:
            return Outcome(sid, status, tries, message)
        attempt += 1
        echo(f"[reid] re-submitting (retry {tries} of {retries}); the job resumes from its committed outputs")


def _already_running(sid: str, status: str) -> str:
    return (
        f"the same job (same config and inputs) is already {status} as {sid}: follow it with "
        f"`reid jobs logs {sid} --follow` or stop it with `reid jobs stop {sid}`"
    )


def _submit_one(cl, spec: JobSpec, sid: str, attempt: int) -> None:
    metadata = {
        "reid_job": spec.job,
        "reid_key": spec.key,
        "reid_attempt": str(attempt),
        "reid_version": __version__,
        **spec.metadata,
    }
    try:
        retry_while_no_agent(
            lambda: cl.submit_job(
                entrypoint=spec.entrypoint,
                submission_id=sid,
                runtime_env=spec.runtime_env,
                metadata=metadata,
                entrypoint_num_cpus=spec.num_cpus,
                entrypoint_num_gpus=spec.num_gpus,
                entrypoint_memory=spec.memory,
                entrypoint_resources=spec.resources or None,
            )
        )
    except RuntimeError as e:
        if _NO_AGENT in str(e):
            raise ReidError(
                f"the cluster has no job agent after {AGENT_WAIT_S:g} s (just started, or its head is "
                "unhealthy): check `ray status` on the head and submit again"
            ) from e
        if "already exists" in str(e):  # a concurrent submit of the same work got there first
            raise ReidError(_already_running(sid, "submitted")) from e
        raise ReidError(f"the cluster refused {sid}: {_last_line(str(e))}") from e


def _job_logs(cl, sid: str, message: str | None) -> str:
    """A failed job's logs (Ray puts their tail in its message too)."""
    try:
        return (message or "") + "\n" + cl.get_job_logs(sid)
    except (RuntimeError, OSError):
        return message or ""


def retry_while_no_agent(call: Callable[[], str], wait_s: float = AGENT_WAIT_S, first_s: float = 0.5) -> str:
    """``call()`` (a submission), tried again with backoff for up to ``wait_s`` seconds while the
    cluster says it has no job agent yet (a cluster just started); any other error at once."""
    deadline = time.monotonic() + wait_s
    pause = first_s
    while True:
        try:
            return call()
        except RuntimeError as e:  # what the Jobs SDK raises for an HTTP error
            left = deadline - time.monotonic()
            if _NO_AGENT not in str(e) or left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, 5.0)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and ln.strip() != "."]
    return lines[-1] if lines else text


# --------------------------------------------------------------------------------------------
# Inspecting and stopping


def get(cl, submission_id: str):
    """JobDetails of one submission, or a clear error naming it."""
    try:
        return cl.get_job_info(submission_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise ReidError(f"no job {submission_id} on this cluster; list them with `reid jobs list`") from e
        raise


def list_jobs(cl, everything: bool = False) -> list[dict]:
    """Jobs on the cluster as rows (only this project's unless ``everything``), newest first."""
    rows = []
    for j in cl.list_jobs():
        if not everything and not (j.submission_id or "").startswith(ID_PREFIX):
            continue
        md = j.metadata or {}
        start, end = j.start_time, j.end_time
        rows.append(
            {
                "id": j.submission_id or j.job_id,
                "job": md.get("reid_job", ""),
                "attempt": md.get("reid_attempt", ""),
                "status": status_of(j),
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start / 1000)) if start else "",
                "duration_s": round(((end or time.time() * 1000) - start) / 1000, 1) if start else None,
                "message": (j.message or "").strip().splitlines()[0] if j.message else "",
            }
        )
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def stop(cl, submission_id: str, wait_s: float = 30.0) -> str:
    """Ask a job to stop and wait (a while) until it has; returns its status."""
    get(cl, submission_id)
    cl.stop_job(submission_id)
    return wait(cl, submission_id, poll_s=0.5, timeout_s=wait_s)
