"""Issue 14, the job/CLI/storage side: nothing lost, nothing leaked.

Every case runs the real ``reid`` command in a subprocess and asserts the exact outcome: exit
status 2 with one line on stderr naming the input (no traceback) for user errors, no AWS key
anywhere in Ray's session folder or the outputs, absolute paths for Ray workers, strict JSON, and
the temporary files of a killed writer swept by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from reid import storage

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = [
    "--backbone", "resnet10t", "--input-size", "32", "--embedding-dim", "16", "--p", "2", "--k", "2",
    "--epochs", "1", "--augment", "0", "--val-fraction", "0.25", "--val-exclude", "none",
    "--loss", "contrastive", "--miner", "none", "--workers", "1",
]  # fmt: skip
TINY_SYNTH = ["--individuals", "8", "--years", "1", "--images-per-individual", "4", "--image-size", "32"]


def reid(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real command line; returns (exit status, stdout, stderr, seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def assert_user_error(result, *names: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback, naming each of ``names``."""
    rc, out, err, _ = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err + out, err
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _strict(text: str):
    """json.loads that refuses NaN/Infinity, as JavaScript and most parsers do."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _tiny_model(out: str) -> str:
    from reid.model.network import create_model
    from reid.model.package import save_package
    from reid.model.spec import ModelSpec

    spec = ModelSpec(backbone="resnet10t", embedding_dim=16, input_size=32)
    save_package(create_model(spec), spec, out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny synthetic archive, a model package and a regular file, in one folder."""
    root = tmp_path_factory.mktemp("integrity")
    rc, out, err, _ = reid("synth", str(root / "arch"), *TINY_SYNTH)
    assert rc == 0, err
    _tiny_model(str(root / "model"))
    (root / "afile").write_text("not a folder")
    return root


# --------------------------------------------------------------------------------------------
# 7. --out naming an existing regular file, and S3 locations that cannot work: exit 2, one line


@pytest.mark.parametrize(
    "job",
    ["synth", "ingest", "split", "index", "match", "evaluate", "train", "embed"],
)
def test_out_is_an_existing_file(work, job):
    f = str(work / "afile")
    args = {
        "synth": ["synth", f, *TINY_SYNTH],
        "ingest": ["ingest", str(work / "arch"), f],
        "split": ["split", str(work / "arch"), "--out", str(work)],  # a folder where a file is meant
        "index": ["index", str(work / "emb"), "--out", f],
        "match": ["match", str(work / "idx"), "--out", f],
        "evaluate": ["evaluate", str(work / "emb"), "--out", f],
        "train": ["train", str(work / "arch"), "--out", f, *TINY_TRAIN],
        "embed": ["embed", str(work / "arch"), "--model", str(work / "model"), "--out", f],
    }[job]
    result = reid(*args, timeout=120)
    line = assert_user_error(result, "--out")
    assert ("is an existing file" in line) if job != "split" else ("is a folder" in line)
    assert result[3] < 60


def test_relative_out_existing_file_named_as_typed_dir(work):
    """The path in the message is the one the job uses (absolute), so the user sees where it is."""
    line = assert_user_error(reid("synth", "afile", *TINY_SYNTH, cwd=work), "--out")
    assert str(work / "afile") in line


@pytest.fixture
def no_s3_config(tmp_path):
    """Environment with no AWS credentials or config files and no instance metadata lookups."""
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
    }


@pytest.mark.s3
def test_s3_bucket_missing_or_not_named(s3_server, work):
    line = assert_user_error(
        reid("synth", "s3://no-such-bucket-reid/arch", *TINY_SYNTH), "s3://no-such-bucket-reid"
    )
    assert "does not exist" in line and "aws s3 mb" in line
    for uri in ("s3://", "s3:///arch"):
        assert "needs a bucket" in assert_user_error(reid("synth", uri, *TINY_SYNTH), uri)
    # an input on S3 too, and a job that starts Ray: refused before Ray starts
    line = assert_user_error(
        reid("match", "s3://no-such-bucket-reid/idx", "--out", str(work / "m-none")), "index"
    )
    assert "does not exist" in line


@pytest.mark.s3
def test_s3_without_credentials(s3_server, no_s3_config):
    line = assert_user_error(reid("synth", "s3://any-bucket/arch", *TINY_SYNTH, env=no_s3_config), "--out")
    assert "no AWS credentials" in line and "AWS_ACCESS_KEY_ID" in line


@pytest.mark.s3
def test_s3_endpoint_that_does_not_answer():
    """A TCP endpoint that accepts connections and never replies: refused within the pre-flight's
    short timeouts (one attempt), not after the SDK's minutes of retries."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        result = reid("synth", "s3://b/arch", *TINY_SYNTH, env=env, timeout=60)
    line = assert_user_error(result, "s3://b/arch", endpoint)
    assert "did not answer" in line
    # the check itself is bounded by REID_S3_PREFLIGHT_TIMEOUT (3 s); the rest is Python start-up
    assert result[3] < 15, result[3]


# --------------------------------------------------------------------------------------------
# 8 + 11. Options: NaN/inf refused, out of range in one line


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["match", "IDX", "--out", "M", "--threshold", "nan"], "--threshold", "nan"),
        (["match", "IDX", "--out", "M", "--threshold", "inf"], "--threshold", "inf"),
        (["train", "ARCH", "--out", "M", "--lr-head", "nan"], "--lr-head", "nan"),
        (["evaluate", "E", "--out", "R", "--threshold", "-inf"], "--threshold", "-inf"),
        (["synth", "S", "--images-per-individual", "nan"], "--images-per-individual", "nan"),
        (
            ["embed", "A", "--model", "timm:resnet18", "--out", "E", "--gpus-per-actor", "nan"],
            "--gpus-per-actor",
            "nan",
        ),
        (["embed", "A", "--model", "M", "--out", "E", "--cpus-per-actor", "inf"], "--cpus-per-actor", "inf"),
    ],
)
def test_non_finite_numbers_refused(tmp_path, args, option, value):
    line = assert_user_error(reid(*args, cwd=tmp_path), option, value)
    assert "not a finite number" in line
    assert not any(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["match", "IDX", "--out", "M", "--k", "0"],
            "error: reid match: --k 0: out of range (allowed: 1 to 1000)",
        ),
        (
            ["synth", "S", "--years", "500"],
            "error: reid synth: --years 500: out of range (allowed: 1 to 100)",
        ),
        (
            ["split", "A", "--out", "s.parquet", "--test-fraction", "1.5"],
            "error: reid split: --test-fraction 1.5: out of range (allowed: > 0 and < 1)",
        ),
        (
            ["train", "A", "--out", "M", "--epochs", "0"],
            "error: reid train: --epochs 0: out of range (allowed: >= 1)",
        ),
    ],
)
def test_out_of_range_option_is_one_line(tmp_path, args, expected):
    assert assert_user_error(reid(*args, cwd=tmp_path)) == expected


def test_strict_json_writer(tmp_path):
    """Manifests, history.json and metrics.json go through one writer: NaN/inf become null."""
    import numpy as np

    from reid import manifest

    storage.write_json(str(tmp_path / "h.json"), [{"loss": float("nan"), "acc": np.float32(0.5)}])
    assert _strict((tmp_path / "h.json").read_text()) == [{"loss": None, "acc": 0.5}]
    manifest.write_manifest(str(tmp_path / "o"), "x", {"t": float("inf")}, [], {"n": 1}, manifest.now())
    assert _strict((tmp_path / "o" / "_manifest.json").read_text())["config"]["t"] is None


# --------------------------------------------------------------------------------------------
# 11. A killed writer's temporary file is swept by the next run (its own output only)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_killed_writers_temp_files_are_swept(tmp_path, work):
    """A writer killed between writing its temporary file and renaming it leaves ``.tmp-*``; the
    next run of the job on that output removes it (a live writer's file is kept)."""
    out = tmp_path / "survey"
    assert reid("synth", str(out), *TINY_SYNTH)[0] == 0
    host = storage.HOST_TAG
    dead = out / f".tmp-{host}-{_dead_pid()}-{uuid.uuid4().hex}-part-00000.parquet"
    live = out / f".tmp-{host}-{os.getpid()}-{uuid.uuid4().hex}-part-00001.parquet"
    old_style = out / f".tmp-{uuid.uuid4().hex}-_manifest.json"
    for f in (dead, live, old_style):
        f.write_bytes(b"partial")
    elsewhere = work / f".tmp-{host}-{_dead_pid()}-{uuid.uuid4().hex}-x"  # not this job's output
    elsewhere.write_bytes(b"partial")
    rc, _, err, _ = reid("synth", str(out), *TINY_SYNTH)
    assert rc == 0, err
    assert not dead.exists() and not old_style.exists()
    assert live.exists() and elsewhere.exists()
    elsewhere.unlink()


def test_a_writer_that_dies_mid_write_leaves_a_file_the_sweep_removes(tmp_path):
    """A real writer process fails between writing its temporary file and the rename (the target
    is a folder) and exits: its file carries its host and pid, so the sweep knows it is dead."""
    (tmp_path / "out" / "target").mkdir(parents=True)
    (tmp_path / "out" / "target" / "keep").write_text("x")
    code = f"from reid import storage; storage.write_bytes({str(tmp_path / 'out' / 'target')!r}, b'x' * 1000)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    left = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and left[0].startswith(f".tmp-{storage.HOST_TAG}-")
    assert storage.sweep_temp(str(tmp_path / "out")) == [str(tmp_path / "out" / left[0])]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["target"]


# --------------------------------------------------------------------------------------------
# 4. A relative archive path reaches Ray Train's workers (another working directory) as absolute


@pytest.mark.ray
@pytest.mark.slow
def test_train_on_relative_paths(work, tmp_path):
    shutil.copytree(work / "arch", tmp_path / "arch")
    rc, out, err, _ = reid("train", "arch", "--out", "model", *TINY_TRAIN, cwd=tmp_path, timeout=900)
    assert rc == 0, err[-3000:]
    # no traceback at all: Ray's own (PlacementGroupCleaner's, dashboard off) stays in its logs
    assert "Traceback" not in err and "not found" not in err, err[-3000:]
    m = _strict((tmp_path / "model" / "_manifest.json").read_text())
    assert m["config"]["archive"] == str(tmp_path / "arch") and m["config"]["out"] == str(tmp_path / "model")
    history = _strict((tmp_path / "model" / "history.json").read_text())
    assert history and all("loss" in row for row in history[1:])
    assert (tmp_path / "model" / "model.json").exists()


# --------------------------------------------------------------------------------------------
# 1. No AWS key in Ray's session folder or any output, for real jobs on S3


def _grep_tree(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue  # sockets, vanished files
            hits += [f"{path}: {n.decode()}" for n in needles if n in data]
    return hits


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
def test_no_secret_in_ray_logs_or_outputs(s3_server, tmp_path):
    """train, embed, index, match and evaluate on the moto S3 endpoint with a distinctive fake key:
    zero copies of the key or the secret in Ray's whole temp folder, the outputs and the jobs'
    own output; every JSON output parses with a strict parser."""
    import boto3

    key = "AKIAREIDFAKE" + uuid.uuid4().hex[:8].upper()
    secret = "reid-fake-secret-" + uuid.uuid4().hex
    bucket = f"leak-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    s3.create_bucket(Bucket=bucket)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths are limited
    cache = tmp_path / "cache"
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "RAY_TMPDIR": str(ray_tmp)}
    b = f"s3://{bucket}"
    steps = [
        ["synth", f"{b}/arch", *TINY_SYNTH],
        ["train", f"{b}/arch", "--out", f"{b}/model", *TINY_TRAIN, "--cache-dir", str(cache)],
        ["embed", f"{b}/arch", "--model", f"{b}/model", "--out", f"{b}/emb", "--batch-size", "16", "--num-cpus", "2"],
        ["index", f"{b}/emb", "--out", f"{b}/idx", "--num-cpus", "2"],
        ["match", f"{b}/idx", "--out", f"{b}/m", "--k", "3", "--num-cpus", "2"],
        ["evaluate", f"{b}/emb", "--out", f"{b}/report", "--no-report"],
    ]  # fmt: skip
    logs = []
    try:
        for args in steps:
            rc, out, err, _ = reid(*args, env=env, timeout=900)
            logs.append(out + err)
            assert rc == 0, (args[0], err[-3000:])
        sessions = list((ray_tmp / "ray").glob("session_*"))
        assert sessions, "the jobs ran on a local Ray whose session folder is searched"
        needles = [key.encode(), secret.encode()]
        hits = _grep_tree(ray_tmp, needles) + _grep_tree(cache, needles)
        hits += [f"output of reid: {n.decode()}" for n in needles for log in logs if n.decode() in log]
        objects = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                   for o in page.get("Contents", [])]  # fmt: skip
        assert any(k.endswith("history.json") for k in objects) and any(
            k.endswith("metrics.json") for k in objects
        )
        for k in objects:
            data = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
            hits += [f"s3://{bucket}/{k}: {n.decode()}" for n in needles if n in data]
            if k.endswith(".json"):
                _strict(data.decode())  # manifests, history.json, metrics.json, model.json
        assert hits == [], hits
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
