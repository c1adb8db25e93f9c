"""`reid index EMBEDDINGS... --out INDEX`: a sharded FAISS index over one or more surveys.

The build's Ray-free parts (input plan, sampling, the task bodies, version clean-up) are
:mod:`reid.search.build`; this module is the config, the checks and the Ray wiring.

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
from reid.embeddings import Block
from reid.errors import ConfigError, ReidError
from reid.review import apply as review_apply
from reid.review.resolve import ID_FORMAT, check_id_format
from reid.search import faiss_index, index_store
from reid.search.allvsall import gallery_table
from reid.search.build import build_task, cleanup_versions, plan_inputs, sample_chunks, train_task
from reid.search.index_store import IndexInfo, ShardInfo

JOB = "index"
# How it runs, not what it builds: these do not change the index version.
RUNTIME = ("force", "gpu", "keep_versions", *RAY)


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
    summary["removed_versions"] = cleanup_versions(
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
