"""Shared fixtures: a real S3 endpoint (moto's server as a subprocess on loopback), the lions data."""

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
