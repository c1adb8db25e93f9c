"""The GPU check's dry run: the same script, toy sizes, on this machine's CPU, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_line_per_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ["environment", "train", "embed", "decode", "search"]
    assert not [r for r in rows if "error" in r]
    by = {r["step"]: r for r in rows}
    assert by["environment"]["mode"] == "dry-run"
    assert by["train"]["epochs"] == 2 and by["train"]["job_images_per_s"] > 0
    assert by["train"]["plain_images_per_s"] > 0
    assert by["embed"]["rows"] == 24 and by["embed"]["bound_by"] in ("decode", "model")
    assert by["decode"]["cpu_region_decode_per_core"] > 0 and by["decode"]["device_decode_per_s"] > 0
    sweep = by["search"]["ivf"]["sweep"]
    assert sweep[-1]["recall_at_10"] >= sweep[0]["recall_at_10"] > 0
    assert by["search"]["fp32"]["faiss_tflops"] > 0
    assert json.loads((out / "gpu_check.json").read_text()) == rows


def test_gpu_check_refuses_unknown_steps_and_missing_gpu(tmp_path):
    script = str(REPO / "benchmarks" / "gpu_check.py")
    proc = subprocess.run([sys.executable, script, "--dry-run", "--steps", "train,fly", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: --steps fly: choose from train,embed,decode,search"
    )
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 2 and "--dry-run" in proc.stderr and "Traceback" not in proc.stderr
