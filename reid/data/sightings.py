"""Near-duplicate rules: which photos come from one sighting, defined once for every step.

Photos of one sighting look alike for reasons other than identity (same light, pose, background),
so retrieval against them flatters a model and matching against them proves nothing. Three rules,
each over metadata tables with ``camera_id`` and ``captured_at`` (a missing column is unknown):

* :func:`same_burst`: same camera, captured within ``burst_seconds`` of each other (inclusive).
  Unknown cameras count as one camera; a photo of unknown time is in no burst. Training validation
  (``val_exclude="burst"``) and ``reid evaluate --exclude-same-burst`` use it.
* :func:`same_day`: same UTC calendar day, any camera; unknown time pairs with nothing. Training
  validation (``val_exclude="day"``) and ``reid evaluate --exclude-same-day`` use it.
* :func:`same_camera_day`: same camera and same UTC calendar day; a photo whose camera or time is
  unknown pairs with nothing. ``reid index``/``reid match`` and the review page use it, through
  its key :func:`camera_day_key` (a k-NN search checks candidates, it never lists every pair).

Each rule returns pairs ``(query rows, gallery rows)`` as two int64 arrays; with no gallery the
pairs are within the one table and a row is never paired with itself. :func:`sighting_group`
names the group a split keeps on one side (individual, camera, UTC day).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "US_PER_DAY",
    "Pairs",
    "camera_day_key",
    "same_burst",
    "same_camera_day",
    "same_day",
    "sighting_group",
]

US_PER_DAY = 86_400_000_000
Pairs = tuple[np.ndarray, np.ndarray]  # (query rows, gallery rows), int64


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
    """One column as a single array of ``type_`` (all null when the table lacks it)."""
    if name not in table.column_names:
        return pa.nulls(len(table), type_)
    col = table.column(name)
    return (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).cast(type_)


def _times(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Capture times as int64 microseconds since the epoch (UTC), and where they are known."""
    col = _column(table, "captured_at", pa.timestamp("us", tz="UTC")).cast(pa.int64())
    known = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64), known


def _codes(q: pa.Array, g: pa.Array, nulls_match: bool) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of two arrays over one dictionary: equal values, equal codes; -1 matches nothing
    (a query value absent from the gallery, or null unless ``nulls_match``)."""
    enc = pc.dictionary_encode(g)
    null_code = len(enc.dictionary) if nulls_match else -1
    cg = np.asarray(enc.indices.fill_null(null_code).to_numpy(zero_copy_only=False), dtype=np.int64)
    pos = pc.index_in(q, value_set=enc.dictionary)
    cq = np.asarray(pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    cq[np.asarray(q.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = null_code
    return cq, cg


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total)


def _equal_pairs(cq: np.ndarray, cg: np.ndarray) -> Pairs:
    """All (query, gallery) pairs with equal codes (codes < 0 pair with nothing)."""
    gi = np.flatnonzero(cg >= 0)
    order = gi[np.argsort(cg[gi], kind="stable")]
    qi = np.flatnonzero(cq >= 0)
    lo = np.searchsorted(cg[order], cq[qi], side="left")
    n = np.searchsorted(cg[order], cq[qi], side="right") - lo
    return np.repeat(qi, n), order[_ranges(lo, n)]


def _window_pairs(cq: np.ndarray, tq: np.ndarray, cg: np.ndarray, tg: np.ndarray, window: int) -> Pairs:
    """All (query, gallery) pairs with equal codes (>= 0) and times at most ``window`` apart."""
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for code in np.intersect1d(cq[cq >= 0], cg[cg >= 0]):
        qi = np.flatnonzero(cq == code)
        gi = np.flatnonzero(cg == code)
        gi = gi[np.argsort(tg[gi], kind="stable")]
        lo = np.searchsorted(tg[gi], tq[qi] - window, side="left")
        n = np.searchsorted(tg[gi], tq[qi] + window, side="right") - lo
        rows.append(np.repeat(qi, n))
        cols.append(gi[_ranges(lo, n)])
    return np.concatenate(rows), np.concatenate(cols)


def _result(pairs: Pairs, within: bool) -> Pairs:
    """Pairs sorted by (query, gallery) row; within one table, without a row paired with itself."""
    r, c = pairs
    if within:
        r, c = r[r != c], c[r != c]
    order = np.lexsort((c, r))
    return r[order].astype(np.int64), c[order].astype(np.int64)


def same_burst(queries: pa.Table, gallery: pa.Table | None = None, burst_seconds: float = 60.0) -> Pairs:
    """Pairs from one burst: same camera (unknown cameras count as one), at most ``burst_seconds``
    apart; photos of unknown time are in no burst."""
    other = queries if gallery is None else gallery
    tq, ok_q = _times(queries)
    tg, ok_g = _times(other)
    cq, cg = _codes(
        _column(queries, "camera_id", pa.string()), _column(other, "camera_id", pa.string()), True
    )
    cq, cg = np.where(ok_q, cq, -1), np.where(ok_g, cg, -1)
    window = int(round(burst_seconds * 1e6))
    return _result(_window_pairs(cq, tq, cg, tg, window), gallery is None)


def _days(table: pa.Table) -> pa.Array:
    """UTC day number per row (floor of the time in days), null where the time is unknown."""
    t, known = _times(table)
    return pa.array(t // US_PER_DAY, mask=~known)


def same_day(queries: pa.Table, gallery: pa.Table | None = None) -> Pairs:
    """Pairs captured on one UTC calendar day, whatever the camera; unknown time pairs with nothing."""
    dq = _days(queries)
    dg = dq if gallery is None else _days(gallery)
    return _result(_equal_pairs(*_codes(dq, dg, False)), gallery is None)


def camera_day_key(table: pa.Table) -> pa.Array:
    """``camera_id|UTC day number`` per row, null when either is unknown: :func:`same_camera_day`
    pairs the rows whose keys are equal."""
    ts = _column(table, "captured_at", pa.timestamp("us", tz="UTC"))
    micros = pc.cast(pc.cast(ts, pa.timestamp("us")), pa.int64()).cast(pa.float64())
    days = pc.cast(pc.floor(pc.divide(micros, float(US_PER_DAY))), pa.int64())
    cam = _column(table, "camera_id", pa.string())
    return pc.binary_join_element_wise(cam, pc.cast(days, pa.string()), "|")


def same_camera_day(queries: pa.Table, gallery: pa.Table | None = None) -> Pairs:
    """Pairs from one camera on one UTC calendar day; unknown camera or time pairs with nothing."""
    kq = camera_day_key(queries)
    kg = kq if gallery is None else camera_day_key(gallery)
    return _result(_equal_pairs(*_codes(kq, kg, False)), gallery is None)


def sighting_group(
    individual_id: str | None, camera_id: str | None, captured_at: dt.datetime | None, survey: str | None
) -> str | None:
    """The sighting group of an image: same individual, camera and UTC calendar day (the survey
    stands in for the day when the time is unknown; unknown cameras count as one); None unlabelled."""
    if individual_id is None:
        return None
    if captured_at is None:
        when = f"survey:{survey}"
    else:
        utc = captured_at.astimezone(dt.timezone.utc) if captured_at.tzinfo is not None else captured_at
        when = utc.date().isoformat()
    return f"{individual_id}|{camera_id or ''}|{when}"
