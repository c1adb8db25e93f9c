"""A small, fully known evaluation set: a real archive of generated photos plus its embeddings.

Embeddings are clustered random vectors (one centre per individual) rather than a model's output,
so the tests know the structure: two surveys, individuals that appear only in the later survey
(new at a 2023 cutoff), single-image individuals, unlabelled rows, and camera bursts whose frames
are near-duplicates (what the same-burst exclusion is for).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from reid import manifest, storage
from reid.archive import ArchiveWriter
from reid.schema import conform, embeddings_schema
from tests.support.images import jpeg_bytes, photo

DIM = 32
MODEL_ID = "test-model-0001"

# individual -> images per survey
PLAN = {
    **{f"ind{i:02d}": {"2022": 3, "2023": 3} for i in range(10)},
    **{f"ind{i:02d}": {"2023": 3} for i in range(10, 13)},  # new individuals in 2023
    "ind13": {"2022": 1},  # single-image individuals
    "ind14": {"2022": 1},
    "ind15": {"2022": 2},
}
UNLABELLED = 3


def _rows(seed: int = 0, noise: float = 1.1) -> list[dict]:
    rng = np.random.default_rng(seed)
    centres = {name: rng.normal(size=DIM) for name in PLAN}
    rows = []
    for k, (name, surveys) in enumerate(PLAN.items()):
        for survey, n in surveys.items():
            day0 = dt.datetime(int(survey), 6, 1, 8, 0, tzinfo=dt.timezone.utc) + dt.timedelta(days=k)
            prev = None
            for f in range(n):
                # frames 0 and 1 are one burst (2 s apart, near-duplicates); frame 2 is days later
                if f == 1 and prev is not None:
                    when, vec = day0 + dt.timedelta(seconds=2), prev + 0.05 * rng.normal(size=DIM)
                else:
                    when = day0 + dt.timedelta(days=3 * f)
                    vec = centres[name] + noise * rng.normal(size=DIM)
                prev = vec
                rows.append(
                    {
                        "image_id": f"{name}-{survey}-{f}",
                        "individual_id": name,
                        "survey": survey,
                        "captured_at": when,
                        "camera_id": f"cam-{k % 4}",
                        "vec": vec,
                        "seed": len(rows),
                    }
                )
    for u in range(UNLABELLED):
        rows.append(
            {
                "image_id": f"unlabelled-{u}",
                "individual_id": None,
                "survey": "2023",
                "captured_at": None,
                "camera_id": None,
                "vec": rng.normal(size=DIM),
                "seed": 1000 + u,
            }
        )
    return rows


def make_eval_inputs(root: Path, seed: int = 0) -> dict[str, str]:
    """Write ``root/archive`` (with an ingest manifest) and ``root/embeddings`` (with an embed manifest)."""
    rows = _rows(seed)
    archive_uri = str(root / "archive")
    writer = ArchiveWriter(archive_uri)
    for r in rows:
        img = photo(48, 40, seed=r["seed"])
        writer.add(
            {
                "image_id": r["image_id"],
                "image": jpeg_bytes(img),
                "individual_id": r["individual_id"],
                "species": "lion",
                "survey": r["survey"],
                "captured_at": r["captured_at"],
                "camera_id": r["camera_id"],
                "viewpoint": None,
                "bbox": None,
                "source": r["image_id"] + ".jpg",
                "width": 48,
                "height": 40,
            }
        )
    writer.close()
    started = manifest.now()
    manifest.write_manifest(archive_uri, "ingest", {}, ["generated"], {"rows": len(rows)}, started)

    emb_uri = str(root / "embeddings")
    vecs = np.stack([r["vec"] for r in rows]).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    table = pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
            "model_id": [MODEL_ID] * len(rows),
            "individual_id": [r["individual_id"] for r in rows],
            "survey": [r["survey"] for r in rows],
            "captured_at": pa.array([r["captured_at"] for r in rows], pa.timestamp("us", tz="UTC")),
            "camera_id": [r["camera_id"] for r in rows],
        }
    )
    table = conform(table, embeddings_schema(DIM))
    half = len(rows) // 2
    storage.write_parquet(table.slice(0, half), storage.join(emb_uri, "part-a.parquet"))
    storage.write_parquet(table.slice(half), storage.join(emb_uri, "part-b.parquet"))
    manifest.write_manifest(
        emb_uri,
        "embed",
        {"archive": archive_uri},
        [archive_uri],
        {"embeddings": len(rows)},
        started,
        model_id=MODEL_ID,
        dim=DIM,
    )
    return {"archive": archive_uri, "embeddings": emb_uri}
