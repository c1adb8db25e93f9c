"""Issue 15, what the user's terminal shows: no Ray noise, progress in a log as one line per unit.

The jobs run as the real ``reid`` command in a subprocess with stdout and stderr sent to files,
as ``reid train ... > log.txt 2> err.txt`` would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.runtime import quiet_ray_logs, user_warning
from jobs.common import LineProgress, progress

REPO = Path(__file__).resolve().parents[1]
TINY_SYNTH = ["--individuals", "8", "--years", "1", "--images-per-individual", "4", "--image-size", "32"]
TINY_TRAIN = [
    "--backbone", "resnet10t", "--input-size", "32", "--embedding-dim", "16", "--p", "2", "--k", "2",
    "--epochs", "2", "--steps-per-epoch", "2", "--augment", "0", "--val-fraction", "0.25",
    "--val-exclude", "none", "--loss", "contrastive", "--miner", "none", "--workers", "1",
]  # fmt: skip
# Ray's own lines seen on the terminal before (issue 15); none may reach the user.
RAY_NOISE = ("PlacementGroupCleaner", "Failed to query", "is illegal", "Token authentication", "(pid=")


def reid_to_files(folder: Path, name: str, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    """Run ``reid ARGS > name.out 2> name.err``; returns (exit status, stdout text, stderr text)."""
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    with out.open("w") as fo, err.open("w") as fe:
        rc = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=fo,
            stderr=fe,
            timeout=600,
        ).returncode
    return rc, out.read_text(), err.read_text()


def assert_no_ray_noise(*texts: str) -> None:
    for text in texts:
        noisy = [ln for ln in text.splitlines() if any(n in ln for n in RAY_NOISE) or "Traceback" in ln]
        assert noisy == [], noisy


# --------------------------------------------------------------------------------------------
# Progress: lines for a log, a switch to turn it off


def test_progress_writes_a_line_per_unit_to_a_log(capsys, monkeypatch):
    monkeypatch.delenv("REID_PROGRESS", raising=False)
    bar = progress(None, total=3, desc="embed", interval=0)  # pytest's stdout is not a terminal
    assert isinstance(bar, LineProgress)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["embed: 1/3 img", "embed: 2/3 img", "embed: 3/3 img"]
    # per-item loops (ingest) write at most one line per interval, and always the last
    assert list(progress(range(1000), total=1000, desc="ingest", interval=60)) == list(range(1000))
    assert capsys.readouterr().out.splitlines()[-1].startswith("ingest: 1,000/1,000 img (100%)")
    monkeypatch.setenv("REID_PROGRESS", "0")
    assert sum(progress(range(5), total=5, desc="off")) == 10
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------------------------
# Ray's driver-side records: to the session's log folder; those that matter, one line


def test_ray_driver_records_leave_the_terminal(capfd, monkeypatch, tmp_path):
    monkeypatch.delenv("REID_DEBUG", raising=False)
    quiet_ray_logs()
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    log.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
    logging.getLogger("ray.data._internal.execution.resource_manager").warning(
        "Cluster resources are not enough to run any task from MapBatches(Embedder). The job may hang"
    )
    err = capfd.readouterr().err
    assert "Token authentication" not in err
    assert len(err.splitlines()) == 1 and err.startswith("warning: the Ray cluster has too few"), err
    assert "MapBatches(Embedder)" in err and "add nodes" in err
    assert user_warning("Failed to query Ray Train Controller actor state.") is None
    (tmp_path / "logs").mkdir()
    quiet_ray_logs(str(tmp_path))  # once Ray has a session folder, its records are written there
    log.warning("Token authentication is enabled for this Ray cluster (after the session started)")
    for handler in logging.getLogger("ray").handlers:
        handler.flush()
    text = (tmp_path / "logs" / f"reid_driver_{os.getpid()}.log").read_text()
    assert "Token authentication is enabled for this Ray cluster (after the session started)" in text


# --------------------------------------------------------------------------------------------
# Real jobs on a local Ray, output to files


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quiet")
    rc, _, err = reid_to_files(root, "synth", "synth", str(root / "arch"), *TINY_SYNTH)
    assert rc == 0, err
    return root


@pytest.mark.ray
@pytest.mark.slow
def test_train_log_has_epoch_lines_and_no_ray_noise(archive):
    rc, out, err = reid_to_files(archive, "train", "train", str(archive / "arch"), "--out", str(archive / "m"),
                                 *TINY_TRAIN)  # fmt: skip
    assert rc == 0, err[-3000:]
    assert_no_ray_noise(out, err)
    epochs = [ln for ln in out.splitlines() if ln.startswith("train: ")]
    assert [re.match(r"train: (\d/2) epoch", ln).group(1) for ln in epochs] == ["1/2", "2/2"], out
    assert "loss=" in epochs[-1]
    history = json.loads((archive / "m" / "history.json").read_text())
    assert "val_accuracy@1" in history[-1]  # history keeps its names; only TensorBoard's are renamed


@pytest.mark.ray
@pytest.mark.slow
def test_embed_log_has_a_line_per_unit(archive):
    from reid.model.network import create_model
    from reid.model.package import save_package
    from reid.model.spec import ModelSpec

    spec = ModelSpec(backbone="resnet10t", embedding_dim=16, input_size=32)
    save_package(create_model(spec, load_pretrained=False), spec, str(archive / "pkg"))
    rc, out, err = reid_to_files(archive, "embed", "embed", str(archive / "arch"), "--model",
                                 str(archive / "pkg"), "--out", str(archive / "emb"), "--num-cpus", "2")  # fmt: skip
    assert rc == 0, err[-3000:]
    assert_no_ray_noise(out, err)
    units = json.loads((archive / "emb" / "_manifest.json").read_text())["counts"]["units"]
    lines = [ln for ln in out.splitlines() if ln.startswith("embed: ")]
    assert len(lines) == units and "(100%)" in lines[-1], out
