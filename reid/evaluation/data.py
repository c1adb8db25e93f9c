"""The labelled rows of an embeddings table as arrays, row i the same image everywhere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["EvalData", "eval_data"]


@dataclass
class EvalData:
    """The labelled rows of an embeddings table, as arrays (row i is the same image everywhere)."""

    ids: np.ndarray  # object [N]
    labels: np.ndarray  # object [N]
    emb: np.ndarray  # float32 [N, d]
    survey: np.ndarray  # object [N], None where unknown
    captured_at: np.ndarray  # datetime64[us] [N], NaT where unknown
    camera_id: np.ndarray  # object [N]
    viewpoint: np.ndarray | None = None  # object [N], None where unknown
    model_id: str | None = None
    n_unlabelled: int = 0  # rows dropped for having no individual_id

    def __len__(self) -> int:
        return len(self.ids)


def eval_data(table: pa.Table) -> EvalData:
    """Arrays of the labelled rows (unlabelled rows can be neither right nor wrong: dropped, counted)."""
    labelled = pc.is_valid(table.column("individual_id"))
    n_unlabelled = len(table) - int(pc.sum(labelled).as_py() or 0)
    t = table.filter(labelled)
    dim = t.schema.field("embedding").type.list_size
    flat = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    emb = np.asarray(flat, dtype=np.float32).reshape(len(t), dim)
    col = t.column("captured_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    times = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid_t = col.is_valid().to_numpy(zero_copy_only=False)
    captured = np.where(valid_t, times, np.iinfo(np.int64).min)  # int64 min is NaT
    models = pc.unique(t.column("model_id")).to_pylist() if len(t) else []
    return EvalData(
        ids=np.array(t.column("image_id").to_pylist(), dtype=object),
        labels=np.array(t.column("individual_id").to_pylist(), dtype=object),
        emb=emb,
        survey=np.array(t.column("survey").to_pylist(), dtype=object),
        captured_at=captured.astype("datetime64[us]"),
        camera_id=np.array(t.column("camera_id").to_pylist(), dtype=object),
        viewpoint=np.array(
            t.column("viewpoint").to_pylist() if "viewpoint" in t.column_names else [None] * len(t),
            dtype=object,
        ),
        model_id=models[0] if models else None,
        n_unlabelled=n_unlabelled,
    )
