"""Connecting to Ray: an embedded local Ray by default, or an existing cluster by address.

Credentials never travel in a runtime_env: Ray writes runtime_envs verbatim into its logs
(``runtime_env_agent.log``) and job tables. A local Ray started here forks from this process, so
its workers inherit the driver's environment, keys included; cluster nodes use their own
instance role / IRSA. Only when the user opts in (``REID_FORWARD_AWS_CREDENTIALS=1``) are keys
sent to a cluster, inside a worker setup hook that Ray keeps in its internal store, not in a log.

Ray stays quiet on the user's terminal: its workers' and internal actors' output stays in the
session's log files (``log_to_driver=False``) and its driver-side records go to
``logs/reid_driver_<pid>.log`` there; the few warnings a user must act on are printed as one
line. ``REID_DEBUG=1`` shows everything as Ray prints it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from typing import Any

import ray

from reid.errors import ReidError

# Storage settings (not secret) forwarded to Ray workers so they reach the same storage as the
# driver, even when the variables were set after Ray started (notebooks, tests).
_STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Opt-in: send this process's AWS keys to a remote cluster's workers (see the module docstring).
FORWARD_CREDENTIALS = "REID_FORWARD_AWS_CREDENTIALS"


def storage_env(include_secrets: bool = False) -> dict[str, str]:
    """The storage variables set in this process; keys only with ``include_secrets`` (never for a
    runtime_env: Ray logs those)."""
    names = _STORAGE_ENV + (_SECRET_ENV if include_secrets else ())
    return {k: os.environ[k] for k in names if os.environ.get(k)}


_started_here = False  # True when this process started an embedded local Ray
_started_with = ""  # fingerprint of the credentials its workers inherited


def _credentials_fingerprint() -> str:
    values = "\0".join(os.environ.get(k, "") for k in _SECRET_ENV)
    return hashlib.sha256(values.encode()).hexdigest()


def task_env() -> dict:
    """runtime_env for tasks/actors: the storage settings as they are now in the driver, no keys.

    Ray may have been started before the variables were set (tests, notebooks), so jobs pass
    this with each operator. Keys reach a local Ray's workers by inheritance (see :func:`connect`).
    """
    return {"env_vars": storage_env(include_secrets=False)}


def worker_env(gpu: bool) -> dict:
    """runtime_env of a compute worker (model actors, training workers): :func:`task_env`, and on
    CPU the allocator settings that keep activations in the heap between batches
    (reid/allocator.py: they must be in place when the process starts)."""
    from reid.allocator import process_env

    env = task_env()
    if not gpu:
        env["env_vars"] = {**env.get("env_vars", {}), **process_env()}
    return env


def forward_credentials_requested() -> bool:
    return os.environ.get(FORWARD_CREDENTIALS, "").strip().lower() in ("1", "true", "yes")


def _credentials_hook(values: dict[str, str]):
    """A worker setup hook that sets the given variables: Ray stores the pickled hook in its
    internal store and logs only its name, so the values stay out of every log."""

    def reid_aws_credentials() -> None:
        os.environ.update(values)

    return reid_aws_credentials


def _submitted_job_env() -> dict:
    """Environment variables of the Ray Jobs submission this driver runs in (empty outside one)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return ((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}) if raw else {}


# Ray warnings a user must act on, as one line in our words ({0}: the pattern's first group).
_USER_WARNINGS = (
    (
        re.compile(r"Cluster resources are not enough to run any task from (.+?)\."),
        "the Ray cluster has too few free CPUs/GPUs for {0}: the job waits until some are free; "
        "lower the job's actors or CPUs per actor, or add nodes",
    ),
)


def _verbose() -> bool:
    """REID_DEBUG=1: Ray's output as Ray prints it (workers' lines, driver-side records)."""
    return bool(os.environ.get("REID_DEBUG"))


def user_warning(message: str) -> str | None:
    """The one line a user sees for a Ray warning, or None when it is Ray's own business."""
    for pattern, words in _USER_WARNINGS:
        m = pattern.search(message)
        if m:
            return words.format(*m.groups())
    return None


class RayLogRouter(logging.Filter):
    """Keeps the records of Ray's ``ray`` logger in this process off the terminal: they go to
    the session's log folder (kept in memory until Ray has one), and a warning listed in
    :data:`_USER_WARNINGS` is printed once as ``warning: ...``. Errors still reach the terminal."""

    MAX_PENDING = 1000

    def __init__(self) -> None:
        super().__init__()
        self.file: logging.Handler | None = None
        self.pending: list[logging.LogRecord] = []
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.file is None and len(self.pending) < self.MAX_PENDING:
            self.pending.append(record)
        if record.levelno >= logging.ERROR:
            return True
        line = user_warning(record.getMessage())
        if line and line not in self.said:
            self.said.add(line)
            print(f"warning: {line}", file=sys.stderr, flush=True)
        return False

    def to_file(self, path: str) -> None:
        """Write Ray's records to ``path`` from now on (and those kept so far); a later Ray session
        in this process (after a shutdown) moves them to its own folder."""
        if self.file is not None:
            if self.file.baseFilename == os.path.abspath(path):
                return
            logging.getLogger("ray").removeHandler(self.file)
            self.file.close()
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
        logging.getLogger("ray").addHandler(handler)
        self.file = handler
        for record in self.pending:
            handler.handle(record)
        self.pending.clear()


_router = RayLogRouter()


def quiet_ray_logs(session_dir: str | None = None) -> None:
    """Route Ray's driver-side records through :class:`RayLogRouter` (idempotent; Ray may add
    handlers at ``ray.init``); with ``session_dir``, into its ``logs`` folder."""
    if _verbose():
        return
    for handler in logging.getLogger("ray").handlers:
        if handler is not _router.file and _router not in handler.filters:
            handler.addFilter(_router)
    if session_dir and os.path.isdir(os.path.join(session_dir, "logs")):
        _router.to_file(os.path.join(session_dir, "logs", f"reid_driver_{os.getpid()}.log"))


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard: bool = False,
    object_store_mb: int | None = None,
) -> dict:
    """Start (or join) Ray once per process; returns the cluster's resources.

    ``address`` (or ``RAY_ADDRESS``) joins a running cluster; otherwise an embedded local Ray is
    started with a fixed number of CPUs and the dashboard off unless asked for. A local Ray started
    here whose workers inherited other credentials than the driver now has (keys set or changed
    after it started) is restarted, since keys are never sent through a runtime_env.
    """
    global _started_here, _started_with
    if ray.is_initialized():
        if not (_started_here and _credentials_fingerprint() != _started_with):
            return ray.cluster_resources()
        ray.shutdown()
        _started_here = False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet_ray_logs()  # before ray.init, which logs ("Token authentication is enabled ...")
    env: dict = {"env_vars": storage_env(include_secrets=False)}
    env["env_vars"].setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    for name in _submitted_job_env():  # Ray refuses a variable set by both the job and ray.init
        env["env_vars"].pop(name, None)
    if address:
        secrets = {k: v for k, v in storage_env(include_secrets=True).items() if k in _SECRET_ENV}
        if forward_credentials_requested() and secrets:
            env["worker_process_setup_hook"] = _credentials_hook(secrets)
        ctx = ray.init(address=address, runtime_env=env, log_to_driver=_verbose(), logging_level="WARNING")
    else:
        _started_here, _started_with = True, _credentials_fingerprint()
        cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        ctx = ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=num_gpus,
            include_dashboard=dashboard,
            runtime_env=env,
            object_store_memory=(object_store_mb or 1024) * 1024 * 1024,
            logging_level="WARNING",
            log_to_driver=_verbose(),  # workers' and Ray's actors' output stays in the session logs
        )
    quiet_ray_logs(ctx.address_info.get("session_dir"))
    return ray.cluster_resources()


def shutdown() -> None:
    global _started_here
    if ray.is_initialized():
        ray.shutdown()
    _started_here = False


def resources() -> dict:
    return ray.cluster_resources() if ray.is_initialized() else {}


def ray_get(refs: Any) -> Any:
    """``ray.get`` that re-raises a user error from a task as itself, so the CLI prints one clear line."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ReidError):
            raise cause from None
        raise
