"""`reid evaluate EMBEDDINGS --out REPORT_DIR`: retrieval and open-set metrics, plots, an HTML report.

Outputs in REPORT_DIR: ``metrics.json`` (flat metric keys first: ``accuracy@1``, ``accuracy@5``,
``accuracy@10``, ``map``, ``map@r``, and the open-set keys when the protocol has new individuals),
``queries.parquet`` (each query's top candidates), the PNG plots, ``report.html`` (self-contained)
and ``_manifest.json`` (last). Evaluation sets fit in memory, so this job runs in-process: no Ray.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field, model_validator
from rich.table import Table

from jobs.common import (
    Input,
    JobConfig,
    Output,
    check_locations,
    console,
    print_summary,
)
from jobs.registry import Flag, Job, add_job
from reid import manifest, storage
from reid.data.splits import read_split_table
from reid.embeddings import read_embeddings
from reid.errors import ReidError
from reid.evaluation import report
from reid.evaluation.data import EvalData, eval_data
from reid.evaluation.exclusions import exclusion_mask
from reid.evaluation.protocols import Protocol, from_split, leave_one_out, time_aware
from reid.evaluation.results import HEADLINE, json_safe, queries_table
from reid.evaluation.scoring import TARGET_FALSE_NEW, evaluate
from reid.serving import lookup

JOB = "evaluate"
METRICS = "metrics.json"
QUERIES = "queries.parquet"


class EvaluateConfig(JobConfig):
    embeddings: Input = Field(description="embeddings output of `reid embed` (path or s3://)")
    out: Output = Field(description="report folder (path or s3://)")
    protocol: Literal["loo", "split", "time"] = Field(
        "loo", description="leave-one-out, a query/gallery split table, or a time cutoff"
    )
    split: Input | None = Field(None, description="split table (Parquet or CSV): image_id + role column")
    split_column: str = Field("split", description="the split table's role column")
    query_values: list[str] = Field(
        default_factory=lambda: ["test", "query"], description="role value(s) of query images"
    )
    gallery_values: list[str] = Field(
        default_factory=lambda: ["train", "gallery"], description="role value(s) of gallery images"
    )
    cutoff: str | None = Field(None, description="time protocol: first survey (or time) of the queries")
    cutoff_by: Literal["survey", "captured_at"] = Field("survey", description="time protocol cutoff on")
    exclude_same_burst: bool = Field(False, description="drop gallery images of the query's burst")
    exclude_same_day: bool = Field(False, description="drop gallery images taken the query's day")
    same_viewpoint: bool = Field(
        False, description="compare like flanks only (left with left; unknown viewpoints with all)"
    )
    burst_seconds: float = Field(60.0, gt=0, description="a burst: same camera, within this many seconds")
    threshold: float | None = Field(None, description="new-individual threshold (default: calibrated)")
    target_false_new: float = Field(
        TARGET_FALSE_NEW, gt=0, lt=1, description="calibration: share of known queries called new"
    )
    archive: Input | None = Field(None, description="archive for thumbnails (default: from the lineage)")
    report: bool = Field(True, description="write the HTML report and plots")
    map_method: Literal["auto", "umap", "tsne", "pca"] = Field("auto", description="2-D map")
    top: int = Field(20, ge=1, le=60, description="individuals coloured on the 2-D map")
    examples: int = Field(8, ge=0, le=100, description="example queries shown in the report")
    candidates: int = Field(10, ge=1, le=100, description="candidates per query kept in queries.parquet")
    seed: int = Field(0, description="seed for sampling examples and the map")
    keypoints: Input | None = Field(
        None, description="local features (`reid keypoints`): also rank by verified matches, and fused"
    )
    rerank: list[int] = Field(
        default_factory=lambda: [50], description="with --keypoints: shortlist size(s) re-ranked"
    )

    @model_validator(mode="after")
    def _protocol_inputs(self) -> EvaluateConfig:
        if self.protocol == "split" and not self.split:
            raise ValueError("protocol 'split' needs --split TABLE (image_id + a query/gallery column)")
        if self.protocol == "time" and not self.cutoff:
            raise ValueError("protocol 'time' needs --cutoff (e.g. --cutoff 2023: queries from 2023 on)")
        if self.protocol != "split" and self.split:
            raise ValueError("--split is only used by --protocol split")
        return self


def build_protocol(cfg: EvaluateConfig, data: EvalData) -> Protocol:
    if cfg.protocol == "split":
        table = read_split_table(cfg.split)
        return from_split(
            data,
            table,
            cfg.split_column,
            tuple(cfg.query_values),
            tuple(cfg.gallery_values),
            source=f"split table {cfg.split}",
        )
    if cfg.protocol == "time":
        return time_aware(data, cfg.cutoff, by=cfg.cutoff_by)
    return leave_one_out(data)


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate one model's embeddings under one protocol; returns the summary (metrics included)."""
    started, t0 = manifest.now(), time.perf_counter()
    check_locations(cfg)
    manifest.ensure_writable_output(cfg.out, JOB, force=True)
    table, emb_manifest = read_embeddings(cfg.embeddings)
    data = eval_data(table)
    if len(data) < 2:
        raise ReidError(
            f"{cfg.embeddings}: {len(data)} labelled embeddings (individual_id set); "
            "evaluation needs labelled images of at least one individual seen twice"
        )
    protocol = build_protocol(cfg, data)
    mask = exclusion_mask(
        data, protocol, cfg.exclude_same_burst, cfg.exclude_same_day, cfg.burst_seconds, cfg.same_viewpoint
    )
    ev = evaluate(
        data,
        protocol,
        exclude=mask,
        threshold=cfg.threshold,
        target_false_new=cfg.target_false_new,
        candidates_k=cfg.candidates,
        seed=cfg.seed,
    )
    if not ev.metrics.get("n_queries"):
        raise ReidError(
            f"{cfg.embeddings}: no query has an image of its individual in the gallery under "
            f"this protocol ({protocol.description}); nothing to score"
        )
    model_id = data.model_id or (emb_manifest or {}).get("model_id")
    metrics_doc = {k: json_safe(ev.metrics[k]) for k in HEADLINE if k in ev.metrics}
    metrics_doc.update({k: json_safe(v) for k, v in ev.metrics.items() if k not in metrics_doc})
    metrics_doc.update(
        {
            "accuracy_at_k": {str(k): json_safe(v) for k, v in ev.accuracy_at_k.items()},
            "threshold_source": ev.threshold_source,
            "protocol": {
                "name": protocol.name,
                "description": protocol.description,
                **protocol.info,
                "exclude_same_burst": cfg.exclude_same_burst,
                "exclude_same_day": cfg.exclude_same_day,
                "same_viewpoint": cfg.same_viewpoint,
                "excluded_pairs": ev.exclusions,
            },
            "model_id": model_id,
            "embeddings": cfg.embeddings,
            "n_unlabelled": data.n_unlabelled,
        }
    )
    if cfg.keypoints:  # global, local and fused side by side (reid/local/scoring.py)
        from reid.local.scoring import evaluate_features

        metrics_doc["local_features"] = evaluate_features(
            data, protocol, cfg.keypoints, tuple(cfg.rerank), mask, cfg.burst_seconds
        )
    storage.write_json(storage.join(cfg.out, METRICS), metrics_doc)  # NaN metrics as null
    storage.write_parquet(queries_table(data, ev), storage.join(cfg.out, QUERIES))
    paths = {}
    if cfg.report:
        archive_uri = cfg.archive or lookup.archive_from_lineage(emb_manifest)
        inputs = report.ReportInputs(
            cfg.embeddings, model_id, archive_uri, title=f"Re-identification evaluation ({protocol.name})"
        )
        paths = report.write_report(
            cfg.out,
            inputs,
            data,
            protocol,
            ev,
            n_examples=cfg.examples,
            top=cfg.top,
            map_method=cfg.map_method,
            seed=cfg.seed,
            local_matches=_local_figures(archive_uri, cfg.keypoints, metrics_doc.get("local_features")),
        )
    counts = {
        "embeddings": table.num_rows,
        "labelled": len(data),
        "queries": int(ev.metrics["n_queries"]),
        "gallery": int(ev.metrics["n_gallery"]),
        "excluded_pairs": ev.exclusions,
    }
    inputs_uris = (
        [cfg.embeddings] + ([cfg.split] if cfg.split else []) + ([cfg.keypoints] if cfg.keypoints else [])
    )
    manifest.write_manifest(
        cfg.out,
        JOB,
        cfg.model_dump(),
        inputs_uris,
        counts,
        started,
        model_id=model_id,
        metrics={k: metrics_doc[k] for k in HEADLINE if k in metrics_doc},
    )
    return {
        **{k: metrics_doc[k] for k in HEADLINE if k in metrics_doc},
        **counts,
        "report": paths.get("report"),
        "wall_s": round(time.perf_counter() - t0, 2),
        "local_features": metrics_doc.get("local_features"),
    }


def _local_figures(archive_uri: str | None, features: str | None, local: dict | None) -> list[dict]:
    """Verified keypoint matches of a few re-ranked queries for the report (with --keypoints)."""
    if not (archive_uri and features and local and local.get("examples")):
        return []
    from reid.local.pairs import report_figures

    return report_figures(archive_uri, features, local["examples"])


def print_metrics(summary: dict) -> None:
    """The metric table (4 decimals), then the job summary."""
    table = Table(title="reid evaluate: metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in HEADLINE:
        if k in summary:
            v = summary[k]
            table.add_row(k, "n/a" if v is None else f"{v:.4f}")
    console.print(table)
    if summary.get("local_features"):
        from reid.local.scoring import side_by_side

        local = Table(title="re-ranked shortlists (B candidates)", title_justify="left")
        for name in ("metric", "B", "global", "local", "fused"):
            local.add_column(name, justify="left" if name == "metric" else "right")
        for row in side_by_side(summary["local_features"]):
            local.add_row(*row)
        console.print(local)
    print_summary(JOB, {k: v for k, v in summary.items() if k not in HEADLINE})


def _show(cfg: EvaluateConfig, summary: dict) -> None:
    print_metrics(summary)
    if summary.get("report"):
        print(f"report: {summary['report']}")


add_job(
    Job(
        name=JOB,
        config=EvaluateConfig,
        run=run,
        help="Accuracy@k, mAP, open-set metrics and an HTML report for one model's embeddings.",
        args=("embeddings",),
        flags={"query_values": Flag(("--query-value",)), "gallery_values": Flag(("--gallery-value",))},
        show=_show,
    )
)
