"""Every GPU path in one command: training, embedding, JPEG decode and FAISS search, with figures.

    python benchmarks/gpu_check.py [--out DIR] [--dry-run] [--steps train,embed,decode,search]
    make gpu-check                      # installs the [gpu] extra (faiss-gpu) first

Four steps, each through the project's own code where one exists, each printing one JSON line
(and appended to DIR/gpu_check.jsonl; the whole run is DIR/gpu_check.json; DIR defaults to
$OUT when set, so a borrowed GPU machine sends the figures back):

1. ``train``: `reid train` (Ray Train, 1 worker per GPU, AMP; DDP when there are several) on a
   generated survey; images/s of the job beside the same :class:`Session` run as a plain torch
   loop on the same GPU (ratio goal >= 0.9);
2. ``embed``: `reid embed` in its GPU layout (CPU decode actors feeding GPU model actors) on an
   archive of camera-trap-sized JPEGs with animal-sized crops; images/s against the model's
   forward-only ceiling on the same GPU (goal >= 0.8) and which side bounds the job;
3. ``decode``: the CPU region decode the job uses (per core, and x the cores) against
   ``torchvision.io.decode_jpeg`` on the device, batched, plus crop and resize there; whether the
   GPU path should feed the model actors;
4. ``search``: FAISS exact all-vs-all (GPU when present: fp32 and fp16 storage) against a plain
   torch matmul on the same device (TFLOP/s, goal >= 0.85), then IVF recall@10 against exact and
   its speed-up, through ``reid.search`` (the code `reid index` / `reid match` run).

``--dry-run`` runs the same steps at toy sizes on whatever is there (CPU here): the test suite
runs it, so the script cannot rot between GPU sessions. A failing step records its error and
the others still run (the exit status is then 1): a GPU session is too short to lose to one bug.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

STEPS = ("train", "embed", "decode", "search")

# Sizes per mode: the GPU run fits its ~8 minutes on one H200-class GPU and 16 cores.
SIZES = {
    "gpu": dict(
        train_individuals=96, train_images=16, train_px=224, train_backbone="resnet50",
        train_epochs=3, train_steps=40, train_p=32, train_k=4,
        embed_rows=8192, embed_photo=(2048, 1536), embed_pool=24, embed_backbone="resnet50",
        embed_px=224, embed_batch=256,
        decode_rows=512,
        search_n=1_000_000, search_dim=512, search_queries=131_072, search_block=16_384,
        ivf_nlist=4096, ivf_queries=10_000, ivf_nprobe=(8, 32, 128),
    ),
    "dry": dict(
        train_individuals=8, train_images=4, train_px=64, train_backbone="reid_cnn_s",
        train_epochs=2, train_steps=2, train_p=4, train_k=2,
        embed_rows=24, embed_photo=(320, 240), embed_pool=3, embed_backbone="reid_cnn_s",
        embed_px=64, embed_batch=8,
        decode_rows=8,
        search_n=4096, search_dim=64, search_queries=1024, search_block=512,
        ivf_nlist=16, ivf_queries=256, ivf_nprobe=(1, 4),
    ),
}  # fmt: skip


def environment() -> dict:
    """What the figures were measured on."""
    import faiss

    from reid.search.faiss_index import gpu_available

    cuda = torch.cuda.is_available()
    return {
        "step": "environment",
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "faiss_gpu_usable": gpu_available(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ 1. train
def step_train(s: dict, work: Path) -> dict:
    from jobs import synth, train
    from reid.training import Session

    archive = str(work / "train_archive")
    synth.run(
        synth.SynthJobConfig(
            out=archive, individuals=s["train_individuals"], years=1,
            images_per_individual=s["train_images"], image_size=s["train_px"], seed=3,
        )
    )  # fmt: skip
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = os.cpu_count() or 1
    common = dict(
        archive=archive, backbone=s["train_backbone"], input_size=s["train_px"], embedding_dim=128,
        loss="arcface", miner="none", p=s["train_p"], k=s["train_k"], epochs=s["train_epochs"],
        steps_per_epoch=s["train_steps"], val_fraction=0.2, val_map="off", augment=0.5,
        data_workers=min(4, max(0, cpus // max(1, gpus) - 2)) if gpus else 0,
    )  # fmt: skip
    layout = dict(
        workers=max(1, gpus), gpus_per_worker=1.0 if gpus else 0.0, amp=bool(gpus),
        cpus_per_worker=max(1.0, min(8.0, (cpus - 1) / max(1, gpus))) if gpus else 1.0,
    )  # fmt: skip
    cfg = train.make_config(None, out=str(work / "model"), **common, **layout)
    t0 = time.perf_counter()
    summary = train.run(cfg)
    job_s = time.perf_counter() - t0

    # The same Session as a plain torch loop on one device: warm-up epoch, then the median.
    device = torch.device("cuda:0" if gpus else "cpu")
    plain_cfg = train.make_config(
        None, out=str(work / "model_plain"), **common, workers=1, amp=bool(gpus),
        gpus_per_worker=1.0 if gpus else 0.0,
    )  # fmt: skip
    session = Session(plain_cfg, device=device)
    rates = []
    for epoch in range(1, plain_cfg.epochs + 1):
        _sync()
        rates.append(session.train_epoch(epoch)["images_per_s"])
    plain = float(np.median(rates[1:] or rates))
    per_gpu = summary["images_per_s"] / max(1, gpus) if gpus > 1 else summary["images_per_s"]
    return {
        "step": "train",
        "backbone": cfg.backbone,
        "input_px": cfg.input_size,
        "batch": cfg.p * cfg.k,
        "workers": cfg.workers,
        "amp": bool(cfg.amp),
        "ddp": cfg.workers > 1,
        "epochs": summary["epochs_run"],
        "job_images_per_s": round(summary["images_per_s"], 1),
        "plain_images_per_s": round(plain, 1),
        "ray_vs_plain": round(per_gpu / max(plain, 1e-9), 3),
        "job_wall_s": round(job_s, 1),
        "final_loss": round(summary["final_loss"], 4),
    }


# ------------------------------------------------------------------------------------ 2. embed
def _photo_maker() -> Callable:
    """benchmarks/embed.py's camera-trap photo and bbox generators (one definition of both)."""
    spec = importlib.util.spec_from_file_location("bench_embed", REPO / "benchmarks" / "embed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_photo, mod.make_bbox


def _photo_archive(root: Path, n: int, size: tuple[int, int], pool: int) -> tuple[str, list[bytes], list]:
    from reid import manifest
    from reid.archive import ArchiveWriter

    make_photo, make_bbox = _photo_maker()
    rng = np.random.default_rng(0)
    w, h = size
    photos = [make_photo(rng, w, h) for _ in range(min(pool, n))]
    bboxes = [make_bbox(rng, w, h) for _ in range(n)]
    out = str(root / "photos")
    writer = ArchiveWriter(out)
    for i in range(n):
        writer.add({"image_id": f"p{i:06d}", "image": photos[i % len(photos)], "bbox": bboxes[i],
                    "source": f"gpu-check://{i}"})  # fmt: skip
    writer.close()
    manifest.write_manifest(out, "ingest", {}, [], {"rows": n}, manifest.now())
    return out, photos, bboxes


def _ceiling(model: torch.nn.Module, batch: int, px: int, device: torch.device, seconds: float) -> float:
    """Forward-only images/s on pre-decoded tensors already on the device (the job's autocast)."""
    x = torch.randn(batch, 3, px, px, device=device)
    cuda = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, enabled=cuda):
        model(x)
        _sync()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done == 0:
            model(x)
            done += batch
        _sync()
    return done / (time.perf_counter() - t0)


def step_embed(s: dict, work: Path) -> dict:
    from jobs import embed
    from reid.images.preprocess import decode_for_model
    from reid.model.network import create_model
    from reid.model.package import load_package, save_package
    from reid.model.spec import ModelSpec

    archive, photos, bboxes = _photo_archive(work, s["embed_rows"], s["embed_photo"], s["embed_pool"])
    spec = ModelSpec(backbone=s["embed_backbone"], embedding_dim=512, input_size=s["embed_px"])
    save_package(create_model(spec, load_pretrained=False), spec, str(work / "embed_model"))
    model, spec = load_package(str(work / "embed_model"))
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    ceiling = _ceiling(
        model, s["embed_batch"], spec.input_size, device, 5.0 if device.type == "cuda" else 0.5
    )
    rows = list(zip(photos, bboxes))[: max(8, min(64, len(photos) * 4))]
    t0 = time.perf_counter()
    for data, bbox in rows:
        decode_for_model(data, bbox, spec.input_size)
    decode_per_core = len(rows) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    summary = embed.run(
        embed.EmbedConfig(archive=archive, model=str(work / "embed_model"), out=str(work / "emb"),
                          batch_size=s["embed_batch"])
    )  # fmt: skip
    job_s = time.perf_counter() - t0
    job = summary["embedded"] / job_s
    decode_cores = max(1, (os.cpu_count() or 1) - int(summary.get("actors", 1)))
    decode_side = decode_per_core * decode_cores
    return {
        "step": "embed",
        "backbone": spec.backbone,
        "input_px": spec.input_size,
        "rows": summary["embedded"],
        "photo": "x".join(map(str, s["embed_photo"])),
        "device": device.type,
        "layout": {k: summary.get(k) for k in ("actors", "threads", "gpus_per_actor", "inline_decode")},
        "job_images_per_s": round(job, 1),
        "forward_ceiling_images_per_s": round(ceiling, 1),
        "job_vs_ceiling": round(job / ceiling, 3),
        "cpu_decode_per_core": round(decode_per_core, 1),
        "cpu_decode_all_cores": round(decode_side, 1),
        "bound_by": "decode" if decode_side < ceiling else "model",
        "job_wall_s": round(job_s, 1),
    }


# ----------------------------------------------------------------------------------- 3. decode
def step_decode(s: dict, work: Path) -> dict:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import resize

    from reid.images.preprocess import decode_for_model

    make_photo, make_bbox = _photo_maker()
    rng = np.random.default_rng(1)
    w, h = s["embed_photo"]
    pool = [make_photo(rng, w, h) for _ in range(min(8, s["decode_rows"]))]
    datas = [pool[i % len(pool)] for i in range(s["decode_rows"])]
    boxes = [make_bbox(rng, w, h) for _ in range(s["decode_rows"])]
    px = s["embed_px"]
    t0 = time.perf_counter()
    for data, b in zip(datas, boxes):
        decode_for_model(data, b, px)
    cpu_per_core = len(datas) / (time.perf_counter() - t0)

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]

    def gpu_batch() -> int:
        images = decode_jpeg(encoded, device=device)
        out = []
        for img, b in zip(images, boxes):
            x, y, bw, bh = (int(b[k]) for k in ("x", "y", "w", "h"))
            crop = img[:, y : y + bh, x : x + bw]
            out.append(resize(crop, [px, px], antialias=True))
        torch.stack(out)
        return len(out)

    gpu_batch()  # warm-up (nvJPEG handles, allocator)
    _sync()
    t0 = time.perf_counter()
    done = 0
    for _ in range(3):
        done += gpu_batch()
    _sync()
    device_rate = done / (time.perf_counter() - t0)
    cpu_all = cpu_per_core * (os.cpu_count() or 1)
    return {
        "step": "decode",
        "photo": f"{w}x{h}",
        "rows": len(datas),
        "cpu_region_decode_per_core": round(cpu_per_core, 1),
        "cpu_region_decode_all_cores": round(cpu_all, 1),
        "device": device.type,
        "device_decode_per_s": round(device_rate, 1),
        "device_vs_all_cores": round(device_rate / cpu_all, 3),
        "feed_model_from_device_decode": bool(device.type == "cuda" and device_rate > cpu_all),
    }


# ----------------------------------------------------------------------------------- 4. search
def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 8), d), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _torch_tflops(
    xb: np.ndarray, queries: int, block: int, dtype: torch.dtype, device: torch.device
) -> float:
    """Plain matmul + top-k on the same device: the ceiling FAISS's exact search is held to."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # FAISS's fp32 GEMM is true fp32
    try:
        db = torch.from_numpy(xb).to(device=device, dtype=dtype)
        q = db[:block]
        (q @ db.T).topk(10, dim=1)
        _sync()
        t0 = time.perf_counter()
        done = 0
        while done < queries:
            (db[done % len(db) : done % len(db) + block] @ db.T).topk(10, dim=1)
            done += block
        _sync()
        wall = time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2.0 * done * len(xb) * xb.shape[1] / wall / 1e12


def step_search(s: dict, work: Path) -> dict:
    import faiss

    from reid.search import faiss_index

    n, d, nq, block = s["search_n"], s["search_dim"], s["search_queries"], s["search_block"]
    xb = _vectors(n, d, 0)
    gpu = faiss_index.gpu_available()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    out: dict = {"step": "search", "n": n, "dim": d, "queries": nq, "faiss_gpu": gpu}
    exact_per_query = None
    truth = None
    for label, fp16 in (("fp32", False), ("fp16", True)):
        if fp16 and not gpu:
            out["fp16"] = "skipped: FAISS on CPU stores fp32 only"
            continue
        flat = faiss.IndexFlatIP(d)
        if gpu:
            co = faiss.GpuClonerOptions()
            co.useFloat16 = fp16
            flat = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, flat, co)
        flat.add(xb)
        flat.search(xb[:block], 10)  # warm-up
        _sync()
        t0 = time.perf_counter()
        for i in range(0, nq, block):
            flat.search(xb[i : i + block], 10)
        wall = time.perf_counter() - t0
        faiss_tflops = 2.0 * nq * n * d / wall / 1e12
        ref = _torch_tflops(xb, nq, block, torch.float16 if fp16 else torch.float32, device)
        out[label] = {
            "faiss_tflops": round(faiss_tflops, 3),
            "torch_matmul_tflops": round(ref, 3),
            "faiss_vs_matmul": round(faiss_tflops / ref, 3),
            "all_vs_all_projected_s": round(wall * n / nq, 1),
        }
        if not fp16:
            qs = xb[: s["ivf_queries"]]
            t0 = time.perf_counter()
            _, truth = flat.search(qs, 10)
            exact_per_query = (time.perf_counter() - t0) / len(qs)
        del flat

    # IVF through reid.search: train (GPU k-means when present), build, load on the device.
    factory = f"IVF{s['ivf_nlist']},Flat"
    t0 = time.perf_counter()
    sample = xb[np.random.default_rng(2).choice(n, min(n, 64 * s["ivf_nlist"]), replace=False)]
    trained = faiss_index.train(factory, sample)
    ivf = faiss_index.build_shard(trained, xb)
    if gpu:
        ivf = faiss_index.to_gpu(ivf)
    build_s = time.perf_counter() - t0
    qs = xb[: s["ivf_queries"]]
    sweep = []
    for nprobe in s["ivf_nprobe"]:
        faiss.ParameterSpace().set_index_parameter(ivf, "nprobe", nprobe)
        ivf.search(qs[:64], 10)
        t0 = time.perf_counter()
        _, got = ivf.search(qs, 10)
        per_query = (time.perf_counter() - t0) / len(qs)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
        sweep.append({"nprobe": nprobe, "recall_at_10": round(recall, 4),
                      "speedup_vs_exact": round(exact_per_query / per_query, 1)})  # fmt: skip
    out["ivf"] = {"factory": factory, "build_s": round(build_s, 1), "sweep": sweep}
    return out


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on any device (the test suite's run)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    a = ap.parse_args(argv)
    steps = [x.strip() for x in a.steps.split(",") if x.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        print(f"error: --steps {','.join(unknown)}: choose from {','.join(STEPS)}", file=sys.stderr)
        return 2
    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here: run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    sizes = SIZES["dry" if a.dry_run else "gpu"]
    a.out.mkdir(parents=True, exist_ok=True)
    lines_path = a.out / "gpu_check.jsonl"
    results = []

    def record(row: dict) -> None:
        results.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        with open(lines_path, "a") as f:
            f.write(line + "\n")

    from cluster.runtime import connect

    record({**environment(), "mode": "dry-run" if a.dry_run else "gpu"})
    connect(num_cpus=os.cpu_count())
    failed = 0
    fns = {"train": step_train, "embed": step_embed, "decode": step_decode, "search": step_search}
    work = Path(tempfile.mkdtemp(prefix="reid-gpu-check-"))
    try:
        for name in steps:
            t0 = time.perf_counter()
            try:
                row = fns[name](sizes, work)
            except Exception as e:  # recorded, and the remaining steps still run
                failed += 1
                row = {"step": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            row["step_s"] = round(time.perf_counter() - t0, 1)
            record(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (a.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
