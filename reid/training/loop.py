"""The epoch loop a training worker runs: restore, baseline, train, validate, keep the best model,
write the history, hand each epoch's state to whoever checkpoints it. Plain torch: the Ray Train
worker (``jobs/train.py``) passes a ``report`` that turns the state folder into a Ray checkpoint."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

from reid.training.history import metric_key, tensorboard, val_map, write_history
from reid.training.session import Session

__all__ = ["STATE", "Report", "fit"]

STATE = "state.pt"  # a checkpoint folder's one file: Session.state()
# report(metrics, state folder or None (ranks > 0), epoch): called by every rank after each epoch
Report = Callable[[dict, "str | None", int], None]


def fit(session: Session, state: dict | None = None, report: Report | None = None) -> None:
    """Train ``session`` from ``state`` (a checkpoint's, or None for a new run) to ``cfg.epochs``.

    Rank 0 writes the model package (best or last epoch), history.json/.csv, TensorBoard scalars
    and the per-epoch maps; every rank calls ``report`` with the same metrics.
    """
    import torch

    from reid.model.package import save_package

    cfg, rank = session.cfg, session.rank
    restored = 0
    if state is not None:
        session.load_state(state)
        restored = session.epoch
    session.wrap()
    writer = tb_dir = tb_upload = None
    if rank == 0:
        writer, tb_dir, tb_upload = tensorboard(cfg)
    if state is None:  # the untrained baseline, same architecture and data: epoch 0
        row = {"epoch": 0, **session.validate(), "replicas_in_sync": session.replicas_in_sync()}
        session.history = [row]
        if rank == 0:
            val_map(cfg, session, 0)
    for epoch in range(session.epoch + 1, cfg.epochs + 1):
        if session.should_stop():
            break
        t0 = time.perf_counter()
        row = {"epoch": epoch, **session.train_epoch(epoch)}
        row.update(session.validate())
        if rank == 0:
            val_map(cfg, session, epoch)
        row["replicas_in_sync"] = session.replicas_in_sync()
        row["lr_backbone"] = session.optimizer.param_groups[0]["lr"]
        row["restored_from_epoch"] = restored
        row["epoch_s"] = time.perf_counter() - t0
        improved = session.end_epoch(epoch, row)
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
            state_dir = None
            if rank == 0:
                if improved or cfg.keep == "last":
                    save_package(session.model, session.spec, cfg.out)
                torch.save(session.state(), os.path.join(tmp, STATE))
                state_dir = tmp
                for k, v in row.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        writer.add_scalar(metric_key(k), v, epoch)
                writer.flush()
                write_history(cfg.out, session.history, tb_dir, tb_upload)
            metrics = {metric_key(k): v for k, v in row.items() if isinstance(v, (int, float))}
            if report is not None:
                report(metrics, state_dir, epoch)
    if rank == 0:
        write_history(cfg.out, session.history, tb_dir, tb_upload)
        writer.close()
