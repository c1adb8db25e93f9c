"""`reid keypoints`: resumable features job (a killed driver loses nothing, duplicates nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.keypoints import KeypointsConfig, run
from reid import archive, manifest, storage
from reid.archive import ArchiveWriter
from reid.errors import ReidError
from reid.local.store import FeatureStore, read_features
from tests.support.images import jpeg_bytes, photo

pytestmark = [pytest.mark.ray]
N = 24


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("kp")
    w = ArchiveWriter(str(root / "arch"), row_group_bytes=1)  # one row per unit: many units
    for i in range(N):
        data = b"not a jpeg" if i == 7 else jpeg_bytes(photo(200, 150, seed=i))
        w.add({"image_id": f"img{i:03d}", "image": data, "source": f"mem://{i}"})
    w.close()
    manifest.write_manifest(str(root / "arch"), "ingest", {}, [], {"rows": N}, manifest.now())
    return root


def _parts(out: str) -> int:
    return len([f for f in storage.list_files(out, suffix=".parquet") if "/part-" in f])


def _check_complete(out: str) -> None:
    store = FeatureStore(out)  # refuses an output without a manifest
    ids = []
    for f in store.files:
        ids += storage.read_parquet(f, columns=["image_id"]).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == N - 1  # every good row exactly once
    assert sorted(store.where()) == sorted(ids)  # the id table (_ids.parquet) finds each of them
    assert storage.read_parquet(storage.join(out, "_ids.parquet")).num_rows == N - 1
    rejects = archive.read_rejects(out)
    assert rejects.column("image_id").to_pylist() == ["img007"]
    assert rejects.column("reason")[0].as_py().startswith("corrupt")


def test_partial_run_resumes_and_other_settings_are_refused(arch, ray_local):
    out = str(arch / "feat")
    first = run(KeypointsConfig(archive=str(arch / "arch"), out=out, max_units=5, max_keypoints=200))
    assert first["todo_units"] == 5 and _parts(out) == 5 and manifest.read_manifest(out) is None
    again = run(KeypointsConfig(archive=str(arch / "arch"), out=out, max_keypoints=200))
    assert again["skipped_units"] == 5 and again["extracted"] + again["rejected"] == N - 5
    assert again["total_images"] == N - 1 and again["total_rejects"] == 1
    _check_complete(out)
    feats = read_features(out, ["img000", "img001", "nope"])
    assert sorted(feats) == ["img000", "img001"] and 0 < len(feats["img000"]) <= 200
    m = manifest.read_manifest(out)
    assert m["features_id"] == again["features_id"] and m["extractor"]["max_keypoints"] == 200
    with pytest.raises(ReidError, match="other extractor settings"):
        run(KeypointsConfig(archive=str(arch / "arch"), out=out, max_keypoints=300))
    with pytest.raises(ReidError, match="not a registered extractor"):
        run(KeypointsConfig(archive=str(arch / "arch"), out=str(arch / "x"), extractor="disk"))


@pytest.mark.slow
@pytest.mark.chaos
def test_killed_driver_rerun_loses_nothing_duplicates_nothing(arch, ray_local):
    out = str(arch / "feat-kill")
    cmd = [sys.executable, "-m", "jobs.cli", "keypoints", str(arch / "arch"), "--out", out, "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while _parts(out) < 4:
            assert time.time() < deadline and proc.poll() is None, f"no progress: {_parts(out)} parts"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started: a lost machine
        proc.wait()
    committed = _parts(out)
    assert 4 <= committed < N and manifest.read_manifest(out) is None
    again = run(KeypointsConfig(archive=str(arch / "arch"), out=out))
    assert again["skipped_units"] >= committed
    assert again["skipped_units"] + again["todo_units"] == N
    _check_complete(out)


def test_cli_refuses_an_unknown_extractor_in_one_line(arch):
    cmd = [sys.executable, "-m", "jobs.cli", "keypoints", str(arch / "arch"), "--out", str(arch / "y"),
           "--extractor", "aliked"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "aliked" in lines[0] and "sift" in lines[0] and "Traceback" not in res.stderr
