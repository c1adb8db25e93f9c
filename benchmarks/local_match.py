"""Cost of local-feature re-ranking: ms per verified pair per core vs brute force, extraction rate,
Ray scaling, and a projection to 1M images x B = 50.

    python benchmarks/local_match.py --features FEATURES --embeddings EMB [--archive ARCHIVE]
        [--shortlist 50] [--queries 8] [--baseline-pairs 60] [--extract 30] [--workers 1,2]

Pairs are real shortlists: each of ``--queries`` queries against its ``--shortlist`` nearest
images by the global embedding (so the early exit meets the mix of pairs re-ranking meets).
In one run, on the same cached features:

* ours: :class:`reid.local.match.Matcher` (strongest 512 keypoints as RootSIFT float32, one GEMM
  per 16 candidates, ratio + mutual test, early exit, partial-affine RANSAC), image preparation
  included; BLAS on one thread; CPU time per pair;
* baseline: brute force as first tried (``cv2.BFMatcher.knnMatch`` k=2 over every stored keypoint,
  ratio 0.8, USAC MAGSAC fundamental matrix), on ``--baseline-pairs`` of the same pairs;
* extraction: SIFT features per second of CPU (``--archive``);
* Ray: the same shortlists as tasks with 1 and then 2 in flight (pairs/s, wall clock).

Prints a table, the projection, and one JSON line. The figures depend on the machine's load:
``uptime`` is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from reid.local.match import Matcher, MatcherSettings, prepare  # noqa: E402
from reid.local.store import FeatureStore  # noqa: E402


def shortlists(emb_uri: str, ids_with_features: set[str], queries: int, b: int, seed: int = 0):
    """``queries`` random queries and their ``b`` nearest other images by cosine."""
    from reid.embeddings import read_embeddings
    from reid.evaluation.data import eval_data

    table, _ = read_embeddings(emb_uri)
    data = eval_data(table)
    keep = np.array([i in ids_with_features for i in data.ids])
    ids, emb = data.ids[keep], data.emb[keep]
    rng = np.random.default_rng(seed)
    qs = rng.choice(len(ids), min(queries, len(ids)), replace=False)
    sim = emb[qs] @ emb.T
    sim[np.arange(len(qs)), qs] = -np.inf
    order = np.argsort(-sim, axis=1)[:, :b]
    return [str(ids[q]) for q in qs], [[str(ids[j]) for j in row] for row in order]


def ours(feats, queries, cands, settings: MatcherSettings) -> dict:
    m = Matcher(settings)
    n_pairs, inl = 0, []
    with threadpool_limits(1):
        c0, t0 = time.process_time(), time.perf_counter()
        for q, cs in zip(queries, cands):
            prepared = [prepare(feats[c], settings.keypoints) for c in cs]
            res = m.match_many(prepare(feats[q], settings.keypoints), prepared)
            inl += res.tolist()
            n_pairs += len(cs)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"pairs": n_pairs, "ms_per_pair_cpu": 1000 * cpu / n_pairs, "ms_per_pair_wall": 1000 * wall / n_pairs,
            "inliers": inl}  # fmt: skip


def rootsift(desc: np.ndarray) -> np.ndarray:
    d = desc.astype(np.float32)
    return np.sqrt(d / np.maximum(d.sum(1, keepdims=True), 1e-6))


def brute_force(feats, pairs, ratio: float = 0.8, threshold: float = 4.0) -> dict:
    import cv2

    cv2.setNumThreads(1)
    bf = cv2.BFMatcher(cv2.NORM_L2)
    inl = []
    c0, t0 = time.process_time(), time.perf_counter()
    for a, b in pairs:
        fa, fb = feats[a], feats[b]
        knn = bf.knnMatch(rootsift(fa.desc), rootsift(fb.desc), k=2)
        good = [p[0] for p in knn if len(p) == 2 and p[0].distance < ratio * p[1].distance]
        if len(good) < 8:
            inl.append(0)
            continue
        xa = np.float32([fa.xy[g.queryIdx] for g in good])
        xb = np.float32([fb.xy[g.trainIdx] for g in good])
        _, mask = cv2.findFundamentalMat(xa, xb, cv2.USAC_MAGSAC, threshold, 0.999, 10000)
        inl.append(0 if mask is None else int(mask.sum()))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"pairs": len(pairs), "ms_per_pair_cpu": 1000 * cpu / len(pairs),
            "ms_per_pair_wall": 1000 * wall / len(pairs), "inliers": inl}  # fmt: skip


def extraction_rate(archive_uri: str, n: int) -> dict:
    import pyarrow.parquet as pq

    from reid.archive import archive_files
    from reid.local.extract import create_extractor

    t = pq.read_table(archive_files(archive_uri)[0], columns=["image", "bbox"]).slice(0, n)
    ex = create_extractor()
    c0 = time.process_time()
    kps = [
        len(ex.extract(d, b)[0] or [])
        for d, b in zip(t.column("image").to_pylist(), t.column("bbox").to_pylist())
    ]
    cpu = time.process_time() - c0
    return {"images": len(kps), "images_per_cpu_s": len(kps) / cpu, "keypoints_mean": float(np.mean(kps))}


def score_chunk(feats_ref, queries, cands, settings) -> int:
    """A Ray task: one chunk of shortlists (the re-rank stage's unit of work)."""
    from reid.local.rerank import shortlist_inliers

    return sum(
        len(r) for r in shortlist_inliers(queries, cands, feats_ref, Matcher(settings), symmetric=False)
    )


def ray_scaling(feats, queries, cands, settings, workers: list[int], tasks: int = 8) -> dict:
    """Pairs/s with 1, then 2, ... tasks in flight; each task gets only its own images' features
    (as a re-rank task reads only its images), ``tasks`` tasks per run."""
    import ray

    from cluster.runtime import connect

    connect(num_cpus=max(workers))
    task = ray.remote(score_chunk).options(num_cpus=1)
    ray.get([task.remote({}, [], [], settings) for _ in workers])  # workers started
    per = max(1, len(queries) // tasks)
    chunks = []
    for i in range(0, len(queries), per):
        qs, cs = queries[i : i + per], cands[i : i + per]
        need = set(qs) | {c for row in cs for c in row}
        chunks.append((ray.put({k: feats[k] for k in need}), qs, cs))
    out: dict[int, list[float]] = {}
    for w in workers:  # a list like 1,2,1,2 alternates, so a change of machine load hits both
        t0, pending, done, it = time.perf_counter(), [], 0, iter(chunks)
        while True:
            while len(pending) < w and (c := next(it, None)) is not None:
                pending.append(task.remote(*c, settings))
            if not pending:
                break
            ready, pending = ray.wait(pending, num_returns=1)
            done += ray.get(ready[0])
        out.setdefault(w, []).append(done / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True)
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--archive", default=None)
    ap.add_argument("--shortlist", type=int, default=50)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--baseline-pairs", type=int, default=60)
    ap.add_argument("--extract", type=int, default=30)
    ap.add_argument("--workers", default="1,2,1,2")
    args = ap.parse_args()

    load0 = os.getloadavg()
    feats = FeatureStore(args.features).get()
    queries, cands = shortlists(args.embeddings, set(feats), args.queries, args.shortlist)
    settings = MatcherSettings()
    mine = ours(feats, queries, cands, settings)
    pairs = [(q, c) for q, cs in zip(queries, cands) for c in cs]
    step = max(1, len(pairs) // args.baseline_pairs)
    sub = pairs[::step][: args.baseline_pairs]
    base = brute_force(feats, sub)
    ext = extraction_rate(args.archive, args.extract) if args.archive else None
    workers = [int(w) for w in args.workers.split(",")]
    scaling = ray_scaling(feats, queries, cands, settings, workers)
    load1 = os.getloadavg()

    kb = np.mean([len(f) * (4 + f.desc.shape[1]) for f in feats.values()]) / 1024
    ms = mine["ms_per_pair_cpu"]
    pairs_1m = 1_000_000 * 50
    core_h = pairs_1m * ms / 1000 / 3600
    print(f"load average before/after: {load0[0]:.1f} / {load1[0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    print(
        f"pairs: {len(pairs)} ({len(queries)} queries x B={args.shortlist}); baseline on {len(sub)} of them"
    )
    print(f"ours:        {ms:7.2f} ms/pair CPU ({mine['ms_per_pair_wall']:.2f} wall), keypoints {settings.keypoints}, "
          f"{settings.geometry}")  # fmt: skip
    print(f"brute force: {base['ms_per_pair_cpu']:7.2f} ms/pair CPU ({base['ms_per_pair_wall']:.2f} wall), all "
          f"keypoints, BFMatcher + MAGSAC F")  # fmt: skip
    print(f"speed-up:    {base['ms_per_pair_cpu'] / ms:.1f}x (goal: <= 5 ms/pair/core)")
    if ext:
        print(
            f"extraction:  {ext['images_per_cpu_s']:.1f} images/s per core ({ext['keypoints_mean']:.0f} keypoints)"
        )
    for w, r in scaling.items():
        print(
            f"Ray, {w} task(s) in flight: best {max(r):.0f} pairs/s (runs: {', '.join(f'{x:.0f}' for x in r)})"
        )
    print(
        f"projection, 1M images x B=50: {pairs_1m / 1e6:.0f}M pairs x {ms:.2f} ms = {core_h:,.0f} core-hours "
        f"({core_h / 64:,.1f} h on 64 cores); features {kb:.0f} KB/image = {kb * 1e6 / 1024**2:,.0f} GB; "
        f"per 64-query task: <= {64 * 51 * kb / 1024:,.0f} MB features + {min(2048, 64 * 51) * 0.25:,.0f} MB prepared"
    )
    print(json.dumps({
        "ms_per_pair_cpu": round(ms, 3), "baseline_ms_per_pair_cpu": round(base["ms_per_pair_cpu"], 3),
        "speedup": round(base["ms_per_pair_cpu"] / ms, 2), "pairs": len(pairs), "baseline_pairs": len(sub),
        "extract_images_per_cpu_s": round(ext["images_per_cpu_s"], 2) if ext else None,
        "ray_pairs_per_s": {str(k): [round(x, 1) for x in v] for k, v in scaling.items()},
        "core_hours_1M_B50": round(core_h, 1), "features_kb_per_image": round(kb, 1),
        "load_before": round(load0[0], 2), "load_after": round(load1[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
