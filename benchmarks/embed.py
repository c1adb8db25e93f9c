"""Embedding throughput: forward-only ceiling vs a plain decode+forward loop vs the embed job.

One run, same model, same torch threads, on an archive of realistic photos (1024x768 JPEGs with
bbox crops). Prints img/s and the ratios job/ceiling (goal >= 0.8) and job/plain (goal >= 1.3),
then one JSON line of the figures.

    python benchmarks/embed.py [--n 256] [--backbone resnet18] [--size 224]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from reid import manifest  # noqa: E402
from reid.archive import ArchiveWriter, read_archive  # noqa: E402
from reid.model import ModelSpec, create_model, load_package, save_package  # noqa: E402
from reid.transforms import eval_transform  # noqa: E402


def make_photo(rng: np.random.Generator) -> tuple[bytes, dict]:
    """A 1024x768 JPEG with smooth structure (compresses like a photo) and an animal-sized bbox."""
    h, w = 768, 1024
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            128 + 60 * np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80))
            for c in range(3)
        ],
        -1,
    )
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=88)
    bw, bh = int(rng.integers(300, 600)), int(rng.integers(250, 450))
    bbox = {
        "x": float(rng.integers(0, w - bw)),
        "y": float(rng.integers(0, h - bh)),
        "w": float(bw),
        "h": float(bh),
    }
    return buf.getvalue(), bbox


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="reid-bench-embed-")
    rng = np.random.default_rng(0)
    w = ArchiveWriter(f"{root}/archive")
    for i in range(args.n):
        data, bbox = make_photo(rng)
        w.add({"image_id": f"img{i:05d}", "image": data, "bbox": bbox, "source": f"bench://{i}"})
    w.close()
    manifest.write_manifest(f"{root}/archive", "ingest", {}, [], {"rows": args.n}, manifest.now())
    spec = ModelSpec(backbone=args.backbone, embedding_dim=512, input_size=args.size)
    save_package(create_model(spec, load_pretrained=False), spec, f"{root}/model")
    model, spec = load_package(f"{root}/model")
    rows = read_archive(f"{root}/archive").to_pylist()

    # (a) forward-only ceiling on pre-decoded tensors
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < args.n:
            model(x)
            done += args.batch
        ceiling = done / (time.perf_counter() - t0)

    # (b) a plain sequential loop: full decode, crop, resize, forward in batches
    tf = eval_transform(spec)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, args.n, args.batch):
            batch = []
            for r in rows[s : s + args.batch]:
                b = r["bbox"]
                img = Image.open(io.BytesIO(r["image"])).convert("RGB")
                img = img.crop((b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]))
                batch.append(tf(img))
            model(torch.stack(batch))
    plain = args.n / (time.perf_counter() - t0)

    # (c) the embed job (embedded local Ray, all CPUs)
    from cluster.runtime import connect
    from jobs.embed import EmbedConfig, run

    connect(num_cpus=os.cpu_count())
    t0 = time.perf_counter()
    summary = run(
        EmbedConfig(
            archive=f"{root}/archive",
            model=f"{root}/model",
            out=f"{root}/emb",
            batch_size=args.batch,
            threads=args.threads,
        )
    )
    job = args.n / (time.perf_counter() - t0)
    assert summary["embedded"] == args.n

    print(
        f"model {args.backbone} @ {args.size}px, {args.n} photos 1024x768 with bbox crops, "
        f"{args.threads} torch threads, {os.cpu_count()} CPUs"
    )
    print(f"{'(a) forward-only ceiling':32s} {ceiling:8.1f} img/s")
    print(f"{'(b) plain decode+forward loop':32s} {plain:8.1f} img/s")
    print(f"{'(c) reid embed job':32s} {job:8.1f} img/s   (includes Ray Data start-up and commits)")
    print(f"job/ceiling = {job / ceiling:.2f} (goal >= 0.8)   job/plain = {job / plain:.2f} (goal >= 1.3)")
    print(
        json.dumps(
            {
                "ceiling_img_s": round(ceiling, 2),
                "plain_img_s": round(plain, 2),
                "job_img_s": round(job, 2),
                "job_vs_ceiling": round(job / ceiling, 3),
                "job_vs_plain": round(job / plain, 3),
                "n": args.n,
                "backbone": args.backbone,
                "size": args.size,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
