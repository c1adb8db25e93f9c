"""Evaluation protocols: which rows query and which form the gallery.

* ``loo``: leave-one-out within the set; each labelled image queries all the others. Individuals
  with a single image have nothing to be found, so they serve only as gallery distractors for the
  closed-set metrics (and as "new individual" queries for the open-set ones).
* ``split``: query and gallery images named by a split table (``image_id`` + a role column).
* ``time``: gallery = surveys (or capture times) before a cutoff, queries = from the cutoff on;
  queries whose individual never appears before the cutoff are the new individuals.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from reid.errors import ReidError
from reid.evaluation.data import EvalData

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "from_split",
    "leave_one_out",
    "split_caveat",
    "time_aware",
]

PROTOCOLS = ("loo", "split", "time")


@dataclass
class Protocol:
    """Row numbers (into :class:`EvalData`) of the queries and gallery; gallery None = leave-one-out."""

    name: str
    query: np.ndarray
    gallery: np.ndarray | None
    description: str
    info: dict = field(default_factory=dict)

    @property
    def gallery_rows(self) -> np.ndarray:
        return self.query if self.gallery is None else self.gallery


def leave_one_out(data: EvalData) -> Protocol:
    n_ind = len(set(data.labels))
    singles = _singletons(data.labels)
    return Protocol(
        "loo",
        np.arange(len(data)),
        None,
        f"leave-one-out: each of {len(data)} labelled images queries the other {max(0, len(data) - 1)} "
        f"({n_ind} individuals; {len(singles)} with one image serve as gallery only)",
        {"individuals": n_ind, "single_image_individuals": len(singles)},
    )


def _singletons(labels: np.ndarray) -> set:
    vals, counts = np.unique(labels.astype(str), return_counts=True)
    return set(vals[counts == 1])


def from_split(
    data: EvalData,
    split: pa.Table,
    column: str = "split",
    query_values: tuple[str, ...] = ("query",),
    gallery_values: tuple[str, ...] = ("gallery",),
    source: str = "split table",
) -> Protocol:
    """Queries and gallery named by a split table's ``column`` (images it does not name are left out)."""
    if column not in split.column_names:
        raise ReidError(
            f"{source}: no column {column!r} (found: {', '.join(split.column_names)}); pass --split-column"
        )
    role = dict(
        zip(
            split.column("image_id").cast(pa.string()).to_pylist(),
            split.column(column).cast(pa.string()).to_pylist(),
            strict=True,
        )
    )
    roles = np.array([role.get(i) for i in data.ids], dtype=object)
    q = np.flatnonzero(np.isin(roles, list(query_values)))
    g = np.flatnonzero(np.isin(roles, list(gallery_values)))
    found = sorted({r for r in role.values() if r is not None})
    return _protocol(
        "split",
        q,
        g,
        f"split table: {len(q)} queries ({column} in {list(query_values)}) against {len(g)} gallery images "
        f"({column} in {list(gallery_values)}){split_caveat(split)}",
        {"column": column, "not_in_split": int(sum(r is None for r in roles))},
        empty=f"{source}: {len(q)} query and {len(g)} gallery images among the labelled embeddings; "
        f"column {column!r} has values {found[:10]}: pass --query-value / --gallery-value",
    )


def split_caveat(split: pa.Table) -> str:
    """What a reader of the figures must know about how the split was made (from its manifest)."""
    import json

    from reid.data.splits import MANIFEST_KEY

    raw = (split.schema.metadata or {}).get(MANIFEST_KEY)
    kind = ((json.loads(raw).get("config") or {}).get("kind") if raw else None) or ""
    if kind == "closed-photo":
        return (
            "; closed-photo split (the published by-photo protocol): photos of one sighting (burst, day) "
            "may sit on both sides, so figures read higher than on new sightings"
        )
    return ""


def _protocol(
    name: str, q: np.ndarray, g: np.ndarray, description: str, details: dict, empty: str
) -> Protocol:
    """A protocol with queries and a gallery, or the ``empty`` message when either side has none."""
    if len(q) == 0 or len(g) == 0:
        raise ReidError(empty)
    return Protocol(name, q, g, description, details)


def _survey_key(value: str):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def time_aware(data: EvalData, cutoff: str, by: str = "survey") -> Protocol:
    """Gallery = images before ``cutoff``, queries = from it on; by ``survey`` or ``captured_at``.

    Surveys compare numerically when both look like numbers (``"2023"``), else as text.
    """
    if by == "survey":
        known = np.array([s is not None for s in data.survey])
        key = _survey_key(cutoff)
        before = np.array([s is not None and _survey_key(s) < key for s in data.survey])
    elif by == "captured_at":
        try:
            ts = dt.datetime.fromisoformat(cutoff)
        except ValueError as e:
            raise ReidError(f"--cutoff {cutoff!r}: expected an ISO date/time such as 2023-06-01") from e
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        stamp = np.datetime64(ts.astimezone(dt.timezone.utc).replace(tzinfo=None), "us")
        known = ~np.isnat(data.captured_at)
        before = known & (data.captured_at < stamp)
    else:
        raise ReidError(f"time protocol by {by!r}: choose 'survey' or 'captured_at'")
    g = np.flatnonzero(known & before)
    q = np.flatnonzero(known & ~before)
    return _protocol(
        "time",
        q,
        g,
        f"time-aware: {len(g)} gallery images with {by} before {cutoff}, {len(q)} queries from {cutoff} on",
        {"cutoff": cutoff, "by": by, f"without_{by}": int((~known).sum())},
        empty=f"time protocol: cutoff {cutoff!r} on {by} leaves {len(g)} gallery and {len(q)} query images "
        f"({int((~known).sum())} without {by}); choose a cutoff inside the data",
    )
