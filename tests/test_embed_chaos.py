"""Chaos: an embedding actor killed mid-job, and the whole driver killed mid-job then re-run."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from jobs.embed import EmbedConfig, read_embeddings, run
from reid import manifest, storage
from reid.archive import ArchiveWriter
from reid.model.network import create_model
from reid.model.package import save_package
from reid.model.spec import ModelSpec
from tests.support.images import jpeg_bytes, photo

pytestmark = [pytest.mark.ray, pytest.mark.chaos, pytest.mark.slow]
N = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    torch.manual_seed(0)
    spec = ModelSpec(backbone="resnet10t", embedding_dim=32, input_size=64)
    model = str(root / "model")
    save_package(create_model(spec, load_pretrained=False), spec, model)
    w = ArchiveWriter(str(root / "arch"), row_group_bytes=1)  # one row per unit: many units
    for i in range(N):
        w.add(
            {"image_id": f"img{i:03d}", "image": jpeg_bytes(photo(160, 120, seed=i)), "source": f"mem://{i}"}
        )
    w.close()
    manifest.write_manifest(str(root / "arch"), "ingest", {}, [], {"rows": N}, manifest.now())
    return root, model


def _parts(out):
    return len(storage.list_files(out, suffix=".parquet"))


def _wait_for_parts(out, n, timeout=180):
    deadline = time.time() + timeout
    while _parts(out) < n:
        assert time.time() < deadline, f"no progress: {_parts(out)} parts"
        time.sleep(0.2)


def test_killing_an_embedding_actor_loses_nothing(setup, ray_local):
    root, model = setup
    out = str(root / "emb-actor")
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            run(EmbedConfig(archive=str(root / "arch"), model=model, out=out, batch_size=1))
        )
    )
    t.start()
    _wait_for_parts(out, 5)
    victims = [p for p in psutil.process_iter(["cmdline"]) if "Embedder" in " ".join(p.info["cmdline"] or [])]
    assert victims, "no embedding actor process found"
    for p in victims:
        p.send_signal(signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive()
    assert result["embedded"] == N
    ids = read_embeddings(out).column("image_id").to_pylist()
    assert sorted(ids) == [f"img{i:03d}" for i in range(N)]  # exactly one embedding per row


def test_killed_driver_rerun_gives_same_ids_no_duplicates(setup, ray_local):
    root, model = setup
    out = str(root / "emb-driver")
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "embed",
        str(root / "arch"),
        "--model",
        model,
        "--out",
        out,
        "--batch-size",
        "1",
        "--num-cpus",
        "2",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_parts(out, 5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started: a lost machine
        proc.wait()
    committed = _parts(out)
    assert 5 <= committed < N and manifest.read_manifest(out) is None
    again = run(EmbedConfig(archive=str(root / "arch"), model=model, out=out, batch_size=4))
    assert again["skipped_units"] >= committed
    ids = read_embeddings(out).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == N
