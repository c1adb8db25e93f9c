"""Shared fixtures (a real S3 endpoint: moto's server as a subprocess on loopback; one local Ray per
module; the lions data; the served index) and the markers derived from the fixtures a test uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIONS = Path(os.environ.get("REID_LIONS", REPO.parent / "shared" / "datasets" / "lions"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, with AWS_* variables pointing at it for the whole session."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns its ``s3://`` URI."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def lions_dir() -> Path:
    if not (LIONS / "train").is_dir():
        pytest.skip(f"lions dataset not found at {LIONS} (set REID_LIONS to its folder)")
    return LIONS


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """One embedded Ray per test module, with fixed CPUs (2-CPU machines hang otherwise).

    Started after the S3 variables are set: a local Ray's workers inherit the driver's environment
    (keys included), since no key is ever passed through a runtime_env (Ray logs those).
    """
    from cluster.runtime import connect, shutdown

    connect(num_cpus=2)
    yield
    shutdown()


# --------------------------------------------------------------------------- the served index


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> dict[str, str]:
    """A small index built by the real jobs (synth -> embed -> index on Ray), once per session:
    :func:`tests.support.servedata.build`. A failed build fails every test that asks for it
    (pytest keeps a session fixture's error) rather than being retried."""
    from tests.support.servedata import build

    return build(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def reviewed(served, tmp_path_factory) -> dict[str, str]:
    """The review inputs (:func:`tests.support.servedata.build_review`), built once per session."""
    from tests.support.servedata import build_review

    return build_review(tmp_path_factory.mktemp("review"), served)


# --------------------------------------------------------------------------- markers from fixtures

# A test that reaches one of these fixtures gets the marker (declared in pyproject.toml), so
# `-m "not s3"` / `-m "not ray"` select by what a test really starts, not by what was remembered.
FIXTURE_MARKERS = {
    "s3": ("s3_server", "s3_bucket"),
    "ray": ("ray_local", "served", "reviewed"),  # served/reviewed: an index built by the real jobs
}
# ray_local starts the S3 server only so that Ray's workers inherit its variables: reaching
# s3_server through it alone does not make a test an S3 test.
NOT_FOLLOWED = {"ray_local"}


def fixtures_reached(item: pytest.Item) -> set[str]:
    """The fixtures a test requests, directly or through other fixtures (not through NOT_FOLLOWED)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return set()
    seen: set[str] = set()
    todo = list(info.initialnames)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in NOT_FOLLOWED:
            continue
        for fixturedef in info.name2fixturedefs.get(name, ()):
            todo.extend(fixturedef.argnames)
    return seen


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reached = fixtures_reached(item)
        for marker, fixtures in FIXTURE_MARKERS.items():
            if reached.intersection(fixtures) and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
