"""`reid match INDEX --out MATCHES [--k 10] [--query EMBEDDINGS]`: sharded all-vs-all k-NN.

Work = (shard x query block) Ray tasks (:func:`cluster.search.knn` running :mod:`reid.search.allvsall`): a read
task loads each block of queries once from the embeddings files into the object store, and every
search task takes one block and one shard (kept loaded in the worker between tasks, on a GPU when
the cluster has one); the driver merges each block's per-shard top-k as results arrive, so it holds
O(block*k) per block in flight (O(N*k) at most) and nobody builds the dense N x N matrix. Each
finished block is committed as
``matches/part-<block>.parquet`` (a re-run skips them); decisions, proposed new individuals and
the population tables follow; ``_manifest.json`` is written last.

Output::

    MATCHES/matches/part-*.parquet   query_id, neighbor_id, rank (1 = best), score (+ surveys, label)
    MATCHES/queries/part-*.parquet   the queries' ids and metadata
    MATCHES/decisions.parquet        query_id, predicted_individual, score, is_new, survey, individual_id
    MATCHES/new_individuals.parquet  image_id, proposed_individual
    MATCHES/identities.parquet, population.parquet, capture_history.{parquet,csv,inp}  (all-vs-all)
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from cluster.search import knn
from jobs.common import (
    Input,
    JobConfig,
    Output,
    check_locations,
    print_summary,
)
from jobs.registry import RAY, Job, add_job
from reid import manifest, matching, storage
from reid.embeddings import Block, blocks_from_ranges, embeddings_ranges
from reid.errors import ReidError
from reid.review import apply as review_apply
from reid.review.apply import Reviewed
from reid.review.resolve import ID_FORMAT, check_id_format
from reid.search import index_store, population
from reid.search.allvsall import gallery_table
from reid.search.index_store import IndexInfo

JOB = "match"
PLAN = "_plan.json"


class MatchConfig(JobConfig):
    index: Input = Field(description="index path or s3:// URI (the version in service is used)")
    out: Output = Field(description="matches output path or s3:// URI")
    query: Input | None = Field(
        None, description="embeddings to match against the index (default: all-vs-all)"
    )
    k: int = Field(10, ge=1, le=1000, description="neighbours per query")
    exclude_self: bool = Field(True, description="drop each image's match with itself")
    exclude_same_camera_day: bool = Field(False, description="skip neighbours from the same camera and day")
    across_surveys: bool = Field(False, description="match only images of other surveys")
    nprobe: int | None = Field(None, ge=1, description="IVF cells probed (default: the index's)")
    threshold: float | None = Field(None, description="new-individual threshold (default: the index's)")
    use_labels: bool = Field(True, description="labelled images keep their label in population tables")
    reviews: Input | None = Field(
        None, description="reviewers' decisions to apply (an index or `reid serve --reviews` folder)"
    )
    id_format: str = Field(
        ID_FORMAT, description="new individual ids minted from reviews, e.g. NYL-{year}-{n:04d}"
    )
    keypoints: list[Input] | None = Field(
        None,
        description="local features (`reid keypoints`; the index's and, with --query, the new photos'): "
        "re-rank each shortlist by verified matches",
    )
    rerank: int = Field(50, ge=1, le=1000, description="with --keypoints: candidates per query re-ranked")
    rerank_block: int = Field(64, ge=1, description="with --keypoints: queries per re-rank task")
    calibration: Literal["isotonic", "logistic"] = Field(
        "isotonic", description="with --keypoints: how scores become probabilities"
    )
    query_block: int = Field(8192, ge=1, description="queries per task")
    workers: int | None = Field(
        None, ge=1, description="search tasks in flight, x2 (default: one per CPU or GPU)"
    )
    gpu: bool | None = Field(None, description="GPU FAISS: None = when the cluster has GPUs")
    force: bool = Field(False, description="recompute even a committed output")
    address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray")

    def exclusions(self) -> matching.Exclusions:
        return matching.Exclusions(self.exclude_self, self.exclude_same_camera_day, self.across_surveys)


# --------------------------------------------------------------------------------------------
# The job


def _plan_key(cfg: MatchConfig, info: IndexInfo, blocks: list[Block], nprobe: int) -> str:
    key = {
        "index": info.uri,
        "version": info.version,
        "k": cfg.k,
        "local": [cfg.keypoints, cfg.rerank, cfg.calibration] if cfg.keypoints else None,
        "exclude": [cfg.exclude_self, cfg.exclude_same_camera_day, cfg.across_surveys],
        "nprobe": nprobe,
        "blocks": [[[r.uri, r.start, r.stop] for r in b.ranges] for b in blocks],
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _part(out: str, kind: str, block_id: int) -> str:
    return storage.join(out, kind, f"part-{block_id:05d}.parquet")


def _prepare_output(cfg: MatchConfig, plan_key: str, decision_key: str) -> dict | None:
    """Returns the existing manifest when this exact run is already committed; otherwise makes
    OUT ready (stale parts of another plan removed, manifest first so readers stop trusting it)."""
    m = manifest.ensure_writable_output(cfg.out, JOB, force=cfg.force)
    plan_uri = storage.join(cfg.out, PLAN)
    old = json.loads(storage.read_text(plan_uri)).get("key") if storage.exists(plan_uri) else None
    if m and old == plan_key and m.get("decision_key") == decision_key:
        return m
    if old != plan_key or cfg.force:
        storage.delete(storage.join(cfg.out, manifest.MANIFEST))
        for kind in ("matches", "queries", "local", "reranked"):
            storage.delete(storage.join(cfg.out, kind))
        storage.write_text(plan_uri, json.dumps({"key": plan_key}))
    return None


def decide_blocks(
    out: str, n_blocks: int, threshold: float | None, reviewed: Reviewed | None = None, kind: str = "matches"
) -> tuple[pa.Table, pa.Table, int]:
    """Decisions block by block, then the new-individual groups from the few edges they need.
    ``reviewed``: confirmed photos are labelled, merged individuals renamed, rejected pairs dropped.

    Memory: O(N) decisions + the edges of new, unlabelled images; never all N*k matches at once.
    Returns (decisions, proposed new individuals, number of match rows).
    """
    decisions, edges, n_matches = [], [], 0
    cols = ["query_id", "neighbor_id", "rank", "score", "neighbor_individual_id"]
    if kind == "reranked":  # decisions carry all three scores
        cols += ["global_score", "inliers"]
    for b in range(n_blocks):
        queries = storage.read_parquet(_part(out, "queries", b))
        matches = storage.read_parquet(_part(out, kind, b), columns=cols)
        n_matches += len(matches)
        if reviewed is not None:
            queries, matches = reviewed.relabel(queries), reviewed.filter_matches(matches)
        dec = matching.decide(queries, matches, threshold)
        decisions.append(dec)
        new = dec.filter(pc.and_(dec.column("is_new"), pc.is_null(dec.column("individual_id"))))
        keep = pc.is_in(matches.column("query_id"), value_set=new.column("query_id").combine_chunks())
        if threshold is not None:
            keep = pc.and_(
                keep, pc.greater_equal(matches.column("score"), pa.scalar(threshold, pa.float32()))
            )
        edges.append(matches.filter(keep).select(["query_id", "neighbor_id", "score"]))
    decisions = pa.concat_tables(decisions)
    proposed = matching.group_new(decisions, pa.concat_tables(edges), threshold)
    if reviewed is not None:  # a rejected pair is not joined through other photos either
        proposed = reviewed.separate(proposed)
    return decisions, proposed, n_matches


def run(cfg: MatchConfig) -> dict:
    """Match every query against the index; returns the summary."""
    from cluster.runtime import connect

    started, t0 = manifest.now(), time.perf_counter()
    check_locations(cfg)
    if cfg.keypoints and cfg.k > cfg.rerank:
        raise ReidError(
            f"reid match: --k {cfg.k} is more than --rerank {cfg.rerank}: with --keypoints the output ranks "
            "the re-ranked shortlist; raise --rerank to at least --k"
        )
    info = index_store.open_index(cfg.index)
    if cfg.query is None:
        ranges = [r for s in info.shards for r in s.ranges]
        source = "all-vs-all"
    else:
        ranges, dim, model_id = embeddings_ranges(cfg.query)
        index_store.check_compatible(info, model_id, dim, cfg.query)
        source = cfg.query
    blocks = blocks_from_ranges(ranges, cfg.query_block)
    nprobe = cfg.nprobe or info.nprobe
    threshold = cfg.threshold if cfg.threshold is not None else info.threshold
    key = _plan_key(cfg, info, blocks, nprobe)
    reviewed = review_apply.load(cfg.reviews, check_id_format(cfg.id_format)) if cfg.reviews else None
    decision_key = json.dumps([threshold, cfg.use_labels, reviewed.digest if reviewed else None])
    existing = _prepare_output(cfg, key, decision_key)
    if existing is not None:
        return {**existing.get("summary", {}), "up_to_date": True}

    todo = [b for b in blocks if not storage.exists(_part(cfg.out, "matches", b.id))]
    connect(cfg.address, num_cpus=cfg.num_cpus)
    gallery = gallery_table(info)
    stats: dict = {}
    t_knn = time.perf_counter()
    k_search = max(cfg.k, cfg.rerank) if cfg.keypoints else cfg.k
    for block, meta, d, g in knn(info, todo, k_search, cfg.exclusions(), nprobe, cfg.workers, cfg.gpu, stats):
        storage.write_parquet(meta, _part(cfg.out, "queries", block.id))
        storage.write_parquet(
            matching.matches_table(meta, d, g, gallery), _part(cfg.out, "matches", block.id)
        )
    knn_s = time.perf_counter() - t_knn
    local: dict = {}
    if cfg.keypoints:  # cluster/rerank.py: scores, calibration.json, reranked/ (fused), fused threshold
        from cluster.rerank import run_rerank
        from reid.local.match import MatcherSettings

        local, threshold = run_rerank(
            cfg.out, blocks, info, cfg.keypoints, MatcherSettings(), cfg.rerank, cfg.k, cfg.calibration,
            cfg.rerank_block, cfg.workers, cfg.threshold,
        )  # fmt: skip

    kind = "reranked" if cfg.keypoints else "matches"
    decisions, proposed, n_matches = decide_blocks(cfg.out, len(blocks), threshold, reviewed, kind)
    storage.write_parquet(decisions, storage.join(cfg.out, "decisions.parquet"))
    storage.write_parquet(proposed, storage.join(cfg.out, "new_individuals.parquet"))
    n_q = len(decisions)
    summary = {
        "queries": n_q,
        "index_images": info.ntotal,
        "matches": n_matches,
        "k": cfg.k,
        "factory": info.factory,
        "nprobe": nprobe if "IVF" in info.factory else None,
        "threshold": threshold,
        "predicted_known": int(n_q - sum(decisions.column("is_new").to_pylist())),
        "predicted_new": int(sum(decisions.column("is_new").to_pylist())),
        "proposed_new_individuals": len(set(proposed.column("proposed_individual").to_pylist())),
        "blocks": len(blocks),
        "blocks_skipped": len(blocks) - len(todo),
        "knn_s": round(knn_s, 3),
        **stats,
        **local,
    }
    done = sum(b.n for b in todo)
    if todo and info.factory == "Flat":
        summary["knn_gflops"] = round(2.0 * done * info.ntotal * info.dim / knn_s / 1e9, 2)
    if threshold is None:
        summary["note"] = (
            "no threshold (index without labelled data): pass --threshold for new-individual calls"
        )
    if cfg.query is None:
        identities = population.assign_identities(decisions, proposed, cfg.use_labels)
        if reviewed is not None:
            identities = reviewed.mark(identities)
        counts = population.survey_counts(identities)
        history = population.capture_history(identities)
        storage.write_parquet(identities, storage.join(cfg.out, "identities.parquet"))
        storage.write_parquet(counts, storage.join(cfg.out, "population.parquet"))
        storage.write_parquet(history, storage.join(cfg.out, "capture_history.parquet"))
        storage.write_text(storage.join(cfg.out, "capture_history.csv"), population.to_csv(history))
        storage.write_text(storage.join(cfg.out, "capture_history.inp"), population.to_mark_inp(history))
        summary["individuals"] = len(history)
        summary["surveys"] = counts.to_pylist()
    summary["wall_s"] = round(time.perf_counter() - t0, 3)
    manifest.write_manifest(
        cfg.out,
        JOB,
        cfg.model_dump(),
        [cfg.index] + ([cfg.query] if cfg.query else []) + ([cfg.reviews] if cfg.reviews else []),
        {"queries": n_q, "matches": n_matches, "new": summary["predicted_new"]},
        started,
        index_version=info.version,
        model_id=info.model_id,
        threshold=threshold,
        source=source,
        summary=summary,
        plan_key=key,
        decision_key=decision_key,
        matches_table=kind,
        reviews=reviewed.lineage() if reviewed else None,
    )
    return summary


def read_matches(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A committed matches output's matches table (refuses an uncommitted one)."""
    m = manifest.require_manifest(uri, job=JOB)
    files = storage.list_files(storage.join(uri, m.get("matches_table", "matches")), suffix=".parquet")
    return pa.concat_tables([storage.read_parquet(f, columns=columns) for f in files])


def _show(cfg: MatchConfig, summary: dict) -> None:
    print_summary(JOB, summary)
    for row in summary.get("surveys", []):
        print(f"survey {row['survey']}: seen {row['seen']}, resighted {row['resighted']}, new {row['new']}")


add_job(
    Job(
        name=JOB,
        config=MatchConfig,
        run=run,
        help="k-NN of every image (or of --query photos) in the index: matches, decisions, populations.",
        args=("index",),
        runtime=frozenset({"query_block", "rerank_block", "workers", "gpu", "force", *RAY}),
        show=_show,
    )
)
