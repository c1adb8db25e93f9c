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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from pydantic import Field, field_validator

from jobs.common import (
    Input,
    InputOrName,
    JobConfig,
    Output,
    check_locations,
    parse_config,
    print_summary,
    progress,
)
from reid import archive, manifest, storage
from reid.errors import ConfigError, ReidError
from reid.schema import (
    CARRIED_COLUMNS,
    OPTIONAL_CARRIED_COLUMNS,
    REJECTS_SCHEMA,
    check_unique,
    conform,
    embeddings_schema,
)

JOB = "embed"
REJECTS_DIR = "_rejects"


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
    cpus_per_actor: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1, description="torch threads per CPU actor")
    decode_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each decode actor (GPU layout)")
    inline_decode: bool | None = Field(
        None, description="decode inside the inference actors (default: when they run on CPU)"
    )
    force: bool = False
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray")
    max_units: int | None = Field(None, ge=1, description="stop after this many units (testing)")

    @field_validator("archive", "model", "out", mode="before")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


# --------------------------------------------------------------------------------------------
# Units of work


def plan_units(archive_uri: str) -> list[dict]:
    """One unit per (file, row group), with a deterministic key; validates every file's schema."""
    units = []
    for f in archive.archive_files(archive_uri):
        fs, path = storage.resolve(f)
        md = pq.ParquetFile(fs.open_input_file(path))
        archive.validate_projection(md.schema_arrow, ["image", "bbox", *CARRIED_COLUMNS], f)
        rel = f[len(archive_uri.rstrip("/")) :].lstrip("/")
        for rg in range(md.metadata.num_row_groups):
            units.append(
                {
                    "file": f,
                    "row_group": rg,
                    "rows": md.metadata.row_group(rg).num_rows,
                    "unit": archive.stable_id(rel, str(rg))[:16],
                }
            )
    return units


def unit_uri(out: str, unit: str) -> str:
    return storage.join(out, f"part-{unit}.parquet")


def _read_row_group(file: str, row_group: int, columns: list[str], optional: bool = False) -> pa.Table:
    """One row group; with ``optional``, also the optional carried columns (``photo_id``: the
    image_id in archives written before it existed)."""
    fs, path = storage.resolve(file)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        if not optional:
            return pf.read_row_group(row_group, columns=columns)
        present = set(pf.schema_arrow.names)
        extra = [c for c in OPTIONAL_CARRIED_COLUMNS if c in present and c not in columns]
        table = pf.read_row_group(row_group, columns=[*columns, *extra])
    if "photo_id" not in table.column_names:
        table = table.append_column("photo_id", table.column("image_id"))
    return table


def decode_units(batch: dict, size: int) -> dict:
    """A batch of unit descriptors -> decoded uint8 pixels of their images (rejects: blank + reason)."""
    from reid.preprocess import decode_for_model

    ids, units, pixels, reasons = [], [], [], []
    blank = np.zeros((size, size, 3), np.uint8)
    for file, rg, unit in zip(batch["file"], batch["row_group"], batch["unit"]):
        t = _read_row_group(str(file), int(rg), ["image_id", "image", "bbox"])
        for image_id, data, bbox in zip(
            t.column("image_id").to_pylist(), t.column("image").to_pylist(), t.column("bbox").to_pylist()
        ):
            arr, reason = decode_for_model(data, bbox, size)
            ids.append(image_id)
            units.append(unit)
            pixels.append(blank if arr is None else arr)
            reasons.append(reason or "")
    return {
        "image_id": np.array(ids, dtype=object),
        "unit": np.array(units, dtype=object),
        "pixels": np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8),
        "reason": np.array(reasons, dtype=object),
    }


def _check_region_decoder() -> None:
    """Say so when JPEGs will be decoded whole: in each actor's log (Ray keeps actors' output in
    its session logs), and once in the driver for its own machine, which a local Ray's actors share."""
    from reid import jpegroi

    if not jpegroi.available():
        import logging

        logging.getLogger(__name__).warning(
            "reid/_jpegroi is not built on this node: JPEGs are decoded whole by Pillow (slower); "
            "install the package with libjpeg headers and a C compiler present (pip install .)"
        )


class DecodeUnits:
    """Ray Data UDF (CPU actors feeding GPU actors): unit descriptors -> decoded pixels."""

    def __init__(self, size: int):
        self.size = size
        _check_region_decoder()

    def __call__(self, batch: dict) -> dict:
        return decode_units(batch, self.size)


class Embedder:
    """Ray Data actor: loads the model once, embeds decoded batches (rejects pass through)."""

    def __init__(self, model: str, batch_size: int, threads: int | None):
        import torch

        from reid.allocator import keep_freed_memory
        from reid.model import load_package

        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            keep_freed_memory()  # no mmap/munmap of activations per batch (benchmarks/allocator.py)
        self.model, self.spec = load_package(model)
        self.model = self.model.to(self.device).eval()
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import torch

        from reid.preprocess import normalize

        ok = batch["reason"] == ""
        n, d = len(ok), self.spec.embedding_dim
        emb = np.zeros((n, d), np.float32)
        idx = np.flatnonzero(ok)
        with torch.inference_mode(), torch.autocast("cuda", enabled=self.device == "cuda"):
            for s in range(0, len(idx), self.batch_size):
                sel = idx[s : s + self.batch_size]
                x = normalize(batch["pixels"][sel], self.spec.mean, self.spec.std, self.device)
                emb[sel] = self.model(x).float().cpu().numpy()
        return {
            "image_id": batch["image_id"],
            "unit": batch["unit"],
            "embedding": emb,
            "reason": batch["reason"],
        }


class DecodeEmbedder(Embedder):
    """Ray Data actor (CPU-only layout): decodes its units' images, then embeds them."""

    def __init__(self, model: str, batch_size: int, threads: int | None):
        super().__init__(model, batch_size, threads)
        _check_region_decoder()

    def __call__(self, batch: dict) -> dict:
        return super().__call__(decode_units(batch, self.spec.input_size))


# --------------------------------------------------------------------------------------------
# Committing units


def commit_unit(
    cfg: EmbedConfig, spec, unit: dict, rows: dict[str, tuple[np.ndarray, str]]
) -> tuple[int, int]:
    """Write one unit: its rejects (if any), then its embeddings part (the commit). Returns counts."""
    meta = _read_row_group(
        unit["file"], unit["row_group"], ["image_id", "source", *CARRIED_COLUMNS], optional=True
    )
    good, bad = [], []
    for i, image_id in enumerate(meta.column("image_id").to_pylist()):
        emb, reason = rows[image_id]
        (bad if reason else good).append((i, image_id, emb, reason))
    if bad:
        rej = pa.Table.from_pylist(
            [{"image_id": b[1], "source": meta.column("source")[b[0]].as_py(), "reason": b[3]} for b in bad],
            schema=REJECTS_SCHEMA,
        )
        storage.write_parquet(rej, storage.join(cfg.out, REJECTS_DIR, f"{unit['unit']}.parquet"))
    take = pa.array([g[0] for g in good], type=pa.int64())
    dim = spec.embedding_dim
    flat = np.concatenate([g[2] for g in good]).astype(np.float32) if good else np.zeros(0, np.float32)
    cols = {
        "image_id": pa.array([g[1] for g in good], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
        "model_id": pa.array([spec.model_id] * len(good), pa.string()),
    }
    for c in (*CARRIED_COLUMNS, *OPTIONAL_CARRIED_COLUMNS):
        cols[c] = meta.column(c).take(take)
    table = conform(pa.table(cols), embeddings_schema(dim))
    storage.write_parquet(table, unit_uri(cfg.out, unit["unit"]))
    return len(good), len(bad)


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


def _resources(cfg: EmbedConfig) -> dict:
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    gpa = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    inline = cfg.inline_decode if cfg.inline_decode is not None else gpa == 0
    # An actor lives on one node: never ask for more CPUs than the biggest node has.
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=cpus)
    threads = cfg.threads
    if gpa > 0:
        actors = cfg.actors or max(1, int(gpus // gpa))
        cpa = cfg.cpus_per_actor or 1.0
    elif inline:
        # CPU-only: one actor per `threads` CPUs, decoding and embedding its own units (at most
        # 16 actors by default: big nodes give each actor more threads instead of more copies).
        threads = threads or max(1, int(cpus // 16))
        cpa = cfg.cpus_per_actor or float(min(threads, node_cpus))
        actors = cfg.actors or max(1, int(cpus // cpa))
    else:
        # CPU inference fed by decode actors: few actors, several threads each.
        actors = cfg.actors or max(1, int(cpus // 8))
        cpa = cfg.cpus_per_actor or max(0.5, min(4.0, node_cpus, (cpus - cfg.decode_cpus) / actors))
    threads = threads or max(1, int(round(cpus / actors)))
    decode_cpus = 0.0 if inline else cfg.decode_cpus
    if actors * cpa + decode_cpus > cpus + 1e-9:
        raise ConfigError(
            f"{actors} actor(s) x {cpa} CPU + {decode_cpus} CPU per decode actor needs more than the "
            f"cluster's {cpus:g} CPUs: some would never start; lower --actors or --cpus-per-actor"
        )
    return {
        "actors": actors,
        "cpus_per_actor": cpa,
        "gpus_per_actor": gpa,
        "threads": threads,
        "inline_decode": inline,
        "cluster_cpus": cpus,
        "cluster_gpus": gpus,
    }


def run(cfg: EmbedConfig) -> dict:
    """Embed every valid archive row exactly once; returns the summary."""
    from reid.model import load_package

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


def _model_actor_env(res: dict) -> dict:
    """runtime_env of the model actors: storage variables, and on CPU the allocator settings that
    keep activations in the heap between batches (reid/allocator.py; they must be set at start)."""
    from cluster.runtime import task_env
    from reid.allocator import process_env

    env = task_env()
    if res["gpus_per_actor"] == 0:
        env["env_vars"] = {**env.get("env_vars", {}), **process_env()}
    return env


def _run_pipeline(cfg: EmbedConfig, spec, todo: list[dict]) -> tuple[int, int, dict]:
    import ray

    from cluster.runtime import connect, task_env

    connect(cfg.address, num_cpus=cfg.num_cpus)
    _check_region_decoder()
    res = _resources(cfg)
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
        runtime_env=_model_actor_env(res),  # Ray Data restarts dead actors and retries their tasks
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
            ok, bad = commit_unit(cfg, spec, by_unit[unit], pending.pop(unit))
            n_ok, n_bad = n_ok + ok, n_bad + bad
            bar.update(ok + bad)
    bar.close()
    if pending:
        raise ReidError(f"embedding finished with {len(pending)} incomplete unit(s); re-run to resume")
    return n_ok, n_bad, res


def _finalize(cfg: EmbedConfig, spec, units: list[dict], started: str, summary: dict) -> dict:
    parts = [unit_uri(cfg.out, u["unit"]) for u in units]
    n_rows = sum(
        pq.ParquetFile(storage.resolve(p)[0].open_input_file(storage.resolve(p)[1])).metadata.num_rows
        for p in parts
    )
    rej_files = storage.list_files(storage.join(cfg.out, REJECTS_DIR), suffix=".parquet")
    rejects = (
        pa.concat_tables([storage.read_parquet(f) for f in rej_files])
        if rej_files
        else REJECTS_SCHEMA.empty_table()
    )
    storage.write_parquet(rejects, storage.join(cfg.out, archive.REJECTS))
    counts = {"embeddings": n_rows, "rejects": rejects.num_rows, "units": len(units)}
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
    return {"total_embeddings": n_rows, "total_rejects": rejects.num_rows}


def read_embeddings(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a committed embeddings output (refuses one without a manifest), validated."""
    from reid.embeddings import read_embeddings as read_validated

    table, _ = read_validated(uri)
    return table.select(columns) if columns else table


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed_cmd(
        archive_uri: str = typer.Argument(..., metavar="ARCHIVE", help="archive path or s3:// URI"),
        model: str = typer.Option(..., help="model package (dir/s3://) or timm:NAME / hf-hub:ORG/NAME"),
        out: str = typer.Option(..., help="embeddings output (path or s3://); one per model version"),
        batch_size: int = typer.Option(64, help="images per forward pass"),
        actors: int = typer.Option(None, help="inference actors (default: one per GPU, or per CPU)"),
        gpus_per_actor: float = typer.Option(None, help="GPUs per actor (default 1 when GPUs exist)"),
        cpus_per_actor: float = typer.Option(None, help="CPUs reserved per actor"),
        threads: int = typer.Option(None, help="torch threads per CPU actor"),
        inline_decode: bool = typer.Option(
            None,
            "--inline-decode/--no-inline-decode",
            help="decode inside the model actors (default: on CPU-only clusters) or in decode actors",
        ),
        force: bool = typer.Option(False, help="recompute everything, even committed units"),
        address: str = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS or local Ray)"),
        num_cpus: int = typer.Option(None, help="CPUs for an embedded local Ray"),
    ):
        """Embed an archive with a model; resumable (re-run skips committed units)."""
        cfg = parse_config(
            JOB,
            EmbedConfig,
            archive=archive_uri,
            model=model,
            out=out,
            batch_size=batch_size,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
            threads=threads,
            inline_decode=inline_decode,
            force=force,
            address=address,
            num_cpus=num_cpus,
        )
        summary = run(cfg)
        print_summary(JOB, summary)
        if summary.get("total_rejects"):
            typer.echo(
                f"{summary['total_rejects']} image(s) rejected: see {storage.join(cfg.out, archive.REJECTS)}"
            )
