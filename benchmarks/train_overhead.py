"""Ray Train (1 worker) vs a plain torch loop: same model, batch, sampler and training step.

Both sides run :class:`reid.training.Session` (the code `reid train` runs) on the same generated
archive with the same torch thread count; the Ray side runs it inside a TorchTrainer worker and
reports metrics after every epoch, as training does. Throughput is measured after a warm-up
epoch, as the median over epochs; the plain loop is measured before and after the Ray run and
averaged, so drift in machine load does not count as overhead. Ray's start-up (cluster, worker
process, process group, model build) is reported separately as ray_fixed_s: paid once per run.

    python benchmarks/train_overhead.py [--epochs 4] [--steps 12] [--threads 2] [--p 16]

Ends with one JSON line, e.g. {"ray_vs_plain": 0.97, ...} (goal: >= 0.90, i.e. <= 10% overhead).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jobs.train import make_config  # noqa: E402
from reid.allocator import process_env  # noqa: E402
from reid.archive import ArchiveWriter, stable_id  # noqa: E402
from reid.training import Session, normal_priority  # noqa: E402


def make_archive(out: str, individuals: int = 16, per: int = 8, size: int = 64) -> str:
    """Individuals as fixed arrangements of coloured discs, each photo jittered and noisy."""
    rng = np.random.default_rng(0)
    w = ArchiveWriter(out)
    for i in range(individuals):
        for j in range(per):
            g = np.random.default_rng(i)
            img = Image.new("RGB", (size, size), tuple(int(v) for v in g.integers(0, 255, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(5):
                x, y = g.integers(6, size - 6, 2) + rng.integers(-3, 4, 2)
                r = int(g.integers(4, 12))
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in g.integers(0, 255, 3)))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            w.add({"image_id": stable_id("bench", str(i), str(j)), "image": buf.getvalue(),
                   "individual_id": f"ind{i}", "source": f"{i}/{j}.png", "width": size, "height": size})  # fmt: skip
    w.close()
    return out


def measure(session: Session, epochs: int, report=None) -> tuple[float, float]:
    """Median images/s over the epochs after the first (warm-up), and the median share of time
    spent waiting for data (decode + augmentation) rather than computing."""
    rates, data = [], []
    for epoch in range(epochs + 1):
        stats = session.train_epoch(epoch)
        if report is not None:
            report({"epoch": epoch, "images_per_s": stats["images_per_s"]})
        if epoch:
            rates.append(stats["images_per_s"])
            data.append(stats["data_s"] / stats["train_s"])
    return statistics.median(rates), statistics.median(data)


def plain(cfg_dict: dict, epochs: int, threads: int) -> tuple[float, float]:
    import torch

    torch.set_num_threads(threads)
    session = Session(make_config(**cfg_dict))
    return measure(session, epochs)


def ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    nice = normal_priority()  # as `reid train`'s worker does (Ray starts workers at nice 15)
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    session = Session(make_config(**config["cfg"]), ctx.get_world_rank(), ctx.get_world_size(),
                      ray.train.torch.get_device())  # fmt: skip
    session.wrap()  # a no-op with one worker, as in `reid train`
    rate, data_share = measure(session, config["epochs"], report=ray.train.report)
    if ctx.get_world_rank() == 0:  # Ray's Result keeps metrics of checkpointed reports only: use a file
        with open(config["result_path"], "w") as f:
            json.dump({"images_per_s": rate, "data_share": data_share, "threads": torch.get_num_threads(),
                       "cpus": len(os.sched_getaffinity(0)), "nice": nice}, f)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4, help="measured epochs (after one warm-up epoch)")
    ap.add_argument("--steps", type=int, default=12, help="steps per epoch")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and CPUs of the Ray worker)")
    ap.add_argument("--p", type=int, default=16, help="individuals per batch (x 4 images each)")
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--input-size", type=int, default=64)
    args = ap.parse_args()

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.runtime import connect

    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        archive = make_archive(os.path.join(tmp, "archive"), individuals=max(16, 2 * args.p))
        cfg = dict(archive=archive, out=os.path.join(tmp, "model"), backbone=args.backbone,
                   input_size=args.input_size, embedding_dim=128, p=args.p, k=4, steps_per_epoch=args.steps,
                   epochs=args.epochs + 1, loss="triplet", miner="semihard", val_fraction=0.0,
                   cpus_per_worker=args.threads, torch_threads=args.threads)  # fmt: skip
        before, data_before = plain(cfg, args.epochs, args.threads)
        t0 = time.perf_counter()
        connect(num_cpus=max(2, args.threads))
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={
                "cfg": cfg,
                "epochs": args.epochs,
                "threads": args.threads,
                "result_path": os.path.join(tmp, "ray_result.json"),
            },  # fmt: skip
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.threads}),
            # the worker environment `reid train` gives CPU workers (reid/allocator.py)
            run_config=ray.train.RunConfig(
                name="bench",
                storage_path=os.path.join(tmp, "ray"),
                worker_runtime_env={"env_vars": process_env()},
            ),  # fmt: skip
        )
        trainer.fit()
        ray_wall = time.perf_counter() - t0
        with open(os.path.join(tmp, "ray_result.json")) as f:
            ray = json.load(f)
        ray_rate = ray["images_per_s"]
        after, data_after = plain(cfg, args.epochs, args.threads)
    plain_rate = (before + after) / 2
    batch = cfg["p"] * cfg["k"]
    ray_compute = (args.epochs + 1) * args.steps * batch / ray_rate
    figures = {
        "backbone": args.backbone,
        "input_size": args.input_size,
        "batch": batch,
        "threads": args.threads,
        "load_avg_1m": round(os.getloadavg()[0], 1),  # other processes competing for the CPUs
        "plain_images_per_s": round(plain_rate, 2),
        "plain_before_after": [round(before, 2), round(after, 2)],
        "ray_images_per_s": round(ray_rate, 2),
        "plain_data_share": round((data_before + data_after) / 2, 3),
        "ray_data_share": round(ray["data_share"], 3),
        "ray_worker_threads_cpus_nice": [ray["threads"], ray["cpus"], ray["nice"]],
        "ray_vs_plain": round(ray_rate / plain_rate, 3),
        "overhead_pct": round(100 * (1 - ray_rate / plain_rate), 1),
        "ray_fixed_s": round(max(0.0, ray_wall - ray_compute), 1),  # start-up, once per run
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
