"""One worker's training state and steps: model, loss, optimiser, data, validation; plain torch.

:class:`Session` is what a Ray Train worker runs (``jobs/train.py``) and what the benchmark's
plain loop runs (``benchmarks/train_overhead.py``): no Ray here. ``rank``/``world`` describe
torch.distributed, already initialised when world > 1.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from reid.allocator import keep_freed_memory
from reid.data.cache import ensure_cache
from reid.data.dataset import CachedImages
from reid.training.config import TrainConfig
from reid.training.plan import DataPlan, plan_data
from reid.training.schedule import lr_lambda

if TYPE_CHECKING:
    import torch

__all__ = ["Session", "normal_priority"]


def _distributed(world: int) -> bool:
    import torch.distributed as dist

    return world > 1 and dist.is_available() and dist.is_initialized()


class Session:
    """One worker's training state: model, loss, optimiser, data; plain torch (no Ray).

    ``rank``/``world`` describe torch.distributed (already initialised when world > 1).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        rank: int = 0,
        world: int = 1,
        device: torch.device | None = None,
        plan: DataPlan | None = None,
    ) -> None:
        import torch
        from torch.utils.data import DataLoader

        from reid.data import sampler
        from reid.images import transforms
        from reid.model import losses
        from reid.model.network import create_model

        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = device or torch.device("cpu")
        if self.device.type == "cpu":
            keep_freed_memory()  # activations stay in the heap between steps (reid/allocator.py)
        torch.manual_seed(cfg.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        self.plan = plan or plan_data(cfg)
        self.model = create_model(cfg.model_spec()).to(self.device)
        self.spec = self.model.spec
        cache_dir = cfg.resolved_cache_dir()
        self.train_cache = ensure_cache(cfg.archive, self.plan.train_ids, cache_dir, "train", cfg.input_size)
        self.train_ds = CachedImages(
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
            self.val_cache = ensure_cache(
                self.plan.val_archive, self.plan.val_ids, cache_dir, "eval", cfg.input_size
            )
            if self.val_cache.rows:
                self.val_ds = CachedImages(
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
            lr_lambda(total, warmup, cfg.schedule, frozen if g["name"] == "backbone" else 0)
            for g in param_groups
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambdas)
        self.margin_warmup_steps = int(cfg.margin_warmup_epochs * steps)
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
            if self.margin_warmup_steps:  # by the global step, so a resumed run continues the ramp
                self.criterion.scale_margin(self.scheduler.last_epoch / self.margin_warmup_steps)
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

    def embed_val(self) -> tuple[np.ndarray, np.ndarray]:
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
        from reid.evaluation.exclusions import validation_exclusion
        from reid.evaluation.metrics import retrieval_metrics

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
    from reid.model.losses import CLASSIFICATION_LOSSES

    return CLASSIFICATION_LOSSES


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
