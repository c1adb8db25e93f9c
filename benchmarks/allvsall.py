"""All-vs-all matching: exact sharded kNN vs the machine's sgemm, IVF recall/speed-up, memory vs N.

One run, through the jobs themselves (`reid index` + `reid match` on an embedded Ray):

1. exact all-vs-all (Flat shards, (shard x block) tasks) at --exact-n vectors: GFLOP/s of the
   kNN phase (2*N*N*d / wall) against numpy sgemm on the same cores (goal >= 0.85); also per
   CPU-second (tasks + driver vs one-thread sgemm), which other processes on the machine distort
   much less than wall time;
2. at --n clustered vectors (default 1M x 512): new photos (--queries) matched exactly (Flat) and
   with IVF for a sweep of nprobe: recall@10 against exact and the search speed-up (goal: recall
   >= 0.95 with >= 20x). Speed-up = CPU seconds of the exact tasks' searches / the IVF ones (same
   queries, same tasks; shard loading excluded); wall-clock ratios are reported beside it;
3. peak memory against N: the streaming (shard x block) search vs a dense N x N similarity matrix
   + argpartition (each in a fresh process, same reid functions the tasks run);

and ends with one JSON line of the figures.

    python benchmarks/allvsall.py [--n 1000000] [--dim 512] [--exact-n 65536] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("REID_SHARD_CACHE", "4")  # the 1M run's shards stay loaded between sweeps

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from reid import manifest  # noqa: E402
from reid.schema import embeddings_schema  # noqa: E402

MODEL = "bench-model"


# --------------------------------------------------------------------------------------------
# Data: clustered like re-id embeddings (groups ~ species/viewpoint, individuals, photos)


class Population:
    """Groups of individuals; each photo = its individual's centre + noise, L2-normalised."""

    def __init__(
        self, n: int, dim: int, groups: int, per_individual: float, spread: float, noise: float, seed: int = 0
    ):
        rng = np.random.default_rng(seed)
        self.dim, self.noise = dim, noise
        self.n_ind = max(1, int(n / per_individual))
        g = rng.standard_normal((groups, dim), dtype=np.float32)
        self.centres = g[rng.integers(0, groups, self.n_ind)] + spread * rng.standard_normal(
            (self.n_ind, dim), dtype=np.float32
        )

    def photos(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        who = rng.integers(0, self.n_ind, n)
        x = self.centres[who] + self.noise * rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, who


def write_embeddings(
    uri: str, pop: Population, n: int, prefix: str, seed: int, part_rows: int = 131072
) -> None:
    """An embeddings output as `reid embed` commits one (parts, then the manifest), chunk by chunk."""
    schema = embeddings_schema(pop.dim)
    for p, lo in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - lo)
        x, who = pop.photos(m, seed + p)
        t = pa.table(
            {
                "image_id": pa.array([f"{prefix}{i:08d}" for i in range(lo, lo + m)]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), pop.dim),
                "model_id": pa.array([MODEL] * m),
                "individual_id": pa.array([f"ind{w}" for w in who]),
                "survey": pa.array([str(2021 + i % 3) for i in range(lo, lo + m)]),
                "captured_at": pa.nulls(m, pa.timestamp("us", tz="UTC")),
                "camera_id": pa.nulls(m, pa.string()),
                "viewpoint": pa.nulls(m, pa.string()),
            },
            schema=schema,
        )
        # random floats do not compress: write plainly (benchmark input, not a job output)
        os.makedirs(uri, exist_ok=True)
        pq.write_table(
            t, os.path.join(uri, f"part-{p:05d}.parquet"), row_group_size=16384, compression="none"
        )
    manifest.write_manifest(
        uri, "embed", {"benchmark": True}, [], {"embeddings": n}, manifest.now(), model_id=MODEL, dim=pop.dim
    )


# --------------------------------------------------------------------------------------------
# Measurements


def sgemm_gflops(
    threads: int, m: int = 8192, n: int = 16384, d: int = 512, reps: int = 3, cpu_time: bool = False
) -> float:
    """Best-of-``reps`` numpy float32 matmul GFLOP/s on ``threads`` threads (same shapes as a task);
    per CPU-second instead of per wall second with ``cpu_time`` (robust to other load)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, d), dtype=np.float32)
    b = rng.standard_normal((n, d), dtype=np.float32)
    clock = time.process_time if cpu_time else time.perf_counter
    out = np.empty((m, n), np.float32)
    best = 0.0
    with threadpool_limits(threads):
        np.matmul(a, b.T, out=out)  # warm up (and fault the output pages in: pure sgemm below)
        for _ in range(reps):
            t = clock()
            np.matmul(a, b.T, out=out)
            best = max(best, 2.0 * m * n * d / (clock() - t) / 1e9)
    return best


def faiss_flat_gflops_cpu(m: int = 8192, n: int = 16384, d: int = 512, k: int = 11, reps: int = 3) -> float:
    """The exact kernel each task runs (reid.search.faiss_index.search on a Flat shard: numpy sgemm blocks +
    FAISS's top-k heap), alone, one thread, per CPU-second."""
    from reid.search import faiss_index

    faiss_index.set_threads(1)
    rng = np.random.default_rng(0)
    index = faiss_index.build_shard(
        faiss_index.make_index("Flat", d), rng.standard_normal((n, d), dtype=np.float32)
    )
    q = rng.standard_normal((m, d), dtype=np.float32)
    best = 0.0
    for _ in range(reps):
        t = time.process_time()
        faiss_index.search(index, q, k)
        best = max(best, 2.0 * m * n * d / (time.process_time() - t) / 1e9)
    faiss_index.set_threads(os.cpu_count())
    return best


class TreeRSS:
    """Peak resident memory of this process and its descendants (the local Ray), sampled."""

    def __init__(self, every: float = 0.25):
        import psutil

        self.proc, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _mem_child(kind: str, n: int, dim: int, k: int, q) -> None:
    """In a fresh process: all-vs-all top-k at N, streaming (reid) or dense; reports peak RSS."""
    from reid import matching
    from reid.search import faiss_index

    faiss_index.set_threads(1)
    pop = Population(n, dim, groups=max(1, n // 500), per_individual=10, spread=1.0, noise=1.0)
    x, _ = pop.photos(n, 1)
    base = _peak_rss()  # interpreter + libraries + the N x d input
    t = time.perf_counter()
    if kind == "dense":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            s = x @ x.T
            np.fill_diagonal(s, -np.inf)
            top = np.argpartition(-s, k, axis=1)[:, :k]
            del top, s
    else:
        shard_size, block = max(1, n // 4), 4096
        shards = [
            faiss_index.build_shard(faiss_index.make_index("Flat", dim), x[lo : lo + shard_size])
            for lo in range(0, n, shard_size)
        ]
        ids = pa.table({"image_id": [str(i) for i in range(n)]})
        metas = [matching.GalleryMeta(ids.slice(lo, shard_size)) for lo in range(0, n, shard_size)]
        exclude = matching.Exclusions(self_match=True)
        for lo in range(0, n, block):
            parts = []
            for j, shard in enumerate(shards):
                d, i = matching.search_shard(
                    shard, x[lo : lo + block], k, ids.slice(lo, block), metas[j], exclude
                )
                parts.append((d, matching.to_global(i, j * shard_size)))
            matching.merge_topk(parts, k)
    q.put((_peak_rss(), base, time.perf_counter() - t))


def peak_memory(kind: str, n: int, dim: int, k: int = 10) -> tuple[float, float, float]:
    """(peak RSS GB, of which before the search GB, seconds) of one all-vs-all in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_mem_child, args=(kind, n, dim, k, q))
    p.start()
    rss, base, secs = q.get()
    p.join()
    return rss / 2**30, base / 2**30, secs


# --------------------------------------------------------------------------------------------
# The run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="population size for the IVF comparison")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument(
        "--exact-n",
        type=int,
        default=65536,
        help="N of the exact all-vs-all throughput run (fixed costs amortised)",
    )
    ap.add_argument("--queries", type=int, default=1000, help="new photos matched at --n")
    ap.add_argument("--nlist", type=int, default=2048, help="IVF cells at --n (training cost on 2 cores)")
    ap.add_argument("--nprobe", default="1,2,4,8,16,32", help="IVF nprobe sweep")
    ap.add_argument("--mem-n", default="4096,8192,16384", help="N values of the memory comparison")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    from cluster.runtime import connect, shutdown
    from jobs import index, match

    work = args.workdir or tempfile.mkdtemp(prefix="reid-allvsall-")
    cpus = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs; load {os.getloadavg()}")
    print(f"scratch: {work}")
    fig: dict = {"cpus": cpus, "dim": args.dim, "load_avg_start": round(os.getloadavg()[0], 1)}
    connect(num_cpus=cpus)
    try:
        # 1. exact all-vs-all throughput vs sgemm ------------------------------------------------
        ne, d = args.exact_n, args.dim
        pop = Population(ne, d, groups=max(1, ne // 500), per_individual=10, spread=1.0, noise=1.0, seed=1)
        write_embeddings(f"{work}/exact-emb", pop, ne, "e", seed=100)
        index.run(
            index.IndexConfig(
                embeddings=[f"{work}/exact-emb"],
                out=f"{work}/exact-idx",
                factory="Flat",
                shard_size=max(1, ne // 2),
                calibration_queries=0,
            )
        )
        sg_before = sgemm_gflops(cpus)
        s = match.run(
            match.MatchConfig(index=f"{work}/exact-idx", out=f"{work}/exact-m", k=10, query_block=8192)
        )
        sg_after = sgemm_gflops(cpus)
        sgemm = max(sg_before, sg_after)
        exact_gf = 2.0 * ne * ne * d / s["knn_s"] / 1e9
        # The same per CPU-second (tasks + driver vs one-thread sgemm): robust to other processes.
        sg_cpu = sgemm_gflops(1, cpu_time=True)
        exact_cpu_gf = 2.0 * ne * ne * d / (s["cpu_s"] + s["driver_cpu_s"]) / 1e9
        kernel_cpu_gf = faiss_flat_gflops_cpu()  # FAISS's exact search alone, one task's shape
        fig.update(
            exact_task_search_s=s["search_s"],
            exact_task_read_s=s["read_s"],
            exact_n=ne,
            exact_knn_s=s["knn_s"],
            exact_gflops=round(exact_gf, 2),
            sgemm_gflops=round(sgemm, 2),
            exact_vs_sgemm=round(exact_gf / sgemm, 3),
            exact_cpu_gflops_per_core=round(exact_cpu_gf, 2),
            sgemm_cpu_gflops_per_core=round(sg_cpu, 2),
            exact_vs_sgemm_cpu=round(exact_cpu_gf / sg_cpu, 3),
            faiss_kernel_vs_sgemm_cpu=round(kernel_cpu_gf / sg_cpu, 3),
            exact_cpu_split_s={k: s[k] for k in ("search_cpu_s", "cpu_s", "driver_cpu_s")},
        )
        print(
            f"exact all-vs-all N={ne} d={d}: kNN {s['knn_s']:.2f} s = {exact_gf:.1f} GFLOP/s; numpy sgemm "
            f"{sg_before:.1f}/{sg_after:.1f} GFLOP/s (before/after) -> ratio {exact_gf / sgemm:.3f}"
        )
        print(
            f"  per CPU-second: {exact_cpu_gf:.1f} GFLOP/s (tasks + driver) vs one-thread sgemm {sg_cpu:.1f} "
            f"-> ratio {exact_cpu_gf / sg_cpu:.3f}; FAISS flat search alone {kernel_cpu_gf:.1f} "
            f"(ratio {kernel_cpu_gf / sg_cpu:.3f})"
        )

        # 2. IVF vs exact at N --------------------------------------------------------------------
        n = args.n
        t = time.perf_counter()
        pop = Population(n, d, groups=2000, per_individual=10, spread=1.0, noise=1.0, seed=2)
        write_embeddings(f"{work}/emb", pop, n, "img", seed=1000)
        write_embeddings(f"{work}/new", pop, args.queries, "new", seed=999_999)
        fig["data_s"] = round(time.perf_counter() - t, 1)
        shard = (n + 3) // 4
        with TreeRSS() as rss:
            t = time.perf_counter()
            index.run(
                index.IndexConfig(
                    embeddings=[f"{work}/emb"],
                    out=f"{work}/flat",
                    factory="Flat",
                    shard_size=shard,
                    calibration_queries=0,
                )
            )
            fig["flat_build_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            b = index.run(
                index.IndexConfig(
                    embeddings=[f"{work}/emb"],
                    out=f"{work}/ivf",
                    factory=f"IVF{args.nlist},Flat",
                    shard_size=shard,
                    calibration_queries=0,
                )
            )
            fig.update(
                ivf_factory=f"IVF{args.nlist},Flat",
                ivf_build_s=round(time.perf_counter() - t, 1),
                ivf_train_s=b.get("train_s"),
                ivf_add_s=b.get("build_s"),
            )
            ex = match.run(
                match.MatchConfig(index=f"{work}/flat", out=f"{work}/m-flat", query=f"{work}/new", k=10)
            )
            exact = _neighbours(f"{work}/m-flat", match)
            sweep = []
            for nprobe in [int(v) for v in args.nprobe.split(",")]:
                r = match.run(
                    match.MatchConfig(
                        index=f"{work}/ivf",
                        out=f"{work}/m-ivf{nprobe}",
                        query=f"{work}/new",
                        k=10,
                        nprobe=nprobe,
                    )
                )
                got = _neighbours(f"{work}/m-ivf{nprobe}", match)
                recall = float(np.mean([len(exact[q] & got.get(q, set())) / 10 for q in exact]))
                row = {
                    "nprobe": nprobe,
                    "recall_at_10": round(recall, 4),
                    "speedup": round(ex["search_cpu_s"] / max(r["search_cpu_s"], 1e-9), 1),
                    "speedup_wall": round(ex["search_s"] / max(r["search_s"], 1e-9), 1),
                    "speedup_knn_phase": round(ex["knn_s"] / r["knn_s"], 1),
                    "search_cpu_s": r["search_cpu_s"],
                }
                sweep.append(row)
                print(
                    f"IVF{args.nlist} nprobe={nprobe:3d}: recall@10 {recall:.4f}, search speed-up "
                    f"{row['speedup']}x (wall {row['speedup_wall']}x)"
                )
        best = next((r for r in sweep if r["recall_at_10"] >= 0.95), sweep[-1])
        fig.update(
            n=n,
            queries=args.queries,
            exact_search_s=ex["search_s"],
            exact_search_cpu_s=ex["search_cpu_s"],
            exact_query_knn_s=ex["knn_s"],
            ivf_nprobe=best["nprobe"],
            ivf_recall_at_10=best["recall_at_10"],
            ivf_speedup=best["speedup"],
            ivf_speedup_wall=best["speedup_wall"],
            ivf_sweep=sweep,
            peak_rss_gb=round(rss.peak / 2**30, 2),
        )
        print(
            f"exact (Flat) {args.queries} queries x {n}: search {ex['search_s']:.2f} task-s, "
            f"kNN wall {ex['knn_s']:.2f} s; peak RSS (driver + local Ray) {rss.peak / 2**30:.2f} GB"
        )
    finally:
        shutdown()

    # 3. memory vs N: streaming (shard x block) vs a dense N x N matrix ---------------------------
    mem = []
    for m in [int(v) for v in args.mem_n.split(",")]:
        s_gb, s_base, s_s = peak_memory("stream", m, args.dim)
        d_gb, d_base, d_s = peak_memory("dense", m, args.dim)
        mem.append(
            {
                "n": m,
                "stream_gb": round(s_gb, 3),
                "dense_gb": round(d_gb, 3),
                "stream_extra_gb": round(s_gb - s_base, 3),
                "dense_extra_gb": round(d_gb - d_base, 3),
            }
        )
        print(
            f"N={m:6d}: peak RSS streaming {s_gb:.2f} GB (+{s_gb - s_base:.3f} over the input, {s_s:.1f} s), "
            f"dense {d_gb:.2f} GB (+{d_gb - d_base:.3f}, {d_s:.1f} s)"
        )
    fig["mem_vs_n"] = mem
    fig["dense_gb_at_n"] = round(fig["n"] ** 2 * 12 / 2**30, 1)  # float32 scores + int64 argpartition
    print(f"a dense all-vs-all at N={fig['n']} would hold {fig['dense_gb_at_n']} GB (N^2 x 12 bytes)")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    fig["load_avg_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(fig))


def _neighbours(out: str, match) -> dict[str, set[str]]:
    t = match.read_matches(out, columns=["query_id", "neighbor_id"]).to_pydict()
    res: dict[str, set[str]] = {}
    for q, nb in zip(t["query_id"], t["neighbor_id"], strict=True):
        res.setdefault(q, set()).add(nb)
    return res


if __name__ == "__main__":
    main()
