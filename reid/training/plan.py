"""What a run trains and validates on, from the archive's metadata only (no images): labels, the
split, the classes, and the checks a loss needs before any worker starts."""

from __future__ import annotations

import dataclasses

from reid.data import trainval
from reid.data.labels import images_per_individual, labeled, read_labels
from reid.errors import ConfigError
from reid.training.config import TrainConfig

__all__ = ["DataPlan", "plan_data"]


@dataclasses.dataclass
class DataPlan:
    """What the run trains and validates on (computed identically by the driver and each worker)."""

    split: trainval.Split
    classes: list[str]
    train_ids: list[str]
    val_ids: list[str]
    val_archive: str  # where the validation images are read from


def plan_data(cfg: TrainConfig) -> DataPlan:
    """Labels, split and the checks a loss needs, from the archive's metadata only (no images)."""
    from reid.model import losses

    labels = read_labels(cfg.archive)
    pair = losses.is_pair_loss(cfg.loss)
    split = trainval.make_split(
        labels, cfg.split, 0.0 if cfg.val_archive else cfg.val_fraction, cfg.seed,
        min_train_images=2 if pair else 1, by_viewpoint=cfg.flank_classes,
    )  # fmt: skip
    if cfg.val_archive:
        split.val = labeled(read_labels(cfg.val_archive))
        split.source = f"val_archive:{cfg.val_archive}"
        shared = set(split.val.column("individual_id").to_pylist()) & set(
            split.train.column("individual_id").to_pylist()
        )
        if shared:
            raise ConfigError(
                f"val_archive {cfg.val_archive}: {len(shared)} individual(s) also in {cfg.archive} "
                f"(e.g. {sorted(shared)[0]!r}); validation needs individuals unseen in training"
            )
    n_ids = len(split.classes)
    if n_ids == 0:
        counts = images_per_individual(labeled(labels))
        why = (
            f"no individual has 2 or more training images (the archive has {len(counts)} labelled "
            f"individual(s), at most {max(counts.values(), default=0)} image(s) each); loss {cfg.loss!r} "
            "learns from pairs of images of one individual: add images, or use loss = 'arcface'"
            if pair
            else "no labelled training images (individual_id is null everywhere)"
        )
        raise ConfigError(f"archive {cfg.archive}: {why}")
    need = cfg.p * cfg.workers
    if n_ids < need or (pair and n_ids < 2):
        raise ConfigError(
            f"archive {cfg.archive}: {n_ids} trainable individual(s) "
            f"({'with 2+ images, ' if pair else ''}{split.source} split) cannot fill batches of p={cfg.p} "
            f"individuals on {cfg.workers} worker(s) ({need} distinct per step); lower --p or --workers"
        )
    return DataPlan(
        split=split,
        classes=split.classes,
        train_ids=split.train.column("image_id").to_pylist(),
        val_ids=split.val.column("image_id").to_pylist(),
        val_archive=cfg.val_archive or cfg.archive,
    )
