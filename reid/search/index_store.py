"""A sharded index on storage: versions, their manifest, shards and id tables.

On storage an index is a folder (or S3 prefix)::

    INDEX/_manifest.json                  job manifest + "version": the pointer, written last
    INDEX/versions/<v>/manifest.json      dim, metric, factory, model_id, counts, shards, threshold
    INDEX/versions/<v>/shard-00000.faiss  one FAISS file per shard
    INDEX/versions/<v>/shard-00000.ids.parquet  row i of the shard = FAISS id i (+ carried metadata)

A rebuild writes a new version and switches the pointer last, so a failed rebuild leaves the
previous version in service. Readers check model_id and dim and refuse a mismatch by name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import faiss
import pyarrow as pa
import pyarrow.fs as pafs

from reid import storage
from reid.embeddings import RowRange
from reid.errors import ReidError
from reid.manifest import MANIFEST
from reid.schema import CARRIED_COLUMNS
from reid.search.faiss_index import METRIC, load_faiss, to_gpu, use_gpu

__all__ = [
    "ID_COLUMNS",
    "INDEX_MANIFEST",
    "VERSIONS",
    "IndexInfo",
    "ShardInfo",
    "check_compatible",
    "current_version",
    "list_versions",
    "load_shard",
    "open_index",
    "read_info",
    "shard_name",
    "write_info",
]

INDEX_MANIFEST = "manifest.json"
VERSIONS = "versions"
ID_COLUMNS = ["image_id", *CARRIED_COLUMNS]


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
