"""The Ray dashboard a submission goes to: its address (``--address``, ``REID_DASHBOARD``,
``RAY_ADDRESS``), a Jobs API client that fails fast with one line, whether the cluster runs on this
machine (and so which python a job should run with), and the hint for a job missing a module."""

from __future__ import annotations

import os
import re
import socket
import sys
from urllib.parse import urlparse

from reid.errors import ReidError

__all__ = [
    "DEFAULT_ADDRESS",
    "client",
    "dashboard_address",
    "default_python",
    "is_local_address",
    "missing_module_hint",
]

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
_UNREACHABLE = "is the cluster up? start one with infra/local-cluster.sh"


def dashboard_address(address: str | None) -> str:
    """The Jobs API URL: ``--address``, else ``REID_DASHBOARD``, else ``RAY_ADDRESS`` when it is an
    http(s) URL (Ray's own convention), else the local default."""
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        ray_env = env if env.startswith(("http://", "https://")) else ""
        address = os.environ.get("REID_DASHBOARD") or ray_env or DEFAULT_ADDRESS
    if address.startswith("ray://"):
        raise ReidError(
            f"--address {address}: give the dashboard's Jobs API, e.g. http://HEAD:8265, not ray://"
        )
    if "://" not in address:
        address = "http://" + address
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ReidError(f"--address {address}: expected http://HOST:8265 (the Ray dashboard)")
    if url.port == 6379:
        raise ReidError(
            f"--address {address}: 6379 is the GCS port; jobs go to the dashboard, http://HOST:8265"
        )
    return address.rstrip("/")


def client(address: str | None = None, timeout_s: float = 5.0):
    """A JobSubmissionClient for ``address``; an unreachable dashboard is one clear error, fast.

    A dashboard with token authentication (Ray's default once ``~/.ray/auth_token`` exists) gets
    the token Ray finds locally (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or that file).
    """
    import requests
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    try:
        r = requests.get(url + "/api/version", timeout=timeout_s)
        if r.status_code in (401, 403):
            r = requests.get(url + "/api/version", timeout=timeout_s, headers=_token_headers())
            if r.status_code in (401, 403):
                raise ReidError(
                    f"Ray dashboard at {url} wants a token ({r.status_code}): set RAY_AUTH_TOKEN to the "
                    "cluster's token (see `ray get-auth-token` on the head)"
                )
        r.raise_for_status()
        r.json()["ray_version"]
    except (requests.RequestException, ValueError, KeyError) as e:
        reason = type(e).__name__ if isinstance(e, requests.RequestException) else "not a Ray dashboard"
        raise ReidError(f"cannot reach Ray dashboard at {url} ({reason}); {_UNREACHABLE}") from e
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError) as e:
        raise ReidError(f"cannot reach Ray dashboard at {url} ({e}); {_UNREACHABLE}") from e


def _token_headers() -> dict:
    """Turn on Ray's token authentication for this process when a token is found; its HTTP header."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    return get_auth_headers_if_auth_enabled({})


def _this_machine() -> set[str]:
    """Names and addresses of this machine (its own name resolved locally; no lookup of others)."""
    names = {"127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname(), socket.getfqdn()}
    for name in list(names - {"0.0.0.0"}):
        try:
            names |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    return {n.lower() for n in names}


def is_local_address(address: str | None) -> bool:
    """Whether the dashboard at ``address`` runs on this machine (loopback, its name or address)."""
    host = urlparse(dashboard_address(address)).hostname or ""
    return host.lower() in _this_machine()


def default_python(address: str | None) -> str:
    """The interpreter a job runs with when ``--python`` is not given: on a cluster on this
    machine, the one submitting (``ray start`` from a venv has its packages; the system's
    ``python`` usually has none), elsewhere ``python`` on the nodes' PATH."""
    return sys.executable if is_local_address(address) else "python"


MISSING_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'")


def missing_module_hint(logs: str, python: str) -> str | None:
    """One line naming the option that fixes a job whose interpreter lacks reid's packages."""
    m = MISSING_MODULE.search(logs or "")
    if not m:
        return None
    return (
        f"the job's interpreter ({python}) has no module '{m.group(1)}': pass --python with the path "
        "of a python that has reid installed on the cluster's nodes (e.g. its venv's bin/python), "
        "or run there from an image with reid installed (--code image)"
    )
