"""Real photos: zero-shot pretrained vs fine-tuned vs from scratch, under both published protocols.

    python benchmarks/lions_protocols.py [--recipes zeroshot,pretrained,scratch] [--seeds 0,1,2]
                                         [--protocols identity,closed] [--work DIR] [--lions DIR]
                                         [--config NAME=PATH ...]   (your own recipe, by name)

Runs the real jobs on ../shared/datasets/lions (`reid ingest`, `reid split`, `reid train`,
`reid embed`, `reid evaluate`):

- ``identity`` (unseen individuals, what an open population needs): train/ lions train, the 19
  val/ lions are embedded and scored leave-one-out (same burst excluded), like flanks and any two
  photos.
- ``closed`` (the wildlife-datasets baselines' protocol, beside MegaDescriptor-L-384's 0.252 on
  LionData): all 94 lions, `reid split --kind closed-photo` (~80/20 by photo, every individual
  on both sides), test photos queried against the training photos by cosine 1-NN.

Recipes: ``zeroshot`` (the pretrained backbone's pooled ImageNet features, no training),
``pretrained`` (configs/lions-pretrained.toml), ``scratch`` (configs/lions.toml, random init);
``--config NAME=PATH`` adds a recipe (or replaces one) to compare under the same protocols.
The last epoch's model is scored (``keep = "last"``): the validation images are the test images
here, so picking the best epoch would select on the test set. Each (recipe, protocol, seed)
prints its figures; the run ends with a table (mean and range over
seeds) and one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.runtime import connect  # noqa: E402
from jobs import embed, evaluate, ingest, split, train  # noqa: E402

CONFIGS = {
    "pretrained": "configs/lions-pretrained.toml",
    "scratch": "configs/lions.toml",
}
ZERO_SHOT = "efficientnet-lite:efficientnet_lite0"


def ingest_once(src: Path, out: Path) -> str:
    if not (out / "_manifest.json").exists():
        ingest.run(ingest.IngestConfig(src=str(src), out=str(out), species="lion"))
    return str(out)


def evaluate_once(emb: str, out: Path, split_table: str | None, same_view: bool) -> dict:
    if not (out / "metrics.json").exists():
        kw = {"protocol": "split", "split": split_table} if split_table else {"exclude_same_burst": True}
        evaluate.run(
            evaluate.EvaluateConfig(
                embeddings=emb, out=str(out), same_viewpoint=same_view, report=False, **kw
            )
        )
    m = json.loads((out / "metrics.json").read_text())
    return {k: round(m[k], 4) for k in ("accuracy@1", "accuracy@5", "map")} | {"queries": m["n_queries"]}


def training_seconds(model: str) -> float:
    """The training run's wall time from its manifest (also when a re-run reuses the model)."""
    m = json.loads((Path(model) / "_manifest.json").read_text())
    start, end = (dt.datetime.fromisoformat(m[k]) for k in ("started_at", "ended_at"))
    return (end - start).total_seconds()


def run_one(recipe: str, protocol: str, seed: int, work: Path, data: dict, epochs: int | None) -> dict:
    """Train (unless zero-shot), embed the evaluation archive, score like flanks and any two photos."""
    tag = f"{recipe}-{protocol}-s{seed}"
    arch = data["all"] if protocol == "closed" else data["val"]
    model, train_s = ZERO_SHOT, 0.0
    if recipe != "zeroshot":
        model = str(work / f"model-{tag}")
        if protocol == "closed":
            cfg = train.make_config(
                str(REPO / CONFIGS[recipe]), archive=data["all"], split=data["split"], out=model, seed=seed,
                epochs=epochs, keep="last",
            )  # fmt: skip
        else:
            cfg = train.make_config(
                str(REPO / CONFIGS[recipe]), archive=data["train"], val_archive=data["val"], out=model,
                seed=seed, epochs=epochs, keep="last",
            )  # fmt: skip
        train.run(cfg)
        train_s = training_seconds(model)
    emb = str(work / f"emb-{tag}")
    embed.run(embed.EmbedConfig(archive=arch, model=model, out=emb, batch_size=64))
    split_table = data["split"] if protocol == "closed" else None
    row = {"recipe": recipe, "protocol": protocol, "seed": seed, "train_s": round(train_s, 1)}
    for same_view, suffix in ((True, ""), (False, "_anyview")):
        m = evaluate_once(emb, work / f"eval-{tag}{suffix}", split_table, same_view)
        row.update({f"{k.replace('@', '')}{suffix}": v for k, v in m.items()})
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="zeroshot,pretrained,scratch")
    ap.add_argument("--protocols", default="identity,closed")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (the split stays seed 0)")
    ap.add_argument("--epochs", type=int, help="override the recipes' epochs")
    ap.add_argument("--work", type=Path, help="working folder (kept; re-runs reuse what is done)")
    ap.add_argument("--lions", type=Path, default=REPO.parent / "shared" / "datasets" / "lions")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--config", action="append", default=[], metavar="NAME=PATH", help="add a recipe")
    a = ap.parse_args()
    for item in a.config:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--config {item!r}: expected NAME=PATH to a training config file")
        CONFIGS[name] = str(Path(path).resolve())
    work = a.work or Path(tempfile.mkdtemp(prefix="reid-lions-"))
    work.mkdir(parents=True, exist_ok=True)
    connect(num_cpus=a.cpus)
    data = {
        "train": ingest_once(a.lions / "train", work / "archive-train"),
        "val": ingest_once(a.lions / "val", work / "archive-val"),
        "all": ingest_once(a.lions, work / "archive-all"),
        "split": str(work / "closed-photo.parquet"),
    }
    if not Path(data["split"]).exists():
        split.run(split.SplitConfig(archive=data["all"], out=data["split"], kind="closed-photo", seed=0))
    rows = []
    for protocol in a.protocols.split(","):
        for recipe in a.recipes.split(","):
            seeds = [0] if recipe == "zeroshot" else [int(s) for s in a.seeds.split(",")]
            rows += [run_one(recipe, protocol, s, work, data, a.epochs) for s in seeds]
    print(f"\nlions: {work}; identity = 19 unseen val/ lions, leave-one-out, same burst excluded; "
          "closed = closed-photo split of all 94 lions, test vs train photos")  # fmt: skip
    print(
        f"{'recipe':11s} {'protocol':9s} {'acc@1 like flanks':>22s} {'acc@1 any photos':>22s} {'train s':>8s}"
    )
    summary = {}
    for protocol in a.protocols.split(","):
        for recipe in a.recipes.split(","):
            sel = [r for r in rows if r["recipe"] == recipe and r["protocol"] == protocol]
            cells = []
            for key in ("accuracy1", "accuracy1_anyview"):
                vals = [r[key] for r in sel]
                mean = statistics.fmean(vals)
                summary[f"{recipe}_{protocol}_{key}"] = round(mean, 4)
                summary[f"{recipe}_{protocol}_{key}_range"] = [min(vals), max(vals)]
                cells.append(f"{mean:.3f} [{min(vals):.3f}-{max(vals):.3f}]")
            secs = statistics.fmean(r["train_s"] for r in sel)
            summary[f"{recipe}_{protocol}_train_s"] = round(secs, 1)
            print(f"{recipe:11s} {protocol:9s} {cells[0]:>22s} {cells[1]:>22s} {secs:8.0f}")
    print(json.dumps({"dataset": "lions", "seeds": a.seeds, **summary}))


if __name__ == "__main__":
    main()
