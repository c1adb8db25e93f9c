"""`reid keypoints ARCHIVE --out FEATURES`: local features (SIFT by default) of every image, resumable.

Unit of work = one archive row group, keyed as ``reid embed`` keys it. One Ray task per unit reads
its rows, decodes each crop (bbox), extracts the strongest keypoints (:mod:`reid.local.extract`)
and commits the unit (:func:`reid.local.store.extract_unit`: rejects first, then
``part-<unit>.parquet`` written atomically). A re-run skips committed units, so a killed job
loses only the units in flight and never writes an image twice; ``_manifest.json`` comes last
and names the extractor and its settings hash (``features_id``): features of other settings
are refused in the same folder (``--force`` recomputes).
"""

from __future__ import annotations

import time

import pyarrow as pa
from pydantic import Field

from cluster.runtime import ray_get
from jobs.common import (
    Input,
    JobConfig,
    Output,
    check_locations,
    print_summary_and_rejects,
    progress,
)
from jobs.registry import RAY, Job, add_job
from reid import archive, manifest, storage
from reid.errors import ReidError
from reid.local import store
from reid.local.extract import EXTRACTORS, ExtractorSettings
from reid.schema import REJECTS_SCHEMA, check_unique

JOB = store.JOB
_DEFAULT = ExtractorSettings()  # the extractor's defaults: written once, in reid.local.extract


class KeypointsConfig(JobConfig):
    """Options of ``reid keypoints``."""

    archive: Input = Field(description="archive path or s3:// URI")
    out: Output = Field(description="features output path or s3:// URI (one per extractor setting)")
    extractor: str = Field(_DEFAULT.name, description="registered extractor name")
    long_side: int = Field(
        _DEFAULT.long_side, ge=32, le=4096, description="crop resized to this long side (pixels)"
    )
    max_keypoints: int = Field(
        _DEFAULT.max_keypoints, ge=1, le=20000, description="strongest keypoints kept per image"
    )
    contrast_threshold: float = Field(
        _DEFAULT.contrast_threshold, gt=0, description="SIFT contrast threshold"
    )
    workers: int | None = Field(None, ge=1, description="tasks in flight (default: one per CPU)")
    force: bool = Field(False, description="recompute everything, even committed units")
    address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray")
    max_units: int | None = Field(None, ge=1, description="stop after this many units (testing)")

    def settings(self) -> ExtractorSettings:
        if self.extractor not in EXTRACTORS:
            raise ReidError(
                f"--extractor {self.extractor!r}: not a registered extractor ({', '.join(sorted(EXTRACTORS))})"
            )
        return ExtractorSettings(self.extractor, self.long_side, self.max_keypoints, self.contrast_threshold)


def _check_output(cfg: KeypointsConfig, features_id: str) -> None:
    """Refuse another job's output, or features of other settings unless ``--force`` (then clear it)."""
    m = manifest.ensure_writable_output(cfg.out, JOB)
    parts = [f for f in storage.list_files(cfg.out, suffix=".parquet") if "/part-" in f]
    if cfg.force:
        for f in storage.list_files(cfg.out, suffix=".parquet"):
            storage.delete(f)
        storage.delete(storage.join(cfg.out, manifest.MANIFEST))
        return
    other = (m or {}).get("features_id")
    if parts and other is None:
        found = storage.read_parquet(parts[0], columns=["features_id"]).column("features_id")
        other = found[0].as_py() if len(found) else None
    if other and other != features_id:
        raise ReidError(
            f"{cfg.out} holds features {other}, not {features_id} (other extractor settings): write them "
            "to a new --out (or pass --force to recompute here)"
        )


def run(cfg: KeypointsConfig) -> dict:
    """Extract every valid archive row's features exactly once; returns the summary."""
    import ray

    from cluster.runtime import connect, task_env

    check_locations(cfg)
    started, t0 = manifest.now(), time.perf_counter()
    settings = cfg.settings()
    units = store.plan_units(cfg.archive)  # validates the archive before any work
    ids = pa.concat_tables(
        [storage.read_parquet(f, columns=["image_id"]) for f in archive.archive_files(cfg.archive)]
    )
    check_unique(ids, "image_id", cfg.archive)
    _check_output(cfg, settings.features_id())
    done = {u.key for u in units if storage.exists(store.unit_uri(cfg.out, u.key))}
    todo = [u for u in units if u.key not in done]
    if cfg.max_units:
        todo = todo[: cfg.max_units]
    n_ok = n_bad = n_kp = 0
    if todo:
        connect(cfg.address, num_cpus=cfg.num_cpus)
        workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(store.extract_unit).options(num_cpus=1, runtime_env=task_env(), max_retries=3)
        pending: dict = {}
        queue = iter(todo)
        bar = progress(None, total=sum(u.rows for u in todo), desc=JOB, interval=0)
        try:
            while True:
                while len(pending) < 2 * workers and (u := next(queue, None)) is not None:
                    pending[task.remote(u, settings, cfg.out)] = u
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                pending.pop(ready[0])
                res = ray_get(ready[0])
                n_ok, n_bad, n_kp = n_ok + res["extracted"], n_bad + res["rejected"], n_kp + res["keypoints"]
                bar.update(res["extracted"] + res["rejected"])
        finally:
            bar.close()
            for ref in pending:
                ray.cancel(ref)
    wall = time.perf_counter() - t0
    summary = {
        "units": len(units),
        "skipped_units": len(done),
        "todo_units": len(todo),
        "extracted": n_ok,
        "rejected": n_bad,
        "keypoints_per_image": round(n_kp / n_ok, 1) if n_ok else 0.0,
        "wall_s": round(wall, 2),
        "images_per_s": round((n_ok + n_bad) / wall, 2) if todo else 0.0,
        "features_id": settings.features_id(),
    }
    if all(storage.exists(store.unit_uri(cfg.out, u.key)) for u in units):
        summary.update(_finalize(cfg, settings, units, started, summary))
    return summary


def _finalize(
    cfg: KeypointsConfig, settings: ExtractorSettings, units: list, started: str, summary: dict
) -> dict:
    n_rows = store.write_ids(cfg.out, [u.key for u in units])  # image_id -> part, for readers by id
    rej_files = storage.list_files(storage.join(cfg.out, store.REJECTS_DIR), suffix=".parquet")
    rejects = (
        pa.concat_tables([storage.read_parquet(f) for f in rej_files])
        if rej_files
        else REJECTS_SCHEMA.empty_table()
    )
    storage.write_parquet(rejects, storage.join(cfg.out, archive.REJECTS))
    manifest.write_manifest(
        cfg.out,
        JOB,
        cfg.model_dump(),
        [cfg.archive],
        {"images": n_rows, "rejects": rejects.num_rows, "units": len(units)},
        started,
        features_id=settings.features_id(),
        extractor={"name": settings.name, "long_side": settings.long_side,
                   "max_keypoints": settings.max_keypoints,
                   "contrast_threshold": settings.contrast_threshold},
        run={k: summary[k] for k in ("wall_s", "images_per_s", "keypoints_per_image")},
    )  # fmt: skip
    return {"total_images": n_rows, "total_rejects": rejects.num_rows}


def _show(cfg: KeypointsConfig, summary: dict) -> None:
    print_summary_and_rejects(JOB, cfg.out, summary)


add_job(
    Job(
        name=JOB,
        config=KeypointsConfig,
        run=run,
        help="Local features (keypoints + descriptors) of an archive; resumable (re-run skips committed units).",
        args=("archive",),
        runtime=frozenset({"workers", "force", "max_units", *RAY}),
        show=_show,
    )
)
