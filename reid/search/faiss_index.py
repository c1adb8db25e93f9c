"""FAISS indexes of L2-normalised embeddings (inner product = cosine similarity): choose, train,
build, search, serialize.

The factory is picked by size: exact ``Flat`` for small populations, ``IVF<nlist>,Flat`` as N
grows, ``IVF<nlist>,PQ<m>`` beyond that; any FAISS factory string can be passed instead. One
coarse quantizer is trained once on a sample and copied into every shard, so all shards probe
the same cells and a sharded search returns what the unsharded index would. GPU FAISS is used
when the installed faiss has GPU support and a GPU is visible; everything else runs on the CPU.
"""

from __future__ import annotations

import math
import os
import re
import uuid

import faiss
import numpy as np

from reid import storage
from reid.errors import ConfigError, ReidError

__all__ = [
    "FLAT_MAX",
    "GPU_PQ_M",
    "IVF_FLAT_MAX",
    "METRIC",
    "build_shard",
    "choose_factory",
    "default_nprobe",
    "deserialize",
    "gpu_available",
    "load_faiss",
    "make_index",
    "needs_training",
    "nlist_for",
    "pq_m",
    "save_faiss",
    "search",
    "serialize",
    "set_nprobe",
    "set_threads",
    "to_cpu",
    "to_gpu",
    "train",
    "train_sample_size",
    "use_gpu",
]

METRIC = "inner_product"
FLAT_MAX = 50_000  # up to here exact search is cheap enough for all-vs-all
IVF_FLAT_MAX = 5_000_000  # beyond this, compress the vectors (PQ)
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)  # sub-quantizers GPU IVF-PQ takes


def nlist_for(n: int) -> int:
    """Number of IVF cells: the power of two nearest 4*sqrt(N), at least 39 training points each."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** round(math.log2(max(target, 1)))
    return int(max(16, min(nlist, 65536, max(16, n // 39))))


def pq_m(dim: int) -> int:
    """PQ sub-quantizers: the largest GPU-supported count dividing ``dim`` with >= 4 dims each."""
    ok = [m for m in GPU_PQ_M if dim % m == 0 and m <= max(1, dim // 4)]
    return max(ok) if ok else 1


def choose_factory(n: int, dim: int) -> str:
    """The FAISS factory string for ``n`` vectors of ``dim`` dims (see module docstring)."""
    if n <= FLAT_MAX:
        return "Flat"
    if n <= IVF_FLAT_MAX:
        return f"IVF{nlist_for(n)},Flat"
    return f"IVF{nlist_for(n)},PQ{pq_m(dim)}"


def default_nprobe(factory: str) -> int:
    """A starting nprobe for an IVF factory (cells probed per query); 1 for exact indexes."""
    m = re.search(r"IVF(\d+)", factory)
    if not m:
        return 1
    return int(max(1, min(int(m.group(1)), max(8, int(m.group(1)) // 64))))


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index; a factory string FAISS cannot parse is a ConfigError."""
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1][-160:]
        raise ConfigError(f"index factory {factory!r} is not valid for dim {dim}: {msg}") from e


def needs_training(factory: str, dim: int) -> bool:
    return not make_index(factory, dim).is_trained


def train_sample_size(factory: str, n: int) -> int:
    """Rows to train on: 40 per IVF cell (FAISS wants >= 39), 16k+ for PQ codebooks; at most N."""
    m = re.search(r"IVF(\d+)", factory)
    want = 40 * int(m.group(1)) if m else 0
    if "PQ" in factory:
        want = max(want, 256 * 64)
    return int(min(n, max(want, 10_000)))


def set_threads(n: int | None) -> None:
    """Threads FAISS (OpenMP) and the BLAS libraries (FAISS's and numpy's) may use in this process."""
    if n:
        from threadpoolctl import threadpool_limits

        faiss.omp_set_num_threads(max(1, int(n)))
        threadpool_limits(max(1, int(n)), user_api="blas")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RES = None


def _gpu_resources():
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    return _GPU_RES


def to_gpu(index: faiss.Index, device: int = 0) -> faiss.Index:
    """Copy an index to a GPU (float16 lookup tables for PQ, which GPU PQ needs beyond 48 bytes)."""
    co = faiss.GpuClonerOptions()
    co.useFloat16 = True
    co.useFloat16LookupTables = True
    return faiss.index_cpu_to_gpu(_gpu_resources(), device, index, co)


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if gpu_available() and "Gpu" in type(index).__name__ else index


def use_gpu(gpu: bool | None) -> bool:
    """Resolve a GPU preference: None = automatic (GPU FAISS installed and a GPU visible)."""
    if gpu and not gpu_available():
        raise ConfigError("--gpu asked for GPU FAISS, but none is usable: install the [gpu] extra")
    return gpu_available() if gpu is None else bool(gpu)


def train(factory: str, sample: np.ndarray, gpu: bool | None = None) -> faiss.Index:
    """An empty index whose quantizers are trained on ``sample`` (the shared starting point)."""
    index = make_index(factory, sample.shape[1])
    if index.is_trained:
        return index
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if use_gpu(gpu):
        ivf = faiss.extract_index_ivf(index)
        ivf.clustering_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.IndexFlatIP(ivf.d))
    index.train(sample)
    if use_gpu(gpu):
        faiss.extract_index_ivf(index).clustering_index = None
    return index


def build_shard(trained: faiss.Index | bytes, vectors: np.ndarray, gpu: bool | None = None) -> faiss.Index:
    """A shard: a copy of the trained empty index with ``vectors`` added as ids 0..n-1."""
    index = (
        deserialize(trained)
        if isinstance(trained, (bytes, bytearray, np.ndarray))
        else faiss.clone_index(trained)
    )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if use_gpu(gpu) and index.__class__.__name__ != "IndexFlat":  # GPU speeds up IVF assignment
        gindex = to_gpu(index)
        gindex.add(vectors)
        return faiss.index_gpu_to_cpu(gindex)
    index.add(vectors)
    return index


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    if not nprobe:
        return
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        if hasattr(index, "nprobe"):  # GPU IVF indexes
            index.nprobe = int(nprobe)
        return
    ivf.nprobe = int(nprobe)


def search(index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None):
    """Top-k by inner product: (scores float32 [n, k], ids int64 [n, k]); missing = (-inf, -1)."""
    set_nprobe(index, nprobe)
    k = int(max(1, k))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if index.ntotal == 0 or len(queries) == 0:
        return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    if isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        scores, ids = _flat_ip_search(index, queries, k)
    else:
        scores, ids = index.search(queries, k)
    scores[ids < 0] = -np.inf
    return scores, ids


FLAT_QUERY_BLOCK = 1024  # queries x database rows per product: a 64 MB buffer, sgemm-friendly
FLAT_DB_BLOCK = 16384


def _flat_ip_search(index: faiss.IndexFlat, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search as FAISS does it (blocked product, then a top-k heap per query), with wider
    blocks and numpy's sgemm: 0.91-0.93 of sgemm on this project's test CPU, against 0.83-0.87
    for ``IndexFlat.search`` (whose bundled BLAS and 4096 x 1024 blocks cost more)."""
    n, d, nt = len(queries), index.d, index.ntotal
    base = faiss.rev_swig_ptr(index.get_xb(), nt * d).reshape(nt, d)  # no copy
    scores = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    buf = np.empty(min(n, FLAT_QUERY_BLOCK) * min(nt, FLAT_DB_BLOCK), np.float32)
    for i0 in range(0, n, FLAT_QUERY_BLOCK):
        ni = min(FLAT_QUERY_BLOCK, n - i0)
        heap = faiss.float_minheap_array_t()
        heap.nh, heap.k = ni, k
        heap.val, heap.ids = faiss.swig_ptr(scores[i0:]), faiss.swig_ptr(ids[i0:])
        heap.heapify()
        for j0 in range(0, nt, FLAT_DB_BLOCK):
            nj = min(FLAT_DB_BLOCK, nt - j0)
            block = buf[: ni * nj].reshape(ni, nj)
            np.matmul(queries[i0 : i0 + ni], base[j0 : j0 + nj].T, out=block)
            heap.addn(nj, faiss.swig_ptr(block), j0, 0, ni)
        heap.reorder()
    return scores, ids


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(to_cpu(index)).tobytes()


def deserialize(data: bytes | np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def save_faiss(index: faiss.Index, uri: str) -> None:
    """Write an index file atomically (locally via a temporary name, on S3 as one object)."""
    if storage.is_remote(uri):
        storage.write_bytes(uri, serialize(index))
        return
    _, path = storage.resolve(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    faiss.write_index(to_cpu(index), tmp)
    os.replace(tmp, path)


def load_faiss(uri: str) -> faiss.Index:
    if storage.is_remote(uri):
        return deserialize(storage.read_bytes(uri))
    _, path = storage.resolve(uri)
    if not os.path.exists(path):
        raise ReidError(f"{uri}: index shard not found; rebuild the index with `reid index`")
    return faiss.read_index(path)
