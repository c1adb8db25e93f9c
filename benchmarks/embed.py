"""Embedding throughput: forward-only ceiling vs a plain decode+forward loop vs the embed job.

One run, same model, same torch threads, on an archive of realistic photos (camera-trap JPEGs,
2048x1536 by default, with an animal-sized bbox crop each). Prints img/s and the ratios
job/ceiling (goal >= 0.8) and job/plain (goal >= 1.3), then one JSON line of the figures.

    python benchmarks/embed.py [--n 4096] [--photo 2048x1536] [--backbone resnet18] [--size 224]

The archive holds --n rows (distinct image ids and bboxes) whose JPEG bytes cycle through --pool
distinct photos: decoding costs the same for every row, and rendering thousands of multi-megapixel
photos would take longer than the benchmark itself. (a) and (b) are steady-state loops with
nothing to start, so their rates are timed on the first --baseline-rows rows; the job embeds the
whole archive, its Ray Data and actor start-up included (real archives are larger still).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import islice

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from reid import manifest  # noqa: E402
from reid.allocator import keep_freed_memory  # noqa: E402
from reid.archive import ArchiveWriter, iter_rows  # noqa: E402
from reid.images import imageio, jpegroi  # noqa: E402
from reid.images.preprocess import decode_for_model, resize_square  # noqa: E402
from reid.images.transforms import eval_transform  # noqa: E402
from reid.model.network import create_model  # noqa: E402
from reid.model.package import load_package, save_package  # noqa: E402
from reid.model.spec import ModelSpec  # noqa: E402


def make_photo(rng: np.random.Generator, w: int = 1024, h: int = 768) -> bytes:
    """A w x h JPEG with smooth structure and sensor noise (compresses like a photo)."""
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
    return buf.getvalue()


def make_bbox(rng: np.random.Generator, w: int, h: int) -> dict:
    """An animal taking 30-60% of the frame's width and height."""
    bw, bh = int(rng.integers(0.3 * w, 0.6 * w)), int(rng.integers(0.3 * h, 0.6 * h))
    return {
        "x": float(rng.integers(0, w - bw)),
        "y": float(rng.integers(0, h - bh)),
        "w": float(bw),
        "h": float(bh),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096, help="archive rows (all embedded by the job)")
    ap.add_argument("--baseline-rows", type=int, default=1024, help="rows timed for (a) and (b)")
    ap.add_argument("--photo", default="2048x1536", help="photo size WxH")
    ap.add_argument("--pool", type=int, default=24, help="distinct photos the rows cycle through")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads of (a), (b); CPUs of (c)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # (a) and (b) run with the allocator settings of the job's model actors (reid/allocator.py):
    # the comparison is of the job's layout, not of glibc's defaults.
    keep_freed_memory()
    root = tempfile.mkdtemp(prefix="reid-bench-embed-")
    try:
        bench(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(args, root: str) -> None:
    rng = np.random.default_rng(0)
    pw, ph = (int(v) for v in args.photo.lower().split("x"))
    photos = [make_photo(rng, pw, ph) for _ in range(min(args.pool, args.n))]
    w = ArchiveWriter(f"{root}/archive")
    for i in range(args.n):
        w.add(
            {
                "image_id": f"img{i:05d}",
                "image": photos[i % len(photos)],
                "bbox": make_bbox(rng, pw, ph),
                "source": f"bench://{i}",
            }
        )
    w.close()
    manifest.write_manifest(f"{root}/archive", "ingest", {}, [], {"rows": args.n}, manifest.now())
    spec = ModelSpec(backbone=args.backbone, embedding_dim=512, input_size=args.size)
    save_package(create_model(spec, load_pretrained=False), spec, f"{root}/model")
    model, spec = load_package(f"{root}/model")

    # (a) and (b) are steady-state loops with nothing to start up: their rates are measured on the
    # first --baseline-rows rows; the job embeds the whole archive, start-up included.
    base_n = min(args.n, args.baseline_rows)

    # (a) forward-only ceiling on pre-decoded tensors
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < base_n:
            model(x)
            done += args.batch
        ceiling = done / (time.perf_counter() - t0)

    # (b) a plain sequential loop streaming the archive: full decode, crop, resize, forward
    tf = eval_transform(spec)
    rows = iter_rows(f"{root}/archive", columns=["image", "bbox"], batch_size=args.batch)
    t0 = time.perf_counter()
    done = 0
    with torch.inference_mode():
        while done < base_n:
            batch = []
            for r in islice(rows, args.batch):
                b = r["bbox"]
                img = Image.open(io.BytesIO(r["image"])).convert("RGB")
                img = img.crop((b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]))
                batch.append(tf(img))
            if not batch:
                break
            model(torch.stack(batch))
            done += len(batch)
    plain = done / (time.perf_counter() - t0)

    # The job's own decode (draft-mode JPEG, crop, resize) alone on one core: it bounds the job.
    # With the cores shared between decoding and the forward pass, at most
    # 1 / (1 + ceiling / (cores * decode rate)) of the ceiling is reachable.
    # Beside it, the same decode through Pillow's whole-file draft mode (what the job did before
    # region-of-interest decoding, reid.images.jpegroi), for the figure of what the window saves.
    rows = list(islice(iter_rows(f"{root}/archive", columns=["image", "bbox"]), 64))
    t0 = time.perf_counter()
    for r in rows:
        decode_for_model(r["image"], r["bbox"], spec.input_size)
    decode_rate = len(rows) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for r in rows:
        resize_square(
            imageio.decode(r["image"], r["bbox"], spec.input_size, roi=False).image, spec.input_size
        )
    whole_rate = len(rows) / (time.perf_counter() - t0)
    bound = 1.0 / (1.0 + ceiling / (args.threads * decode_rate))

    # (c) the embed job on an embedded local Ray with --threads CPUs (its default layout: on CPU,
    # one single-threaded actor per CPU, each decoding and embedding its own row groups)
    from cluster.runtime import connect
    from jobs.embed import EmbedConfig, run

    connect(num_cpus=args.threads)
    t0 = time.perf_counter()
    summary = run(
        EmbedConfig(
            archive=f"{root}/archive", model=f"{root}/model", out=f"{root}/emb", batch_size=args.batch
        )
    )
    job_s = time.perf_counter() - t0
    job = args.n / job_s
    assert summary["embedded"] == args.n
    # The job's fixed cost: the same job stopped after its first unit (fresh actors: start-up,
    # model loads, one unit, its commit, the plan). What is left of job_s is the streaming part.
    t0 = time.perf_counter()
    first = run(
        EmbedConfig(
            archive=f"{root}/archive", model=f"{root}/model", out=f"{root}/emb1", batch_size=args.batch,
            max_units=1,
        )
    )  # fmt: skip
    fixed_s = time.perf_counter() - t0
    steady = (args.n - first["embedded"]) / max(1e-9, job_s - fixed_s)

    print(
        f"model {args.backbone} @ {args.size}px, {args.n} photos {pw}x{ph} "
        f"({sum(map(len, photos)) / len(photos) / 1e6:.2f} MB JPEG each) with bbox crops, "
        f"{args.threads} torch threads, {os.cpu_count()} CPUs"
    )
    print(f"{'(a) forward-only ceiling':32s} {ceiling:8.1f} img/s")
    print(f"{'(b) plain decode+forward loop':32s} {plain:8.1f} img/s")
    layout = f"{summary['actors']} actor(s) x {summary['threads']} thread(s), " + (
        "decoding inline" if summary.get("inline_decode") else "fed by decode actors"
    )
    print(
        f"{'(c) reid embed job':32s} {job:8.1f} img/s   ({job_s:.1f} s with Ray Data start-up and commits; {layout})"
    )
    print(
        f"{'  of which fixed (one-unit job)':32s} {fixed_s:8.1f} s       (streaming part: {steady:.1f} img/s, "
        f"{steady / ceiling:.2f} of the ceiling)"
    )
    print(
        f"{'job decode alone, one core':32s} {decode_rate:8.1f} img/s   (bounds job/ceiling at {bound:.2f}; "
        f"region decoder {'on' if jpegroi.available() else 'NOT BUILT'})"
    )
    print(
        f"{'whole-file draft decode, one core':32s} {whole_rate:8.1f} img/s   (Pillow, before reid.images.jpegroi)"
    )
    print(f"job/ceiling = {job / ceiling:.2f} (goal >= 0.8)   job/plain = {job / plain:.2f} (goal >= 1.3)")
    print(
        json.dumps(
            {
                "ceiling_img_s": round(ceiling, 2),
                "plain_img_s": round(plain, 2),
                "job_img_s": round(job, 2),
                "job_vs_ceiling": round(job / ceiling, 3),
                "job_vs_plain": round(job / plain, 3),
                "decode_img_s_one_core": round(decode_rate, 1),
                "whole_file_decode_img_s_one_core": round(whole_rate, 1),
                "region_decoder": jpegroi.available(),
                "job_vs_ceiling_bound": round(bound, 3),
                "n": args.n,
                "baseline_rows": base_n,
                "photo": args.photo,
                "backbone": args.backbone,
                "size": args.size,
                "cpus": os.cpu_count(),
                "job_s": round(job_s, 1),
                "job_fixed_s": round(fixed_s, 1),
                "job_streaming_img_s": round(steady, 2),
                "job_streaming_vs_ceiling": round(steady / ceiling, 3),
                "job_layout": layout,
            }
        )
    )


if __name__ == "__main__":
    main()
