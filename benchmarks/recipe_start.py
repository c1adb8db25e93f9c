"""Does a training recipe start learning from its first steps, whatever the seed?

    python benchmarks/recipe_start.py [--config configs/synth-cnn.toml ...] [--seeds 0,1,2] [--steps 50]

For each config and seed: a small `reid synth` survey (60 individuals x 16 photos; a test survey
of 20 other individuals), the recipe's Session (plain torch, what a Ray Train worker runs) for one
epoch of ``--steps`` steps with a short warm-up, and before and after it the test individuals'
leave-one-out accuracy@1 and the effective rank of their embeddings (participation ratio of the
covariance's eigenvalues: ~1 means every photo maps to one line). A recipe that collapses the
random network's features shows a falling rank and an accuracy below the untrained network's;
the same check is a test (tests/test_recipes.py). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jobs.synth import SynthJobConfig  # noqa: E402
from jobs.synth import run as run_synth  # noqa: E402
from reid.training.config import TrainConfig, load_config_file  # noqa: E402
from reid.training.session import Session  # noqa: E402


def effective_rank(emb: np.ndarray) -> float:
    ev = np.clip(np.linalg.eigvalsh(np.cov(emb.T)), 0, None)
    return float(ev.sum() ** 2 / max((ev**2).sum(), 1e-12))


def probe(session: Session) -> tuple[float, float]:
    acc = session.validate()["val_accuracy@1"]
    return acc, effective_rank(session.last_val[0])


def make_surveys(work: Path) -> None:
    """The training survey and a test survey of other individuals (kept; re-runs reuse them)."""
    if not (work / "train" / "_manifest.json").exists():
        run_synth(SynthJobConfig(out=str(work / "train"), individuals=60, years=1, images_per_individual=16,
                                 image_size=96, seed=11))  # fmt: skip
    if not (work / "test" / "_manifest.json").exists():
        run_synth(SynthJobConfig(out=str(work / "test"), individuals=20, years=1, images_per_individual=10,
                                 image_size=96, seed=21))  # fmt: skip


def run(config: str, seed: int, steps: int, work: Path) -> dict:
    raw = load_config_file(config)
    raw = {k: v for k, v in raw.get("train", raw).items() if k not in ("workers", "cpus_per_worker")}
    cfg = TrainConfig(
        **{**raw, "epochs": 1, "steps_per_epoch": steps, "warmup_epochs": 0.2},
        archive=str(work / "train"), val_archive=str(work / "test"), out=str(work / f"model-{seed}"), seed=seed,
        val_map="off", cache_dir=str(work / "cache"), torch_threads=2,
    )  # fmt: skip
    torch.set_num_threads(cfg.torch_threads)
    session = Session(cfg)
    acc0, rank0 = probe(session)
    t0 = time.perf_counter()
    loss = session.train_epoch(1)["loss"]
    secs = time.perf_counter() - t0
    acc1, rank1 = probe(session)
    return {"config": Path(config).name, "seed": seed, "loss": cfg.loss, "untrained_accuracy1": round(acc0, 3),
            "accuracy1": round(acc1, 3), "gain": round(acc1 - acc0, 3), "untrained_rank": round(rank0, 1),
            "rank": round(rank1, 1), "train_loss": round(loss, 3), "train_s": round(secs, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", action="append", help="training config file(s); default configs/synth-cnn.toml"
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="reid-recipe-start-"))
    make_surveys(work)
    rows = []
    print(
        f"{'config':24s} {'loss':8s} {'seed':>4s} {'acc@1 before -> after':>22s} {'rank before -> after':>21s}"
    )
    for config in a.config or [str(REPO / "configs" / "synth-cnn.toml")]:
        for seed in (int(s) for s in a.seeds.split(",")):
            r = run(config, seed, a.steps, work)
            rows.append(r)
            print(f"{r['config']:24s} {r['loss']:8s} {seed:4d} {r['untrained_accuracy1']:10.3f} -> {r['accuracy1']:.3f}"
                  f"{r['untrained_rank']:14.1f} -> {r['rank']:.1f}", flush=True)  # fmt: skip
    print(json.dumps({"steps": a.steps, "runs": rows}))


if __name__ == "__main__":
    main()
