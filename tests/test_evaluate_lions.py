"""`reid evaluate` on embeddings of lions/val reproduces training's validation numbers exactly.

The documented pipeline, command for command: ingest train and val (as two surveys), a time
split so training validates on lions/val, train briefly, embed lions/val with the trained model
package, evaluate leave-one-out (like viewpoints only, as training validates). Training validated with its own data path (cache + transforms);
the embed job decodes and normalises from the model package: equal numbers mean equal
preprocessing as well as equal metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def reid(*args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=1200
    )
    assert r.returncode == 0, f"reid {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_evaluate_equals_training_validation_on_lions_val(lions_dir, tmp_path):
    arch, val_arch = str(tmp_path / "archive"), str(tmp_path / "val_archive")
    split, model = str(tmp_path / "split.parquet"), str(tmp_path / "model")
    emb, out = str(tmp_path / "emb_val"), tmp_path / "eval"
    reid("ingest", str(lions_dir / "train"), arch, "--survey", "2023", "--species", "lion")
    reid("ingest", str(lions_dir / "val"), arch, "--survey", "2024", "--species", "lion")
    reid("split", arch, "--out", split, "--kind", "time", "--cutoff", "2024")
    reid("train", arch, "--out", model, "--split", split, "--epochs", "1", "--steps-per-epoch", "2",
         "--input-size", "64", "--embedding-dim", "64", "--backbone", "resnet18", "--p", "8", "--k", "4",
         "--cpus-per-worker", "2")  # fmt: skip
    reid("ingest", str(lions_dir / "val"), val_arch, "--survey", "2024", "--species", "lion")
    reid("embed", val_arch, "--model", model, "--out", emb, "--num-cpus", "2")
    # training validates like flanks only (val_same_viewpoint, on by default; lions photos carry
    # viewpoints such as face / left / right from their file names): evaluate the same way
    reid(
        "evaluate", emb, "--out", str(out), "--exclude-same-burst", "--same-viewpoint", "--map-method", "pca"
    )

    history = json.loads((tmp_path / "model" / "history.json").read_text())
    best = next(r for r in history if r["epoch"] == history[-1]["best_epoch"])
    doc = json.loads((out / "metrics.json").read_text())
    n_val = sum(1 for d in (lions_dir / "val").iterdir() for f in d.iterdir() if f.is_file())
    assert doc["n_queries"] == best["val_n_queries"] and 0.5 * n_val < doc["n_queries"] <= n_val
    assert doc["accuracy@1"] == best["val_accuracy@1"]
    for key in ("accuracy@5", "accuracy@10", "map", "map@r"):
        assert doc[key] == pytest.approx(best[f"val_{key}"], abs=1e-3), key
    # training drew the 2-D map of the validation embeddings before training and after each epoch
    for epoch in (0, 1):
        assert (tmp_path / "model" / "maps" / f"epoch-{epoch:04d}.png").read_bytes().startswith(b"\x89PNG")
