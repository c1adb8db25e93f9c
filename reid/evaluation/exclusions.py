"""Query/gallery pairs left out of a ranking: near-duplicates of one sighting, opposite flanks.

Same burst (same camera, within ``burst_seconds``) and same day follow the rules of
:mod:`reid.data.sightings`; the evaluation job uses :func:`exclusion_mask`, training validation
:func:`validation_exclusion`. The masks are what :mod:`reid.evaluation.metrics` takes as ``exclude``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid.data import sightings
from reid.evaluation import metrics
from reid.evaluation.data import EvalData
from reid.evaluation.protocols import Protocol

__all__ = [
    "DENSE_EXCLUDE_MAX",
    "exclusion_mask",
    "n_excluded",
    "sighting_table",
    "validation_exclusion",
]


def exclusion_mask(
    data: EvalData,
    protocol: Protocol,
    same_burst: bool = False,
    same_day: bool = False,
    burst_seconds: float = 60.0,
    same_viewpoint: bool = False,
):
    """Query/gallery pairs to drop from the ranking: a sparse [Q, G] mask, a
    :class:`reid.evaluation.metrics.KeyMismatch`, or None.

    Same burst: same camera (missing ids compare equal) and captured within ``burst_seconds``.
    Same day: same UTC calendar day. Pairs where either capture time is unknown are kept.
    Same viewpoint: only like flanks are compared (pairs of two known, different viewpoints are
    dropped; a photo of unknown viewpoint is compared with every other).
    """
    mask = _time_mask(data, protocol, same_burst, same_day, burst_seconds)
    if not same_viewpoint or data.viewpoint is None:
        return mask
    vp = data.viewpoint
    return metrics.KeyMismatch(vp[protocol.query], vp[protocol.gallery_rows], also=mask)


def n_excluded(exclude) -> int:
    """How many query/gallery pairs an exclusion drops (counted without building a [Q, G] mask;
    a pair dropped for two reasons counts once)."""
    if exclude is None:
        return 0
    if isinstance(exclude, metrics.KeyMismatch):
        cq = Counter(k for k in exclude.query_keys if k is not None)
        cg = Counter(k for k in exclude.gallery_keys if k is not None)
        known_pairs = sum(cq.values()) * sum(cg.values())
        mismatched = known_pairs - sum(n * cg.get(k, 0) for k, n in cq.items())
        also = exclude.also
        if also is None:
            return mismatched
        if hasattr(also, "tocoo"):
            coo = also.tocoo()
            rows, cols = coo.row, coo.col
        else:
            rows, cols = np.nonzero(np.asarray(also, dtype=bool))
        return mismatched + int((~exclude.at(rows, cols)).sum())
    return int(exclude.nnz) if hasattr(exclude, "nnz") else int(np.sum(exclude))


def _time_mask(data: EvalData, protocol: Protocol, same_burst: bool, same_day: bool, burst_seconds: float):
    """The same-burst and same-day pairs of :mod:`reid.data.sightings` as a sparse [Q, G] mask."""
    if not (same_burst or same_day):
        return None
    from scipy import sparse

    q, g = protocol.query, protocol.gallery_rows
    queries, gallery = sighting_table(data, q), sighting_table(data, g)
    pairs = []
    if same_day:
        pairs.append(sightings.same_day(queries, gallery))
    if same_burst:
        pairs.append(sightings.same_burst(queries, gallery, burst_seconds))
    r = np.concatenate([p[0] for p in pairs])
    c = np.concatenate([p[1] for p in pairs])
    other = data.ids[q][r] != data.ids[g][c]  # an image and itself: never a candidate anyway
    r, c = r[other], c[other]
    mask = sparse.csr_matrix((np.ones(len(r), bool), (r, c)), shape=(len(q), len(g)), dtype=bool)
    mask.sum_duplicates()
    return mask


def sighting_table(data: EvalData, rows: np.ndarray) -> pa.Table:
    """The camera and capture time of some rows, as the :mod:`reid.data.sightings` rules read them."""
    return pa.table(
        {
            "camera_id": pa.array(data.camera_id[rows], pa.string()),
            "captured_at": pa.array(data.captured_at[rows], pa.timestamp("us", tz="UTC")),
        }
    )


DENSE_EXCLUDE_MAX = 20_000  # validation sets up to this size get a dense [N, N] mask; larger, id pairs


def validation_exclusion(
    meta: pa.Table,
    image_ids: list[str],
    rule: str = "burst",
    burst_seconds: float = 60.0,
    same_viewpoint: bool = False,
    dense_max: int = DENSE_EXCLUDE_MAX,
):
    """Pairs of training-validation images (leave-one-out over ``image_ids``) to ignore: one
    sighting's near-duplicates by ``rule`` ("burst", "day" or "none", see :mod:`reid.data.sightings`),
    which would make retrieval look easier than it is, and (``same_viewpoint``) opposite flanks.

    ``meta`` holds the images' ``image_id``, ``camera_id``, ``captured_at`` and ``viewpoint`` in
    any order. Returns a boolean [N, N] mask (N <= ``dense_max``), a list of (image_id, image_id)
    pairs for larger sets, a :class:`reid.evaluation.metrics.KeyMismatch` wrapping either, or None.
    """
    if not image_ids:
        return None
    meta = meta.select(["image_id", "camera_id", "captured_at", "viewpoint"])
    meta = meta.take(pc.index_in(pa.array(image_ids, pa.string()), meta.column("image_id")))
    near = None
    if rule != "none":
        r, c = sightings.same_day(meta) if rule == "day" else sightings.same_burst(meta, None, burst_seconds)
        if len(r) and len(image_ids) > dense_max:
            near = [(image_ids[i], image_ids[j]) for i, j in zip(r.tolist(), c.tolist(), strict=True)]
        elif len(r):
            near = np.zeros((len(image_ids), len(image_ids)), dtype=bool)
            near[r, c] = True
    views = np.array(meta.column("viewpoint").to_pylist(), dtype=object)
    if same_viewpoint and any(v is not None for v in views):
        return metrics.KeyMismatch(views, None, also=near)
    return near
