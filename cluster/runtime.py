"""Connecting to Ray: an embedded local Ray by default, or an existing cluster by address."""

from __future__ import annotations

import json
import os

import ray

# Variables forwarded to Ray workers so they reach the same storage as the driver. Credentials
# are forwarded only to a local Ray started here (same machine); clusters use instance roles.
_STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def storage_env(include_secrets: bool) -> dict[str, str]:
    names = _STORAGE_ENV + (_SECRET_ENV if include_secrets else ())
    return {k: os.environ[k] for k in names if os.environ.get(k)}


_started_here = False  # True when this process started an embedded local Ray


def task_env() -> dict:
    """runtime_env for tasks/actors: storage variables as they are now in the driver.

    Ray may have been started before the variables were set (tests, notebooks), so jobs pass
    this with each operator. Credentials only go to a Ray this process started on this machine.
    """
    return {"env_vars": storage_env(include_secrets=_started_here)}


def _submitted_job_env() -> dict:
    """Environment variables of the Ray Jobs submission this driver runs in (empty outside one)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return ((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}) if raw else {}


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard: bool = False,
    object_store_mb: int | None = None,
) -> dict:
    """Start (or join) Ray once per process; returns the cluster's resources.

    ``address`` (or ``RAY_ADDRESS``) joins a running cluster; otherwise an embedded local Ray is
    started with a fixed number of CPUs and the dashboard off unless asked for.
    """
    global _started_here
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"env_vars": storage_env(include_secrets=address is None)}
    env["env_vars"].setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    for name in _submitted_job_env():  # Ray refuses a variable set by both the job and ray.init
        env["env_vars"].pop(name, None)
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True, logging_level="WARNING")
    else:
        _started_here = True
        cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=num_gpus,
            include_dashboard=dashboard,
            runtime_env=env,
            object_store_memory=(object_store_mb or 1024) * 1024 * 1024,
            logging_level="WARNING",
            log_to_driver=True,
        )
    return ray.cluster_resources()


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def resources() -> dict:
    return ray.cluster_resources() if ray.is_initialized() else {}
