"""A notebook API in the shape wildlife-tools users know: a pandas DataFrame in, an array out.

No job, no Ray: the model runs in this process, with the preprocessing its package records
(the same :mod:`reid.images.preprocess` halves `reid embed` uses, so the vectors agree)::

    from reid import api
    df = api.read_frame("metadata.csv")                  # any ingest format, as a DataFrame
    X = api.embed_frame(df, "runs/model")                # (len(df), dim) float32, L2-normalised
    meta, Y = api.embed_archive("archive", "runs/model") # every archive row and its vector
    scores = X @ Y.T                                     # cosine similarities
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reid import archive, formats, ingest, storage
from reid.errors import ReidError
from reid.formats.base import parse_bbox

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from reid.model.network import ReidModel
    from reid.model.spec import ModelSpec

__all__ = ["embed_archive", "embed_frame", "load_model", "read_frame"]


def load_model(model: str, device: str | None = None) -> tuple[ReidModel, ModelSpec]:
    """A model package (folder or URI) or a zero-shot name (``timm:...``), ready for inference."""
    import torch

    from reid.model.package import load_package

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, spec = load_package(model, map_location=device)
    return net.eval(), spec


def read_frame(src: str, format: str | None = None, **options: Any) -> pd.DataFrame:
    """The annotations of a folder or metadata file (any ``reid ingest`` format) as a DataFrame,
    without reading a photo: path, bbox, individual_id, viewpoint, ..., and ``problem`` (why
    ingest would reject the row; None for usable rows). ``options``: :class:`reid.formats.ReadOptions` fields."""
    import pandas as pd

    cands = ingest.scan(src, fmt=format, options=formats.ReadOptions(**options) if options else None)
    rows = []
    for c in cands:
        rows.append(
            {
                "path": c.uri,
                "bbox": None if c.bbox is None else [c.bbox[k] for k in "xywh"],
                "bbox_normalized": c.bbox_normalized,
                "individual_id": c.individual_id,
                "viewpoint": c.viewpoint,
                "species": c.species,
                "survey": c.survey,
                "camera_id": c.camera_id,
                "captured_at": c.captured_at,
                "annotation_id": c.annotation_id,
                "problem": c.problem,
            }
        )
    return pd.DataFrame(rows)


def _bbox(value: Any) -> dict | None:
    """A DataFrame cell as a box: None/NaN, [x, y, w, h], a dict, or text such as "[1, 2, 3, 4]"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    box, problem = parse_bbox({"bbox": value})
    if problem:
        raise ValueError(problem)
    return box


def _batches(
    items: Iterator[tuple[bytes | None, dict | None, str]], size: int, batch: int
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """Decoded uint8 batches: (row positions, pixels, failures (position, reason))."""
    from reid.images.preprocess import decode_for_model

    pos, pix, bad = [], [], []
    for i, (data, bbox, error) in enumerate(items):
        arr, reason = (None, error) if error else decode_for_model(data, bbox, size)
        if arr is None:
            bad.append((i, reason or "unreadable"))
        else:
            pos.append(i)
            pix.append(arr)
        if len(pix) == batch:
            yield pos, np.stack(pix), bad
            pos, pix, bad = [], [], []
    if pix or bad:
        yield pos, (np.stack(pix) if pix else None), bad


def _embed(
    items: Iterator[tuple[bytes | None, dict | None, str]],
    n: int,
    model: Any,
    batch_size: int,
    device: str | None,
    on_error: str,
    names: Sequence[str],
) -> np.ndarray:
    import torch

    from reid.images.preprocess import normalize

    if on_error not in ("raise", "nan"):
        raise ReidError(f"on_error {on_error!r}: use 'raise' or 'nan'")
    net, spec = load_model(model, device) if isinstance(model, str) else model
    dev: torch.device = next(net.parameters()).device
    out = np.full((n, spec.embedding_dim), np.nan, np.float32)
    with torch.inference_mode():
        for pos, pix, bad in _batches(items, spec.input_size, batch_size):
            if bad and on_error == "raise":
                i, reason = bad[0]
                raise ReidError(
                    f"row {i} ({names[i]}): {reason}; fix or drop the row, or pass on_error='nan'"
                )
            if pix is not None:
                x = normalize(pix, spec.mean, spec.std, dev)
                out[pos] = net(x).float().cpu().numpy()
    return out


def embed_frame(
    df: pd.DataFrame,
    model: str | tuple[ReidModel, ModelSpec],
    path_col: str = "path",
    bbox_col: str | None = "bbox",
    root: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    on_error: str = "raise",
) -> np.ndarray:
    """Embed the photos a DataFrame lists: (len(df), dim) float32, L2-normalised, in row order.

    ``path_col``: file paths or URIs (relative ones under ``root``); ``bbox_col`` (optional
    column): x, y, w, h in pixels, None for the whole photo (in fractions of the image where a
    ``bbox_normalized`` column, as :func:`read_frame` writes, says so). ``model``: a package, a zero-shot
    name, or :func:`load_model`'s result (load once, embed many frames). A photo that cannot be
    read or decoded raises naming its row, or with ``on_error="nan"`` leaves a row of NaN.
    """
    if path_col not in df.columns:
        raise ReidError(f"DataFrame has no {path_col!r} column (columns: {', '.join(map(str, df.columns))})")
    paths = [str(p) for p in df[path_col].tolist()]
    if root:
        paths = [p if storage.is_remote(p) or os.path.isabs(p) else storage.join(root, p) for p in paths]
    boxes = df[bbox_col].tolist() if bbox_col and bbox_col in df.columns else [None] * len(paths)
    # read_frame marks boxes in fractions of the image (MegaDetector, Camtrap DP)
    fractions = df["bbox_normalized"].tolist() if "bbox_normalized" in df.columns else [False] * len(paths)

    def items() -> Iterator[tuple[bytes | None, dict | None, str]]:
        for path, cell, frac in zip(paths, boxes, fractions, strict=True):
            try:
                data, box = storage.read_bytes(path), _bbox(cell)
                yield data, (ingest.pixel_box(data, box) if frac and box else box), ""
            except (ReidError, OSError, ValueError) as e:
                yield None, None, str(e)

    return _embed(items(), len(paths), model, batch_size, device, on_error, paths)


def embed_archive(
    uri: str,
    model: str | tuple[ReidModel, ModelSpec],
    columns: Sequence[str] = ("image_id", "individual_id", "survey", "camera_id", "viewpoint", "source"),
    batch_size: int = 32,
    device: str | None = None,
    on_error: str = "nan",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every archive row's metadata (``columns``) and its embedding, in archive order.

    Reads the archive once, streaming (images are never all in memory); for archives too large
    for one process, `reid embed` is the resumable, distributed way.
    """
    meta = archive.read_archive(uri, columns=list(columns)).to_pandas()
    rows = archive.iter_rows(uri, columns=["image_id", "image", "bbox"])
    items = ((r["image"], r["bbox"], "") for r in rows)
    return meta, _embed(items, len(meta), model, batch_size, device, on_error, meta["image_id"].tolist())
