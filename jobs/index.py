"""`reid index EMBEDDINGS... --out INDEX`: a sharded FAISS index over one or more surveys.

Steps: validate every input (embed manifests, one model, one dim, unique image ids) -> pick the
factory by size -> train the coarse quantizer once on a sample (a Ray task) -> build shards of
bounded size in parallel (Ray tasks: read rows, add to a copy of the trained index, write the
FAISS file, then the id table as the shard's commit) -> calibrate the new-individual threshold on
labelled images (the search tasks of `reid match`) -> write the version's manifests -> switch the
pointer ``INDEX/_manifest.json`` last. A failed build leaves the previous version in service; a
re-run of the same build resumes its version (committed shards are skipped).
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from cluster.runtime import ray_get
from cluster.search import knn
from jobs.common import (
    Input,
    JobConfig,
    Output,
    check_locations,
    print_summary,
)
from jobs.registry import RAY, Job, add_job
from reid import embeddings, manifest, matching, storage
from reid.embeddings import Block, RowRange, embeddings_ranges
from reid.errors import ConfigError, ReidError
from reid.review import apply as review_apply
from reid.review.apply import Reviewed
from reid.review.resolve import ID_FORMAT, check_id_format
from reid.schema import CARRIED_COLUMNS, check_unique
from reid.search import faiss_index, index_store
from reid.search.allvsall import gallery_table
from reid.search.index_store import IndexInfo, ShardInfo

JOB = "index"
# How it runs, not what it builds: these do not change the index version.
RUNTIME = ("force", "gpu", "keep_versions", *RAY)
SAMPLE_CHUNK = 256  # rows per randomly chosen chunk when sampling (few row-group reads)


class IndexConfig(JobConfig):
    embeddings: list[Input] = Field(
        description="embeddings outputs (one per survey/year, or several surveys)"
    )
    out: Output = Field(description="index location: a path or s3:// URI")
    factory: str | None = Field(None, description="FAISS factory string (default: chosen by size)")
    shard_size: int = Field(1_000_000, ge=1, description="vectors per shard at most")
    nprobe: int | None = Field(None, ge=1, description="IVF cells probed by default (stored with the index)")
    train_sample: int | None = Field(
        None, ge=1, description="rows to train the quantizer on (default: by nlist)"
    )
    target_false_new: float = Field(0.05, gt=0, lt=1, description="known individuals called new, at most")
    calibration_queries: int = Field(20_000, ge=0, description="labelled images used to calibrate (0 = off)")
    calibration_k: int = Field(20, ge=1, description="neighbours per calibration query")
    calibration_exclude_same_camera_day: bool = Field(True, description="bursts do not count as resightings")
    keep_versions: int = Field(2, ge=1, description="index versions kept (the one in service included)")
    reviews: Input | None = Field(
        None, description="reviewers' decisions: confirmed photos are indexed with their reviewed labels"
    )
    id_format: str = Field(ID_FORMAT, description="new individual ids minted from reviews")
    gpu: bool | None = Field(None, description="GPU FAISS: None = when the cluster has GPUs")
    seed: int = Field(0, description="seed of the quantizer's training sample")
    force: bool = Field(False, description="build a new version even if this one is in service")
    address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray")

    @field_validator("embeddings")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one embeddings output")
        if len(set(v)) != len(v):
            raise ValueError("an embeddings output is given twice")
        return v


# --------------------------------------------------------------------------------------------
# Inputs


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


# --------------------------------------------------------------------------------------------
# Ray tasks


def _read_rows(ranges: list[RowRange], columns: list[str]) -> pa.Table:
    return pa.concat_tables([embeddings.read_range(r, columns) for r in ranges])


def train_task(
    factory: str, dim: int, sample: list[tuple], n: int, out_uri: str, gpu: bool, seed: int
) -> int:
    """Train the shared quantizer on the sampled rows and save the empty trained index."""
    faiss_index.set_threads(1)
    parts = [embeddings.vectors_of(_read_rows(rr, ["embedding"]).take(pa.array(pos))) for rr, pos in sample]
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
    table = _read_rows(ranges, ["image_id", "embedding", "model_id", *CARRIED_COLUMNS])
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


# --------------------------------------------------------------------------------------------
# Calibration


def calibrate(cfg: IndexConfig, info: IndexInfo, gpu: bool | None) -> dict:
    """Threshold for the target false-new rate, on labelled images whose individual has others."""
    if cfg.calibration_queries == 0:
        return {"threshold": None, "reason": "calibration turned off"}
    gallery = gallery_table(info)
    labels = gallery.column("individual_id")
    counts = pc.value_counts(labels.drop_null())
    multi = [v["values"] for v in counts.to_pylist() if v["counts"] >= 2]
    eligible = np.asarray(pc.is_in(labels, value_set=pa.array(multi, pa.string())).fill_null(False))
    if eligible.sum() < 2:
        return {"threshold": None, "n": 0, "reason": "no labelled individual with two or more images"}
    ranges = [r for s in info.shards for r in s.ranges]
    blocks = [
        Block(i, rr, pos.tolist())
        for i, (rr, pos) in enumerate(sample_chunks(ranges, eligible, cfg.calibration_queries, cfg.seed + 1))
    ]
    exclude = matching.Exclusions(True, cfg.calibration_exclude_same_camera_day, False)
    metas, matches = [], []
    for _, meta, d, g in knn(
        info, blocks, cfg.calibration_k, exclude, info.nprobe, gpu=gpu, desc="calibrate"
    ):
        metas.append(meta)
        matches.append(matching.matches_table(meta, d, g, gallery))
    return matching.calibrate(pa.concat_tables(metas), pa.concat_tables(matches), cfg.target_false_new)


# --------------------------------------------------------------------------------------------
# The job


def _version_key(cfg: IndexConfig, plan: dict, factory: str, reviews: str | None = None) -> str:
    lineage = [(uri, (manifest.read_manifest(uri) or {}).get("ended_at")) for uri in cfg.embeddings]
    key = {
        "inputs": lineage,
        "ranges": [[r.uri, r.start, r.stop] for r in plan["ranges"]],
        "config": cfg.model_dump(exclude={*RUNTIME, "out"}),  # runtime settings: jobs/registry.py
        "factory": factory,
        "reviews": reviews,
    }
    if cfg.force:
        key["forced_at"] = time.time_ns()
    return "v-" + hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _cleanup(out: str, keep: list[str], keep_versions: int) -> list[str]:
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


def run(cfg: IndexConfig) -> dict:
    """Build (or resume) an index version and put it in service; returns the summary."""
    import ray

    from cluster.runtime import connect, task_env

    started, t0 = manifest.now(), time.perf_counter()
    check_locations(cfg)  # before the inputs are read: a bad --out is refused at once
    m = manifest.read_manifest(cfg.out)
    if m and m.get("job") != JOB:
        raise ReidError(f"{cfg.out} holds the output of `reid {m.get('job')}`; choose another --out")
    plan = plan_inputs(cfg.embeddings)
    dim, n = plan["dim"], plan["n"]
    factory = cfg.factory or faiss_index.choose_factory(n, dim)
    trained_needed = faiss_index.needs_training(factory, dim)  # also validates the factory string
    if trained_needed and cfg.train_sample is not None and cfg.train_sample < 2:
        raise ConfigError("train_sample must be at least 2")
    reviewed = review_apply.load(cfg.reviews, check_id_format(cfg.id_format)) if cfg.reviews else None
    version = _version_key(cfg, plan, factory, reviewed.digest if reviewed else None)
    if m and m.get("version") == version and not cfg.force:
        return {**m.get("summary", {}), "up_to_date": True}

    connect(cfg.address, num_cpus=cfg.num_cpus)
    n_gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.gpu is not False else 0
    if cfg.gpu and not n_gpus:
        raise ConfigError("--gpu was asked for, but the Ray cluster has no GPU")
    task = {"num_cpus": 1, "num_gpus": 1 if n_gpus else 0, "runtime_env": task_env()}
    vuri = storage.join(cfg.out, index_store.VERSIONS, version)
    shards, offset = [], 0
    for i, group in enumerate(embeddings.split_ranges(plan["ranges"], cfg.shard_size)):
        rows = sum(r.rows for r in group)
        shards.append(ShardInfo(index_store.shard_name(i), rows, offset, group))
        offset += rows

    timings = {}
    trained_uri = None
    if trained_needed:
        t = time.perf_counter()
        trained_uri = storage.join(vuri, "trained.faiss")
        want = cfg.train_sample or faiss_index.train_sample_size(factory, n)
        if not storage.exists(trained_uri):
            sample = sample_chunks(plan["ranges"], None, want, cfg.seed)
            train = ray.remote(train_task).options(**task)
            ray_get(train.remote(factory, dim, sample, want, trained_uri, bool(n_gpus), cfg.seed))
        timings["train_s"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    build = ray.remote(build_task).options(**task, max_retries=2)
    todo = [s for s in shards if not storage.exists(storage.join(vuri, s.name + ".ids.parquet"))]
    refs = [
        build.remote(
            vuri, s.name, s.ranges, trained_uri, factory, dim, plan["model_id"], bool(n_gpus), reviewed
        )
        for s in todo
    ]
    ray_get(refs)
    timings["build_s"] = round(time.perf_counter() - t, 3)

    info = IndexInfo(
        uri=cfg.out,
        version=version,
        dim=dim,
        factory=factory,
        model_id=plan["model_id"],
        shards=shards,
        nprobe=cfg.nprobe or faiss_index.default_nprobe(factory),
        sources=list(cfg.embeddings),
        counts={"images": n, "shards": len(shards), "per_input": plan["rows"]},
        created_at=started,
    )
    index_store.write_info(info)
    t = time.perf_counter()
    calibration = calibrate(cfg, info, cfg.gpu)
    timings["calibrate_s"] = round(time.perf_counter() - t, 3)
    info.threshold, info.calibration = calibration.get("threshold"), calibration
    index_store.write_info(info)

    summary = {
        "version": version,
        "images": n,
        "shards": len(shards),
        "factory": factory,
        "dim": dim,
        "model_id": plan["model_id"],
        "nprobe": info.nprobe,
        "threshold": info.threshold,
        "calibration": calibration,
        "shards_skipped": len(shards) - len(todo),
        **timings,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    counts = {"images": n, "shards": len(shards), "per_input": plan["rows"]}
    extra = {
        "version": version,
        "model_id": plan["model_id"],
        "dim": dim,
        "factory": factory,
        "threshold": info.threshold,
        "summary": summary,
        "reviews": reviewed.lineage() if reviewed else None,
    }
    inputs = cfg.embeddings + ([cfg.reviews] if cfg.reviews else [])
    manifest.write_manifest(vuri, JOB, cfg.model_dump(), inputs, counts, started, **extra)
    previous = m.get("version") if m else None
    manifest.write_manifest(cfg.out, JOB, cfg.model_dump(), inputs, counts, started, **extra)  # pointer
    summary["removed_versions"] = _cleanup(
        cfg.out, [version] + ([previous] if previous else []), cfg.keep_versions
    )
    return summary


def _show(cfg: IndexConfig, summary: dict) -> None:
    print_summary(JOB, summary)
    cal = summary.get("calibration") or {}
    if cal.get("threshold") is not None:
        print(
            f"threshold {cal['threshold']:.4f}: false-new {cal['false_new']:.3f} on {cal['n']} "
            f"labelled queries (target {cal['target_false_new']}), accuracy@1 {cal['accuracy_at_1']:.3f}"
        )


add_job(
    Job(
        name=JOB,
        config=IndexConfig,
        run=run,
        help="Build a sharded FAISS index over embeddings (several surveys -> one population index).",
        args=("embeddings",),
        runtime=frozenset(RUNTIME),
        show=_show,
    )
)
