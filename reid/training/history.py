"""What a run leaves behind as it goes: ``history.json``/``history.csv``, TensorBoard scalars,
the per-epoch 2-D map of the validation embeddings, and the closing summary."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from reid import storage
from reid.training.config import TrainConfig
from reid.training.plan import DataPlan

if TYPE_CHECKING:
    from reid.training.session import Session

__all__ = ["HISTORY", "metric_key", "summarize", "tensorboard", "val_map", "write_history"]

HISTORY = "history.json"


def write_history(out: str, history: list[dict], tb_dir: str | None, tb_upload: str | None) -> None:
    storage.write_json(storage.join(out, HISTORY), history)  # strict JSON: a NaN loss is written as null
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    storage.write_text(storage.join(out, "history.csv"), buf.getvalue())
    if tb_dir and tb_upload:  # s3 output: TensorBoard files are written locally and copied up
        for name in os.listdir(tb_dir):
            with open(os.path.join(tb_dir, name), "rb") as f:
                storage.write_bytes(storage.join(tb_upload, name), f.read())


def metric_key(name: str) -> str:
    """A history name as TensorBoard and Ray Train accept it (``val_accuracy@1`` -> ``val_accuracy_1``);
    history.json keeps the names users and tests read."""
    return re.sub(r"[^-/\w.]", "_", name)


def tensorboard(cfg: TrainConfig) -> tuple[Any, str | None, str | None]:
    """A TensorBoard writer for MODEL_DIR/tensorboard; on s3, (writer, local folder, upload prefix)."""
    from tensorboardX import SummaryWriter

    if storage.is_remote(cfg.out):
        local = os.path.join(
            cfg.resolved_cache_dir(), "tensorboard-" + hashlib.sha1(cfg.out.encode()).hexdigest()[:8]
        )
        return SummaryWriter(local), local, storage.join(cfg.out, "tensorboard")
    return SummaryWriter(os.path.join(storage.resolve(cfg.out)[1], "tensorboard")), None, None


def val_map(cfg: TrainConfig, session: Session, epoch: int) -> None:
    """MODEL_DIR/maps/epoch-NNNN.png: the 2-D map of the validation embeddings (clusters forming)."""
    last = getattr(session, "last_val", None)
    if last is None or cfg.val_map == "off":
        return
    from reid.evaluation.plots import embedding_map_png

    try:
        uri = storage.join(cfg.out, "maps", f"epoch-{epoch:04d}.png")
        embedding_map_png(
            last[0], last[1], uri, method=cfg.val_map, title=f"validation embeddings after epoch {epoch}"
        )
    except Exception as e:  # noqa: BLE001 - a plot must never stop a training run
        print(f"warning: embedding map of epoch {epoch} not written: {type(e).__name__}: {e}")


def summarize(cfg: TrainConfig, plan: DataPlan, history: list[dict], caches: dict) -> dict:
    """The closing summary of a run, from its history (epoch 0 = the untrained baseline) and caches."""
    trained = [r for r in history if r["epoch"] > 0]
    base = history[0] if history and history[0]["epoch"] == 0 else {}
    best_epoch = trained[-1]["best_epoch"] if trained else 0
    best = next((r for r in history if r["epoch"] == best_epoch), {})
    summary: dict = {
        "epochs_run": trained[-1]["epoch"] if trained else 0,
        "best_epoch": best_epoch,
        "stopped_early": bool(trained) and trained[-1]["epoch"] < cfg.epochs,
        "train_images": caches["train"].rows if "train" in caches else len(plan.train_ids),
        "train_individuals": len(set(plan.split.train.column("individual_id").to_pylist())),
        "train_classes": len(plan.classes),  # individuals x viewpoint with flank_classes
        "val_images": caches["eval"].rows if "eval" in caches else 0,
        "val_individuals": len(set(plan.split.val.column("individual_id").to_pylist())),
        "split": plan.split.source,
        "dropped_singletons": plan.split.dropped_singletons,
        "rejected": sum(len(c.rejects) for c in caches.values()),
        "resumed_from_epochs": sorted(
            {r["restored_from_epoch"] for r in trained if r.get("restored_from_epoch")}
        ),
        "replicas_in_sync": all(r.get("replicas_in_sync", True) for r in history),
        "final_loss": trained[-1]["loss"] if trained else float("nan"),
        "first_loss": trained[0]["loss"] if trained else float("nan"),
        "images_per_s": float(np.median([r["images_per_s"] for r in trained])) if trained else 0.0,
    }
    for key in ("accuracy@1", "accuracy@5", "accuracy@10", "map", "map@r"):
        if f"val_{key}" in best:
            summary[f"best_{key}"] = best[f"val_{key}"]
            summary[f"untrained_{key}"] = base.get(f"val_{key}")
    summary["model"] = cfg.out
    return summary
