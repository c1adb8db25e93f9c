"""Trained vs untrained accuracy on individuals the model never saw, through the real jobs.

    python benchmarks/train_accuracy.py synth [--config configs/synth-cnn.toml] [--work DIR] [--seeds 0,1,2]
    python benchmarks/train_accuracy.py lions [--config configs/lions.toml] [--lions DIR]

``synth``: `reid synth` generates a training survey and, with another seed, a test survey of
other individuals; ``lions``: `reid ingest` reads ../shared/datasets/lions train/ and val/ (val
lions never appear in train/). Then `reid train` (Ray Train, validating on the test archive),
`reid embed` of the test archive with the trained model and with the same architecture
untrained (random init, same seed), and `reid evaluate` leave-one-out on both (same-burst
near-duplicates excluded), once comparing like flanks only and once any two photos. With
``--seeds``, one training run per seed and the spread (mean [min-max]) over seeds.

Ends with one JSON line of the figures (trained_* / untrained_* accuracy@1/5/10 and mAP, train_s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.runtime import connect  # noqa: E402
from jobs import embed, evaluate, ingest, synth, train  # noqa: E402
from reid.model.network import create_model  # noqa: E402
from reid.model.package import save_package  # noqa: E402

SYNTH_TRAIN = dict(individuals=200, years=2, images_per_individual=80, image_size=96, seed=11)
SYNTH_TEST = dict(individuals=40, years=3, images_per_individual=10, image_size=96, seed=21)


def archives(dataset: str, work: Path, lions: Path, train_kw: dict | None = None) -> tuple[str, str]:
    tr, te = str(work / "train_archive"), str(work / "test_archive")
    if dataset == "synth":
        train_kw = {**SYNTH_TRAIN, **(train_kw or {})}
        for out, kw in ((tr, train_kw), (te, SYNTH_TEST)):
            if not (Path(out) / "_manifest.json").exists():
                synth.run(synth.SynthJobConfig(out=out, **kw))
    else:
        for out, sub in ((tr, "train"), (te, "val")):
            if not (Path(out) / "_manifest.json").exists():
                ingest.run(ingest.IngestConfig(src=str(lions / sub), out=out, species="lion"))
    return tr, te


def score(model: str, test: str, work: Path, name: str, tag: str = "") -> dict:
    emb = str(work / f"emb_{name}{tag}")
    embed.run(embed.EmbedConfig(archive=test, model=model, out=emb, batch_size=64))
    out = {}
    for same_view in (True, False):
        view = "" if same_view else "_anyview"
        evaluate.run(
            evaluate.EvaluateConfig(
                embeddings=emb,
                out=str(work / f"eval_{name}{tag}{view}"),
                exclude_same_burst=True,
                same_viewpoint=same_view,
                report=False,
            )
        )
        m = json.loads((work / f"eval_{name}{tag}{view}" / "metrics.json").read_text())
        for key in ("accuracy@1", "accuracy@5", "accuracy@10", "map"):
            out[f"{name}_{key.replace('@', '')}{view}"] = round(m[key], 4)
        out[f"queries{view}"] = m["n_queries"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", default="synth", choices=["synth", "lions"])
    ap.add_argument("--config", help="training settings (TOML/YAML); default configs/<dataset>*.toml")
    ap.add_argument("--work", type=Path, help="working folder (kept; re-runs reuse its archives)")
    ap.add_argument("--lions", type=Path, default=REPO.parent / "shared" / "datasets" / "lions")
    ap.add_argument("--epochs", type=int, help="override the config's epochs")
    ap.add_argument(
        "--seeds",
        default=None,
        help="training seeds, comma-separated (initial weights, batches); default: the config's",
    )
    ap.add_argument(
        "--train-individuals", type=int, help=f"synth: training survey size [{SYNTH_TRAIN['individuals']}]"
    )
    ap.add_argument(
        "--train-images",
        type=float,
        help=f"synth: photos per individual and survey [{SYNTH_TRAIN['images_per_individual']}]",
    )
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    a = ap.parse_args()
    config = a.config or str(REPO / "configs" / ("synth-cnn.toml" if a.dataset == "synth" else "lions.toml"))
    work = a.work or Path(tempfile.mkdtemp(prefix=f"reid-acc-{a.dataset}-"))
    work.mkdir(parents=True, exist_ok=True)
    connect(num_cpus=a.cpus)
    sizes = {"individuals": a.train_individuals, "images_per_individual": a.train_images}
    tr, te = archives(a.dataset, work, a.lions, {k: v for k, v in sizes.items() if v})
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [None]
    runs = [run_seed(config, tr, te, work, a.epochs, seed, a.dataset) for seed in seeds]
    if len(runs) == 1:
        print(json.dumps(runs[0]))
        return
    print(f"\n{a.dataset}: {len(runs)} seeds ({a.seeds}); accuracy@1 mean [min-max]")
    summary: dict = {"dataset": a.dataset, "seeds": seeds, "per_seed": runs}
    for name in ("trained", "untrained"):
        for tag, what in (("", "like flanks"), ("_anyview", "any two photos")):
            vals = [r[f"{name}_accuracy1{tag}"] for r in runs]
            summary[f"{name}_accuracy1{tag}"] = [round(sum(vals) / len(vals), 4), min(vals), max(vals)]
            print(f"{name + ', ' + what:24s} {sum(vals) / len(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]")
    summary["train_s"] = [r["train_s"] for r in runs]
    print(json.dumps(summary))


def run_seed(
    config: str, tr: str, te: str, work: Path, epochs: int | None, seed: int | None, dataset: str
) -> dict:
    """Train with one seed, score the trained and the untrained model; prints a table, returns figures."""
    tag = "" if seed is None else f"-s{seed}"
    model = str(work / f"model{tag}")
    cfg = train.make_config(config, archive=tr, out=model, val_archive=te, epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    summary = train.run(cfg)
    train_s = time.perf_counter() - t0
    untrained = str(work / f"untrained{tag}")
    if not (Path(untrained) / "model.json").exists():
        import torch

        torch.manual_seed(cfg.seed)  # the initial weights training started from
        save_package(create_model(cfg.model_spec(), load_pretrained=False), None, untrained)
    figures = {"dataset": dataset, "seed": cfg.seed, "backbone": cfg.backbone, "input_size": cfg.input_size,
               "epochs": summary.get("epochs_run"), "train_s": round(train_s, 1),
               "best_epoch": summary.get("best_epoch")}  # fmt: skip
    figures.update(score(model, te, work, "trained", tag))
    figures.update(score(untrained, te, work, "untrained", tag))
    print(f"{dataset}: {cfg.backbone} @ {cfg.input_size}px, seed {cfg.seed}, {figures['epochs']} epochs in "
          f"{train_s:.0f} s; test individuals never seen in training; leave-one-out, same burst excluded")  # fmt: skip
    print(f"{'':24s} {'acc@1':>7s} {'acc@5':>7s} {'acc@10':>7s} {'mAP':>7s}")
    for name in ("trained", "untrained"):
        for view, what in (("", "like flanks"), ("_anyview", "any two photos")):
            row = [figures[f"{name}_{k}{view}"] for k in ("accuracy1", "accuracy5", "accuracy10", "map")]
            print(f"{name + ', ' + what:24s} " + " ".join(f"{v:7.3f}" for v in row))
    return figures


if __name__ == "__main__":
    main()
