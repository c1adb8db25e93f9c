"""Sharded FAISS indexes of L2-normalised embeddings (inner product = cosine similarity).

The factory is picked by size: exact ``Flat`` for small populations, ``IVF<nlist>,Flat`` as N
grows, ``IVF<nlist>,PQ<m>`` beyond that; any FAISS factory string can be passed instead. One
coarse quantizer is trained once on a sample and copied into every shard, so all shards probe
the same cells and a sharded search returns what the unsharded index would.

On storage an index is a folder (or S3 prefix)::

    INDEX/_manifest.json                  job manifest + "version": the pointer, written last
    INDEX/versions/<v>/manifest.json      dim, metric, factory, model_id, counts, shards, threshold
    INDEX/versions/<v>/shard-00000.faiss  one FAISS file per shard
    INDEX/versions/<v>/shard-00000.ids.parquet  row i of the shard = FAISS id i (+ carried metadata)

A rebuild writes a new version and switches the pointer last, so a failed rebuild leaves the
previous version in service. GPU FAISS is used when the installed faiss has GPU support and a GPU
is visible; everything else runs on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reid import storage
from reid.errors import ConfigError, ReidError, SchemaError
from reid.manifest import MANIFEST
from reid.schema import CARRIED_COLUMNS

METRIC = "inner_product"
INDEX_MANIFEST = "manifest.json"
VERSIONS = "versions"
FLAT_MAX = 50_000  # up to here exact search is cheap enough for all-vs-all
IVF_FLAT_MAX = 5_000_000  # beyond this, compress the vectors (PQ)
NORM_TOL = 1e-2  # |1 - ||x||| above this means the embeddings were not L2-normalised
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)  # sub-quantizers GPU IVF-PQ takes
ID_COLUMNS = ["image_id", *CARRIED_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Choosing, training, building and searching one FAISS index


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


# ---------------------------------------------------------------------------------------------
# Embeddings rows: vectors, checks and row ranges


def vectors_of(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The ``fixed_size_list<float32>[d]`` column as a float32 array [n, d]."""
    col = table.column(column)
    dim = col.type.list_size
    if col.null_count:
        raise SchemaError(f"column {column!r} has {col.null_count} null embeddings")
    if len(col) == 0:
        return np.zeros((0, dim), np.float32)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def check_model(table: pa.Table, model_id: str, source: str, fix: str) -> None:
    """Refuse rows embedded by another model than ``model_id``, naming the first one and the fix."""
    import pyarrow.compute as pc

    other = table.filter(pc.not_equal(table.column("model_id"), model_id))
    if len(other):
        raise ReidError(
            f"{source}: model_id {other.column('model_id')[0].as_py()!r} differs from the expected "
            f"{model_id!r}; {fix}"
        )


def check_normalised(vectors: np.ndarray, source: str) -> None:
    """Refuse vectors that are not finite unit vectors (inner product would not be cosine)."""
    if len(vectors) == 0:
        return
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOL)
    if bad.any():
        i = int(np.argmax(bad))
        raise ReidError(
            f"{source}: {int(bad.sum())} embeddings are not L2-normalised (row {i} has norm "
            f"{norms[i]:.4g}); re-run `reid embed`, which writes unit vectors"
        )


@dataclass(frozen=True)
class RowRange:
    """Rows ``start:stop`` of one Parquet file of an embeddings folder."""

    uri: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def parquet_rows(uri: str) -> int:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_range(r: RowRange, columns: list[str] | None = None) -> pa.Table:
    """Read rows ``r.start:r.stop`` of a Parquet file, touching only the row groups needed."""
    fs, path = storage.resolve(r.uri)
    try:
        f = fs.open_input_file(path)
    except FileNotFoundError as e:
        raise ReidError(f"{r.uri}: embeddings file not found (moved or deleted since indexing?)") from e
    with f:
        pf = pq.ParquetFile(f)
        if r.stop > pf.metadata.num_rows:
            raise ReidError(
                f"{r.uri}: has {pf.metadata.num_rows} rows, the index expects at least {r.stop}; "
                "the embeddings changed since indexing: rebuild the index"
            )
        groups, first, pos = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if pos + n > r.start and pos < r.stop:
                groups.append(g)
                first = pos if first is None else first
            pos += n
        if not groups:
            return pf.schema_arrow.empty_table().select(columns) if columns else pf.schema_arrow.empty_table()
        table = pf.read_row_groups(groups, columns=columns)
    return table.slice(r.start - first, r.rows)


def split_ranges(ranges: list[RowRange], size: int) -> list[list[RowRange]]:
    """Cut a sequence of row ranges into consecutive groups of at most ``size`` rows each."""
    if size < 1:
        raise ConfigError(f"group size must be >= 1, got {size}")
    groups: list[list[RowRange]] = []
    current: list[RowRange] = []
    room = size
    for r in ranges:
        start = r.start
        while start < r.stop:
            take = min(room, r.stop - start)
            current.append(RowRange(r.uri, start, start + take))
            start += take
            room -= take
            if room == 0:
                groups.append(current)
                current, room = [], size
    if current:
        groups.append(current)
    return groups


# ---------------------------------------------------------------------------------------------
# The index on storage


@dataclass
class ShardInfo:
    name: str  # file stem, e.g. "shard-00000"
    rows: int
    offset: int  # global id of the shard's row 0
    ranges: list[RowRange] = field(default_factory=list)


@dataclass
class IndexInfo:
    """What ``manifest.json`` of an index version says (plus where it lives)."""

    uri: str
    version: str
    dim: int
    factory: str
    model_id: str
    shards: list[ShardInfo]
    metric: str = METRIC
    nprobe: int = 1
    threshold: float | None = None
    calibration: dict = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    created_at: str | None = None

    @property
    def version_uri(self) -> str:
        return storage.join(self.uri, VERSIONS, self.version)

    @property
    def ntotal(self) -> int:
        return sum(s.rows for s in self.shards)

    def shard_uri(self, i: int, suffix: str = ".faiss") -> str:
        return storage.join(self.version_uri, self.shards[i].name + suffix)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("uri")
        for s in d["shards"]:
            s["ranges"] = [[r["uri"], r["start"], r["stop"]] for r in s["ranges"]]
        return d

    @classmethod
    def from_json(cls, uri: str, d: dict) -> IndexInfo:
        d = dict(d)
        shards = [
            ShardInfo(s["name"], s["rows"], s["offset"], [RowRange(*r) for r in s.get("ranges", [])])
            for s in d.pop("shards")
        ]
        known = {f for f in cls.__dataclass_fields__} - {"uri", "shards"}
        return cls(uri=uri, shards=shards, **{k: v for k, v in d.items() if k in known})


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_info(info: IndexInfo) -> None:
    storage.write_text(storage.join(info.version_uri, INDEX_MANIFEST), json.dumps(info.to_json(), indent=2))


def read_info(uri: str, version: str) -> IndexInfo:
    target = storage.join(uri, VERSIONS, version, INDEX_MANIFEST)
    if not storage.exists(target):
        raise ReidError(
            f"{uri}: index version {version!r} has no {INDEX_MANIFEST}; rebuild with `reid index`"
        )
    return IndexInfo.from_json(uri, json.loads(storage.read_text(target)))


def current_version(uri: str) -> str | None:
    """The version the pointer (``INDEX/_manifest.json``) names, or None when there is none yet."""
    target = storage.join(uri, MANIFEST)
    if not storage.exists(target):
        return None
    return json.loads(storage.read_text(target)).get("version")


def open_index(uri: str) -> IndexInfo:
    """The index version in service at ``uri``; a clear error when there is none."""
    version = current_version(uri)
    if version is None:
        if not storage.exists(uri):
            raise ReidError(f"{uri}: index not found; build it with `reid index EMBEDDINGS --out {uri}`")
        raise ReidError(f"{uri}: no committed index (no {MANIFEST}); run `reid index` to build it")
    return read_info(uri, version)


def list_versions(uri: str) -> list[str]:
    fs, path = storage.resolve(storage.join(uri, VERSIONS))
    if not storage.exists(storage.join(uri, VERSIONS)):
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def load_shard(info: IndexInfo, i: int, gpu: bool | None = None) -> tuple[faiss.Index, pa.Table]:
    """Shard ``i``: its FAISS index (on the GPU when asked/available) and its id table."""
    index = load_faiss(info.shard_uri(i))
    ids = storage.read_parquet(info.shard_uri(i, ".ids.parquet"))
    if index.ntotal != len(ids) or index.ntotal != info.shards[i].rows:
        raise ReidError(
            f"{info.shard_uri(i)}: holds {index.ntotal} vectors and {len(ids)} ids, the manifest says "
            f"{info.shards[i].rows}; the index is damaged: rebuild it with `reid index --force`"
        )
    if use_gpu(gpu):
        index = to_gpu(index)
    return index, ids


def check_compatible(info: IndexInfo, model_id: str | None, dim: int, source: str) -> None:
    """Refuse queries embedded by another model or with another dimension, naming both."""
    if dim != info.dim:
        raise ReidError(
            f"{source}: embeddings have dim {dim}, the index {info.uri} has dim {info.dim} "
            f"(model_id {info.model_id!r}); embed with the index's model or rebuild the index"
        )
    if model_id != info.model_id:
        raise ReidError(
            f"{source}: model_id {model_id!r} differs from the index {info.uri} (model_id "
            f"{info.model_id!r}); embed these photos with the index's model or rebuild the index"
        )
