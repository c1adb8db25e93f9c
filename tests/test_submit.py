"""`reid submit` / `reid jobs`: checks before submission, and real two-node Ray clusters.

The cluster tests start infra/local-cluster.sh (a head and a worker node from `ray start`, plus a
moto S3 server), submit `reid embed` through the Jobs API and follow it; the chaos test kills the
worker node that runs the job's driver and checks that the re-submitted attempt finishes the job
from the committed units, losing and duplicating nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import dashboard
from cluster import submit as jobs_api
from jobs.submit import locations, parse_job_args, prepare
from reid import manifest, storage
from reid.errors import ReidError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "local-cluster.sh"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reid(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "src" / "lion_a"
    src.mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"not really a jpeg; ingest is never run here")
    return tmp_path / "src"


# --------------------------------------------------------------------------------------------
# Before anything reaches a cluster


def test_unreachable_address_is_one_line_and_fast(photos, tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    r = reid("submit", "ingest", str(photos), str(tmp_path / "out"), "--address", f"http://127.0.0.1:{port}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"cannot reach Ray dashboard at http://127.0.0.1:{port}" in lines[0]
    assert "infra/local-cluster.sh" in lines[0]
    with pytest.raises(ReidError, match="cannot reach Ray dashboard"):
        t1 = time.monotonic()
        dashboard.client(f"127.0.0.1:{port}")
    assert time.monotonic() - t1 < 5
    assert time.monotonic() - t0 < 60


def test_missing_input_bad_config_and_relative_paths_fail_before_submission(photos, tmp_path):
    with pytest.raises(ReidError, match=r"input src /no/such/folder does not exist"):
        prepare("ingest", ["/no/such/folder", str(tmp_path / "out")])
    with pytest.raises(
        ReidError, match=r"reid embed: --batch-size 0: out of range"
    ):  # the job's own validation
        prepare("embed", [str(photos), "--model", "timm:resnet18", "--out", "/x", "--batch-size", "0"])
    with pytest.raises(ReidError, match="Missing option '--model'"):
        prepare("embed", [str(photos), "--out", "/x"])
    with pytest.raises(ReidError, match="out 'rel/out' is a relative path"):
        prepare("ingest", [str(photos), "rel/out"])
    with pytest.raises(ReidError, match="not a job that can be submitted"):
        prepare("nosuchjob", [])
    r = reid("submit", "ingest", "/no/such/folder", str(tmp_path / "out"), "--address", "http://127.0.0.1:1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "does not exist" in r.stderr  # checked before the (unreachable) address


def test_inputs_outputs_and_names_are_told_apart(photos):
    module, cfg = parse_job_args("embed", [str(photos), "--model", "hf-hub:org/model", "--out", "s3://b/emb"])
    assert type(cfg).__name__ == "EmbedConfig"
    inputs, outputs = locations(module, cfg)
    assert inputs == [("archive", str(photos))]  # hf-hub:org/model is a name, not a location
    assert outputs == [("out", "s3://b/emb")]


def test_submission_id_follows_job_config_and_inputs(photos, tmp_path):
    out = str(tmp_path / "arch")
    a, _ = prepare("ingest", [str(photos), out])
    assert prepare("ingest", [str(photos), out, "--threads", "4"])[0].base == a.base  # same config
    assert prepare("ingest", [str(photos), out, "--threads", "2"])[0].base != a.base
    assert re.fullmatch(r"reid-ingest-[0-9a-f]{12}", a.base)
    # an input's committed manifest is part of its identity: new input, new submission
    emb = ["--model", "timm:resnet18", "--out", str(tmp_path / "emb")]
    manifest.write_manifest(out, "ingest", {}, [], {"rows": 1}, manifest.now())
    first = prepare("embed", [out, *emb])[0]
    manifest.write_manifest(out, "ingest", {}, [], {"rows": 2}, manifest.now())
    assert prepare("embed", [out, *emb])[0].base != first.base
    assert jobs_api.attempt_id(a.base, 1) == a.base
    assert jobs_api.attempt_of(a.base, jobs_api.attempt_id(a.base, 3)) == 3
    assert jobs_api.attempt_of(a.base, a.base + "x-r2") is None


def test_runtime_env_carries_code_and_storage_settings_never_secrets(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    spec, _ = prepare("ingest", [str(photos), str(tmp_path / "out")])
    env = spec.runtime_env
    assert env["working_dir"] == str(REPO)
    assert {"/.venv", ".git", "**/*.parquet"} <= set(env["excludes"])
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "s3cr3t" not in str(env) and "AKIA" not in str(env)
    assert spec.entrypoint == f"python -m jobs.cli ingest {photos} {tmp_path / 'out'}"
    assert "py_modules" in jobs_api.runtime_env("packages") and "working_dir" not in jobs_api.runtime_env(
        "image"
    )
    with pytest.raises(ReidError, match="looks like a secret"):
        jobs_api.runtime_env("image", {"HF_TOKEN": "x"})


def test_dashboard_address_forms(monkeypatch):
    monkeypatch.delenv("REID_DASHBOARD", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not the Jobs API
    assert dashboard.dashboard_address(None) == dashboard.DEFAULT_ADDRESS
    assert dashboard.dashboard_address("head:8265") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert dashboard.dashboard_address(None) == "http://head:8265"
    for bad in ("ray://head:10001", "http://head:6379"):
        with pytest.raises(ReidError):
            dashboard.dashboard_address(bad)


def test_interpreter_defaults_to_this_one_for_a_cluster_on_this_machine(monkeypatch):
    """`ray start --head` from a venv, then `reid submit`: the job runs with the submitting python
    (the system's ``python`` lacks typer); a remote cluster keeps ``python`` from its nodes' PATH."""
    monkeypatch.delenv("REID_DASHBOARD", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for here in (None, "http://127.0.0.1:8265", "localhost:8265", f"http://{socket.gethostname()}:8265"):
        assert dashboard.default_python(here) == sys.executable, here
    assert dashboard.default_python("http://192.0.2.77:8265") == "python"  # TEST-NET-1: never this host
    spec, _ = prepare("synth", ["/tmp/reid-never-written", "--individuals", "2"], python=sys.executable)
    assert spec.entrypoint.startswith(f"{sys.executable} -m jobs.cli synth ")


def test_a_job_without_reid_packages_names_the_option_that_fixes_it():
    logs = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'typer'\n"
    hint = dashboard.missing_module_hint(logs, "python")
    assert "no module 'typer'" in hint and "--python" in hint and "\n" not in hint
    assert dashboard.missing_module_hint("embedded 8", "python") is None


def _dashboard_without_agent(failures: int):
    """What JobSubmissionClient.submit_job does on a fresh head: its own RuntimeError for the 503
    (`Request failed with status code 503: No available agent ...`), ``failures`` times."""
    from ray.dashboard.modules.dashboard_sdk import SubmissionClient

    class Response:
        status_code = 503
        text = "No available agent to submit job, please try again later."

    calls = []

    def submit_job() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            SubmissionClient._raise_error(None, Response())
        return "reid-synth-0123456789ab"

    return submit_job, calls


def test_first_submit_after_ray_start_waits_for_the_job_agent():
    submit_job, calls = _dashboard_without_agent(failures=3)
    assert jobs_api.retry_while_no_agent(submit_job, wait_s=10, first_s=0.01) == "reid-synth-0123456789ab"
    assert len(calls) == 4 and calls[-1] - calls[0] < 5  # backoff 0.01, 0.02, 0.04 s
    submit_job, calls = _dashboard_without_agent(failures=1000)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="No available agent"):
        jobs_api.retry_while_no_agent(submit_job, wait_s=0.3, first_s=0.05)
    assert 0.3 <= time.monotonic() - t0 < 2 and len(calls) > 2  # bounded, then the error

    def other_error() -> str:
        raise RuntimeError("Request failed with status code 400: bad runtime_env.")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="400"):
        jobs_api.retry_while_no_agent(other_error, wait_s=10)
    assert time.monotonic() - t0 < 0.5  # other refusals are not retried


# --------------------------------------------------------------------------------------------
# A real two-node cluster


class LocalCluster:
    """infra/local-cluster.sh in a private state dir, with the variables it exports."""

    def __init__(self):
        # short path: Ray's unix socket paths must stay under 107 bytes
        self.state = tempfile.mkdtemp(prefix="reid-lc-", dir="/tmp")
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "PYTHON": sys.executable,
            "STATE_DIR": self.state,
            "DASHBOARD_PORT": str(_free_port()),
            "GCS_PORT": str(_free_port()),
            "WORKER_RESOURCES": '{"reid_worker": 1}',
            "STOP_GRACE_S": "10",
            # notice a lost node in ~5 s instead of ~30 s (with slack for a busy machine)
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "5000",
            "RAY_health_check_failure_threshold": "5",
        }
        self.exports = {}

    def run(self, *args: str, timeout: float = 300) -> str:
        r = subprocess.run(
            ["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert r.returncode == 0, f"local-cluster.sh {' '.join(args)}: {r.stderr}\n{r.stdout}"
        return r.stdout

    def up(self) -> None:
        out = self.run("up")
        for m in re.finditer(r"^export (\w+)=(\S+)", out, re.M):
            self.exports[m.group(1)] = m.group(2)
        self.client_env = {**self.env, **self.exports}

    @property
    def address(self) -> str:
        return self.exports["REID_DASHBOARD"]

    def job(self, submission_id: str) -> dict:
        """A job's details straight from the Jobs API (with this cluster's token)."""
        token = Path(self.state, "auth_token").read_text().strip()
        request = urllib.request.Request(
            f"{self.address}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)

    def pids(self) -> list[int]:
        """Processes still using this cluster's temp dir."""
        needle = f"{self.state}/ray/".encode()
        found = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and needle in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
        return found


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.up()
        yield c
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=c.env, capture_output=True, timeout=180)
        leftover = c.pids()
        subprocess.run(["rm", "-rf", c.state])
        assert not leftover, f"processes left behind by the local cluster: {leftover}"


def _make_archive_and_model(root: str, n: int, backbone: str = "resnet10t", size: int = 64) -> None:
    """An archive of ``n`` one-row units and a small model package (local or s3://)."""
    import torch

    from reid.archive import ArchiveWriter
    from reid.model.network import create_model
    from reid.model.package import save_package
    from reid.model.spec import ModelSpec
    from tests.support.images import jpeg_bytes, photo

    torch.manual_seed(0)
    spec = ModelSpec(backbone=backbone, embedding_dim=16, input_size=size)
    save_package(create_model(spec, load_pretrained=False), spec, storage.join(root, "model"))
    w = ArchiveWriter(storage.join(root, "arch"), row_group_bytes=1)  # one row per row group: n units
    for i in range(n):
        image = jpeg_bytes(photo(size + size // 4, size, seed=i))
        w.add({"image_id": f"img{i:03d}", "image": image, "source": f"mem://{i}"})
    w.close()
    manifest.write_manifest(storage.join(root, "arch"), "ingest", {}, [], {"rows": n}, manifest.now())


def _check_embeddings(out: str, n: int) -> None:
    from jobs.embed import read_embeddings

    ids = read_embeddings(out, columns=["image_id"]).column("image_id").to_pylist()
    assert sorted(ids) == [f"img{i:03d}" for i in range(n)]  # every image once: nothing lost or doubled


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.s3
def test_submit_embed_follows_logs_to_completion_on_two_nodes(cluster, monkeypatch):
    import boto3

    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(k, cluster.exports[k])
    boto3.client("s3", endpoint_url=cluster.exports["AWS_ENDPOINT_URL"]).create_bucket(Bucket="survey")
    n = 8
    _make_archive_and_model("s3://survey", n)
    args = ["embed", "s3://survey/arch", "--model", "s3://survey/model", "--out", "s3://survey/emb"]

    t0 = time.monotonic()
    r = reid("submit", *args, "--address", cluster.address, env=cluster.client_env)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    sid = re.search(r"submitted embed as (reid-embed-[0-9a-f]{12}) \(attempt 1\)", r.stdout).group(1)
    assert f"Running entrypoint for job {sid}" in r.stdout  # the job's own log, streamed
    assert re.search(r"embedded\s+\W\s+8", r.stdout)  # its closing summary table
    assert f"{sid}: SUCCEEDED" in r.stdout
    _check_embeddings("s3://survey/emb", n)
    print(f"\nsubmit -> SUCCEEDED on two nodes: {took:.1f} s for {n} images")

    again = reid("submit", *args, "--address", cluster.address, env=cluster.client_env)
    assert again.returncode == 0 and f"already succeeded as {sid}; nothing submitted" in again.stdout

    listing = reid("jobs", "list", env=cluster.client_env)  # address from REID_DASHBOARD
    assert re.search(rf"^{sid}\s+SUCCEEDED\s+embed\s+1\b", listing.stdout, re.M), listing.stdout
    logs = reid("jobs", "logs", sid, env=cluster.client_env)
    assert f"Running entrypoint for job {sid}" in logs.stdout

    # a job submitted without following can be stopped
    other = reid("submit", *args[:-1], "s3://survey/emb-2", "--no-follow", env=cluster.client_env)
    assert other.returncode == 0, other.stderr
    sid2 = re.search(r"submitted embed as (\S+)", other.stdout).group(1)
    stopped = reid("jobs", "stop", sid2, env=cluster.client_env)
    assert stopped.returncode == 0 and f"{sid2}: STOPPED" in stopped.stdout


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.chaos
def test_killed_worker_node_job_is_resubmitted_and_loses_nothing(cluster, tmp_path):
    n = 40
    root = str(tmp_path)
    _make_archive_and_model(root, n, backbone="resnet18", size=128)  # ~0.1 s per image: time to kill
    out = f"{root}/emb"
    # batch size 1: units are committed one by one; one CPU per actor: every node has one
    args = ["embed", f"{root}/arch", "--model", f"{root}/model", "--out", out, "--batch-size", "1"]
    args += ["--cpus-per-actor", "1", "--address", cluster.address]
    # the driver runs on a worker node (their custom resource), so losing that node fails attempt 1;
    # a second worker (a spare the autoscaler would bring) takes attempt 2
    submit = ["submit", *args, "--entrypoint-resources", '{"reid_worker": 0.01}']
    cluster.run("add-worker")
    log = tmp_path / "submit.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *submit, "--retries", "2"],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        text=True,
        env=cluster.client_env,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 240
        while not (m := re.search(r"submitted embed as (reid-embed-[0-9a-f]{12}) \(attempt 1\)", _read(log))):
            assert proc.poll() is None and time.monotonic() < deadline, _read(log)
            time.sleep(0.2)
        sid = m.group(1)
        while not (node := cluster.job(sid).get("driver_node_id")):
            assert proc.poll() is None and time.monotonic() < deadline, _read(log)
            time.sleep(0.2)
        parts = lambda: storage.list_files(out, suffix=".parquet")  # noqa: E731
        while not parts():
            assert proc.poll() is None, _read(log)
            assert time.monotonic() < deadline, "no unit committed in time\n" + _read(log)
            time.sleep(0.1)
        cluster.run("kill-worker", node)  # the driver's node, mid-job: some units committed
        killed_at = time.monotonic()
        before = {p: os.stat(p).st_mtime_ns for p in parts()}
        assert manifest.read_manifest(out) is None and len(before) < n, "the job ended before the kill"
        deadline = time.monotonic() + 120
        while "re-submitting (retry 1 of 2)" not in _read(log):
            assert proc.poll() is None, _read(log)
            assert time.monotonic() < deadline, "attempt 1 was not seen to fail\n" + _read(log)
            time.sleep(0.2)
        detected = time.monotonic() - killed_at
        while f"submitted embed as {sid}-r2" not in _read(log):
            assert proc.poll() is None and time.monotonic() < deadline, _read(log)
            time.sleep(0.2)
        # the same submission is refused while an attempt is pending or running, by id
        dup = reid(*submit, env=cluster.client_env)
        assert dup.returncode == 2, dup.stdout + dup.stderr
        assert (
            f"is already PENDING as {sid}-r2" in dup.stderr or f"is already RUNNING as {sid}-r2" in dup.stderr
        )
        assert proc.wait(timeout=300) == 0, _read(log)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = _read(log)
    assert f"{sid}: FAILED" in text and f"{sid}-r2: SUCCEEDED" in text
    assert cluster.job(f"{sid}-r2")["driver_node_id"] != node
    status = reid("jobs", "status", sid, env=cluster.client_env).stdout
    assert f"{sid}: FAILED" in status and "node" in status  # Ray's reason: the driver's node died
    _check_embeddings(out, n)
    assert all(os.stat(p).st_mtime_ns == t for p, t in before.items())  # committed units kept as they were
    skipped = int(re.search(r"skipped_units\s+\W\s+(\d+)", text).group(1))  # attempt 2's summary table
    assert len(before) <= skipped < n  # attempt 2 resumed from what attempt 1 committed
    print(
        f"\nkill -> attempt 1 FAILED seen after {detected:.1f} s; attempt 2 skipped {skipped}/{n} units; "
        f"total {time.monotonic() - t0:.1f} s"
    )


def _read(path: Path) -> str:
    return path.read_text()
