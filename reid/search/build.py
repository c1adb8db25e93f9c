"""Building a sharded index version, without Ray: the inputs checked and planned, sampled chunks
for the quantizer, the quantizer's training and one shard's build (the bodies of `reid index`'s
Ray tasks), and the clean-up of old versions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from reid import embeddings, manifest, storage
from reid.embeddings import RowRange, embeddings_ranges
from reid.errors import ReidError
from reid.review.apply import Reviewed
from reid.schema import CARRIED_COLUMNS, check_unique
from reid.search import faiss_index, index_store

__all__ = [
    "SAMPLE_CHUNK",
    "build_task",
    "cleanup_versions",
    "plan_inputs",
    "read_rows",
    "sample_chunks",
    "train_task",
]

SAMPLE_CHUNK = 256  # rows per randomly chosen chunk when sampling (few row-group reads)


def plan_inputs(inputs: list[str]) -> dict:
    """Every input's row ranges, the common dim and model_id; refuses mixes and duplicate ids."""
    ranges, dims, models, ids, rows = [], {}, {}, [], {}
    for uri in inputs:
        r, dim, model_id = embeddings_ranges(uri)
        ranges += r
        dims[uri], models[uri], rows[uri] = dim, model_id, sum(x.rows for x in r)
        ids += [storage.read_parquet(x.uri, columns=["image_id"]) for x in r]
    if len(set(dims.values())) > 1:
        raise ReidError("embeddings of different dims cannot share an index: " + _by_input(dims))
    if len(set(models.values()) - {None}) > 1:
        raise ReidError(
            "embeddings of different models cannot share an index (scores would not compare): "
            + _by_input(models)
            + "; embed every survey with the same model"
        )
    if not ranges:
        raise ReidError(f"{', '.join(inputs)}: no embeddings to index")
    table = pa.concat_tables(ids)
    try:
        check_unique(table, "image_id", " + ".join(inputs))
    except ReidError as e:
        raise ReidError(f"{e}; an image must be in one input only") from None
    return {
        "ranges": ranges,
        "dim": next(iter(dims.values())),
        "model_id": next((m for m in models.values() if m), None),
        "rows": rows,
        "n": len(table),
    }


def _by_input(values: dict) -> str:
    return ", ".join(f"{uri}: {v}" for uri, v in values.items())


def sample_chunks(ranges: list[RowRange], eligible: np.ndarray | None, want: int, seed: int) -> list[tuple]:
    """Random chunks of rows until ``want`` eligible rows: [(chunk ranges, positions)] in order.

    Positions index the chunk's rows; ``eligible`` is a mask over the concatenated ranges.
    """
    chunks = embeddings.split_ranges(ranges, SAMPLE_CHUNK)
    starts = np.cumsum([0] + [sum(r.rows for r in c) for c in chunks])
    order = np.random.default_rng(seed).permutation(len(chunks))
    chosen, total = [], 0
    for c in order:
        lo, hi = starts[c], starts[c + 1]
        pos = np.arange(hi - lo) if eligible is None else np.flatnonzero(eligible[lo:hi])
        if len(pos):
            chosen.append((int(c), pos))
            total += len(pos)
        if total >= want:
            break
    return [(chunks[c], pos) for c, pos in sorted(chosen)]


def read_rows(ranges: list[RowRange], columns: list[str]) -> pa.Table:
    """The rows of several ranges, in order."""
    return pa.concat_tables([embeddings.read_range(r, columns) for r in ranges])


def train_task(
    factory: str, dim: int, sample: list[tuple], n: int, out_uri: str, gpu: bool, seed: int
) -> int:
    """Train the shared quantizer on the sampled rows and save the empty trained index."""
    faiss_index.set_threads(1)
    parts = [embeddings.vectors_of(read_rows(rr, ["embedding"]).take(pa.array(pos))) for rr, pos in sample]
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    if len(vectors) > n:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), n, replace=False))]
    embeddings.check_normalised(vectors, "training sample")
    index = faiss_index.train(factory, vectors, gpu)
    faiss_index.save_faiss(index, out_uri)
    return len(vectors)


def build_task(
    version_uri: str,
    name: str,
    ranges: list[RowRange],
    trained_uri: str | None,
    factory: str,
    dim: int,
    model_id: str | None,
    gpu: bool,
    reviewed: Reviewed | None = None,
) -> int:
    """One shard: read its rows, add them to the trained index, write FAISS file then id table."""
    faiss_index.set_threads(1)
    table = read_rows(ranges, ["image_id", "embedding", "model_id", *CARRIED_COLUMNS])
    if reviewed is not None:  # confirmed photos carry their reviewed label; merges applied
        table = reviewed.relabel(table)
    if model_id is not None:
        embeddings.check_model(table, model_id, ranges[0].uri, "re-run `reid embed`")
    vectors = embeddings.vectors_of(table)
    embeddings.check_normalised(vectors, ", ".join(sorted({r.uri for r in ranges})))
    trained = faiss_index.load_faiss(trained_uri) if trained_uri else faiss_index.make_index(factory, dim)
    index = faiss_index.build_shard(trained, vectors, gpu)
    faiss_index.save_faiss(index, storage.join(version_uri, name + ".faiss"))
    storage.write_parquet(
        table.select(index_store.ID_COLUMNS), storage.join(version_uri, name + ".ids.parquet")
    )
    return len(table)


def cleanup_versions(out: str, keep: list[str], keep_versions: int) -> list[str]:
    """Delete versions beyond ``keep_versions`` (the new one and the one it replaced come first);
    uncommitted leftovers of failed builds go too."""
    survivors = list(dict.fromkeys(keep))[:keep_versions]
    committed = []
    removed = []
    for v in index_store.list_versions(out):
        m = manifest.read_manifest(storage.join(out, index_store.VERSIONS, v))
        if m is not None and v not in survivors:
            committed.append((m.get("ended_at", ""), v))
        elif m is None and v not in survivors:
            removed.append(v)
    for _, v in sorted(committed, reverse=True):
        if len(survivors) < keep_versions:
            survivors.append(v)
        else:
            removed.append(v)
    for v in removed:
        storage.delete(storage.join(out, index_store.VERSIONS, v))
    return sorted(removed)
