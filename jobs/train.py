"""`reid train ARCHIVE --out MODEL_DIR`: distributed metric learning with Ray Train.

One Ray Train ``TorchTrainer`` with N workers (gloo on CPU, NCCL on GPU, AMP on GPU). Each worker
reads its share of P x K batches from a local Arrow cache of the archive, pair losses mine
negatives across all workers (gathered embeddings), ArcFace weights are kept in sync by DDP.
After every epoch the held-out individuals are embedded (sharded over workers) and scored with
:mod:`reid.evaluation.metrics`; the best model so far is the model package at MODEL_DIR, every epoch is
checkpointed to MODEL_DIR/_ray (local or s3://). A killed worker restarts from the last
checkpoint (``max_failures``); re-running the same command resumes; a finished run is not redone.

MODEL_DIR: ``model.safetensors`` + ``model.json`` (best epoch), ``history.json``/``history.csv``,
``tensorboard/``, ``_rejects.parquet`` (rows that would not decode), ``_train_config.json``,
``_ray/`` (checkpoints), ``_manifest.json`` (last).

This module is the config's checks and the Ray Train wiring; the training itself (config, data
plan, schedule, :class:`~reid.training.Session`, epoch loop, history) is :mod:`reid.training`, plain
torch, so the benchmark's plain loop (benchmarks/train_overhead.py) runs the very same code.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from jobs.common import check_locations, parse_config
from jobs.registry import Flag, Job, add_job, key_values
from reid import archive, manifest, storage
from reid.data.cache import ensure_cache
from reid.errors import ConfigError
from reid.progress import follow_epochs, progress
from reid.training.config import RESUMABLE, TrainConfig, load_config_file
from reid.training.history import HISTORY, summarize
from reid.training.plan import DataPlan, plan_data

JOB = "train"
RUN_NAME = "train"
RAY_DIR = "_ray"
CONFIG_FILE = "_train_config.json"


def make_config(file: str | None = None, **overrides: Any) -> TrainConfig:
    """File values, then explicit overrides (CLI flags); pydantic errors become a ConfigError."""
    values = load_config_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(JOB, TrainConfig, **values)


def check(cfg: TrainConfig) -> DataPlan:
    """Every check that can fail on the user's input, before Ray or any worker starts."""
    from reid.model import losses
    from reid.model.spec import validate_spec

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
    """What a resumed run must share with the first: all but runtime settings and the length."""
    return {k: v for k, v in JOB_ENTRY.identity(cfg.model_dump()).items() if k not in RESUMABLE}


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


# ------------------------------------------------------------------------------- worker (Ray)
def train_worker(config: dict) -> None:
    """The Ray Train worker: a :class:`Session` restored from the last checkpoint, then
    :func:`reid.training.fit`, each epoch reported to Ray Train with its state as the checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    from reid.training.loop import STATE, fit
    from reid.training.session import Session, normal_priority

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
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE), map_location=session.device, weights_only=False)

    def report(metrics: dict, state_dir: str | None, epoch: int) -> None:
        ckpt = ray.train.Checkpoint.from_directory(state_dir) if state_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{epoch:04d}")

    fit(session, state, report)


# ------------------------------------------------------------------------------------ driver
def _prepare_caches(cfg: TrainConfig, plan: DataPlan) -> dict:
    """Build the local caches in the driver (with a progress bar); workers on this machine reuse them."""
    cache_dir = cfg.resolved_cache_dir()
    out = {}
    for mode, ids, uri in (("train", plan.train_ids, cfg.archive), ("eval", plan.val_ids, plan.val_archive)):
        if not ids:
            continue
        with progress(range(len(ids)), total=len(ids), desc=f"cache {mode}") as bar:
            info = ensure_cache(uri, ids, cache_dir, mode, cfg.input_size, progress=bar)
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

    from cluster.runtime import connect, worker_env

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
            worker_runtime_env=worker_env(gpu),
        ),
    )
    with follow_epochs(storage.join(cfg.out, HISTORY), cfg.epochs, ("loss", f"val_{cfg.monitor}")):
        trainer.fit()  # worker output stays in Ray's logs: per-epoch lines come from history.json
    history = json.loads(storage.read_text(storage.join(cfg.out, HISTORY)))
    summary = summarize(cfg, plan, history, caches)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    from reid.model.package import read_spec

    model_id = read_spec(cfg.out).model_id
    manifest.write_manifest(
        cfg.out, JOB, cfg.model_dump(), [u for u in (cfg.archive, cfg.split, cfg.val_archive) if u],
        {k: summary[k] for k in ("train_images", "train_individuals", "val_images", "val_individuals",
                                 "rejected", "epochs_run")},
        started, model_id=model_id, summary=summary,
    )  # fmt: skip
    return summary


RUNTIME = (
    "workers", "cpus_per_worker", "gpus_per_worker", "amp", "max_failures", "data_workers", "torch_threads",
    "cache_dir", "address", "checkpoints_to_keep",
)  # fmt: skip
JOB_ENTRY = add_job(
    Job(
        name=JOB,
        config=TrainConfig,
        run=run,
        help="Train an embedding model by metric learning on Ray Train; resumes when re-run.",
        args=("archive",),
        runtime=frozenset(RUNTIME),
        flags={
            "loss_params": Flag(("--loss-param",), list[str], key_values("--loss-param")),
            "miner_params": Flag(("--miner-param",), list[str], key_values("--miner-param")),
            "val_same_viewpoint": Flag(("--val-same-viewpoint/--val-any-viewpoint",)),
        },
        settings_file=load_config_file,
    )
)
