"""The review queue: what a ``reid match`` output needs a person to decide, most consequential first.

Items, in this order (a kind's items by how much the decision can change: the photos it moves, plus
one for each that is its identity's only sighting in a survey, i.e. a capture-history cell; then by
how close the score is to the threshold):

``conflict``      reviewers disagree about a photo (:mod:`reid.review.resolve`): settle it first
``new``           a proposed new individual (a group of unlabelled photos no known one matched)
``uncertain``     an unlabelled photo matched to a known individual with a score between the bounds
                  (either answer changes its identity: confirmed, or re-decided without the candidate)
``batch``         two unlabelled photos of this batch that match each other but got different identities
                  (only "same" changes anything: the two become one individual)
``disagreement``  a labelled photo the model puts with another individual (a label error, or a
                  merge); last, since a label is usually right and "different" then changes nothing

The bounds: ``low`` is the match's new-individual threshold (calibrated by ``reid index``);
``high`` is the lowest score above which the match's labelled photos are named right at least
``target_precision`` of the time (:func:`score_bounds`). Matches above ``high`` are not asked about.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid import manifest, storage
from reid.errors import ReidError
from reid.review.resolve import Resolution

__all__ = ["ALTERNATIVES", "KINDS", "Queue", "load_queue", "score_bounds"]

ALTERNATIVES = 5  # known individuals offered per item (the query's nearest, one photo each)
KINDS = ("conflict", "new", "uncertain", "batch", "disagreement")
META = ("survey", "camera_id", "captured_at", "viewpoint", "individual_id")
PROPOSAL = "new-"  # names of the model's proposed new individuals (reid.matching.group_new)


def score_bounds(decisions: pa.Table, threshold: float | None, target_precision: float = 0.95) -> dict:
    """(low, high) score bounds of the "uncertain" band, calibrated on the labelled queries
    (None: no bound on that side)."""
    low = -math.inf if threshold is None else float(threshold)
    lab = decisions.filter(pc.and_(pc.is_valid(decisions["individual_id"]), pc.is_valid(decisions["score"])))
    s = np.asarray(lab["score"].to_numpy(zero_copy_only=False), np.float64)
    ok = np.asarray(pc.fill_null(pc.equal(lab["individual_id"], lab["predicted_individual"]), False))
    order = np.argsort(-s, kind="stable")
    precision = np.cumsum(ok[order]) / np.arange(1, len(s) + 1)
    good = np.flatnonzero(precision >= target_precision)
    high = float(s[order][good[-1]]) if len(good) else math.inf
    high = max(high, low)
    finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 - JSON has no infinity
    return {
        "low": finite(low),
        "high": finite(high),
        "target_precision": target_precision,
        "labelled": len(s),
    }


def _read_parts(uri: str, kind: str, columns: list[str] | None = None) -> pa.Table:
    files = storage.list_files(storage.join(uri, kind), suffix=".parquet")
    return pa.concat_tables(
        [storage.read_parquet(f, columns=columns) for f in files], promote_options="default"
    )


def _date(value) -> str | None:
    return value.date().isoformat() if isinstance(value, dt.datetime) else None


@dataclass
class Queue:
    """Every item of one match output (decided or not); :meth:`page` filters, orders and pages."""

    uri: str
    items: list[dict]
    meta: dict[str, dict]  # image_id -> survey, camera_id, captured_at, viewpoint, individual_id, identity
    photos: dict[str, list[str]]  # identity -> its photos
    bounds: dict
    alternatives: dict[str, list[dict]] = field(default_factory=dict)  # query -> nearest individuals

    def year(self, image_id: str) -> int | None:
        """The year a new individual first seen on this photo is numbered in."""
        m = self.meta.get(image_id, {})
        if isinstance(m.get("captured_at"), dt.datetime):
            return m["captured_at"].year
        survey = str(m.get("survey") or "")
        return int(survey) if survey.isdigit() and len(survey) == 4 else None

    def photo(self, image_id: str | None) -> dict | None:
        if image_id is None:
            return None
        m = self.meta.get(image_id, {})
        at = m.get("captured_at")
        return {
            "image_id": image_id,
            **m,
            "captured_at": at.isoformat() if isinstance(at, dt.datetime) else at,
        }

    def conflict_items(self, res: Resolution) -> list[dict]:
        out = []
        for q, decisions in res.conflicts.items():
            named = [d["individual_id"] for d in decisions if d["individual_id"]]
            cand = next((n for n in named if n in self.photos), named[0] if named else None)
            out.append({
                "item_id": f"conflict:{q}", "kind": "conflict", "query": q, "impact": len(decisions),
                "candidate_individual": cand, "candidate_image": (self.photos.get(cand) or [None])[0],
                "score": None, "members": [], "decisions": decisions,
                "why": f"{len(decisions)} decisions disagree about this photo",
            })  # fmt: skip
        return out

    def page(
        self,
        res: Resolution | None = None,
        survey: str | None = None,
        camera: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        kind: str | None = None,
        offset: int = 0,
        limit: int = 20,
        include_decided: bool = False,
    ) -> dict:
        """The items left to decide (or all), filtered by the query photo's survey, camera and date."""
        res = res or Resolution()
        items = self.conflict_items(res) + self.items

        def keep(it: dict) -> bool:
            m = self.meta.get(it["query"], {})
            day = _date(m.get("captured_at"))
            return (
                (not survey or m.get("survey") == survey)
                and (not camera or m.get("camera_id") == camera)
                and (not date_from or (day is not None and day >= date_from))
                and (not date_to or (day is not None and day <= date_to))
                and (not kind or it["kind"] == kind)
            )

        chosen = [it for it in items if keep(it)]
        for it in chosen:
            it["decided"] = it["kind"] != "conflict" and (
                it["item_id"] in res.decided_items or it["query"] in res.decided
            )
        todo = chosen if include_decided else [it for it in chosen if not it["decided"]]
        rows = [self.describe(it) for it in todo[offset : offset + max(0, limit)]]
        surveys = sorted({m["survey"] for m in self.meta.values() if m.get("survey")})
        cameras = sorted({m["camera_id"] for m in self.meta.values() if m.get("camera_id")})
        days = sorted({d for m in self.meta.values() if (d := _date(m.get("captured_at")))})
        return {
            "items": rows, "offset": offset, "limit": limit, "total": len(chosen),
            "decided": sum(it["decided"] for it in chosen), "open": sum(not it["decided"] for it in chosen),
            "by_kind": dict(collections.Counter(it["kind"] for it in todo)), "bounds": self.bounds,
            "filters": {"surveys": surveys, "cameras": cameras, "dates": [days[0], days[-1]] if days else []},
        }  # fmt: skip

    def describe(self, it: dict) -> dict:
        """An item with its photos' metadata, the candidate's other photos (at most 8) and the
        query's nearest known individuals (``alternatives``, each with a few of its photos)."""
        shown = {it["query"], it["candidate_image"]}
        if it["kind"] == "new":
            others = [m for m in it["members"] if m not in shown]
        else:
            others = [p for p in self.photos.get(it["candidate_individual"] or "", []) if p not in shown]
        alternatives = []
        for a in self.alternatives.get(it["query"], []):
            more = [
                p for p in self.photos.get(a["individual_id"], []) if p not in (it["query"], a["image_id"])
            ]
            alternatives.append({**a, "photo": self.photo(a["image_id"]), "others": [self.photo(p) for p in more[:6]],
                                 "n_others": len(more)})  # fmt: skip
        return {
            **it, "query": self.photo(it["query"]), "candidate": self.photo(it["candidate_image"]),
            "others": [self.photo(p) for p in others[:8]], "n_others": len(others), "alternatives": alternatives,
        }  # fmt: skip


def load_queue(uri: str, target_precision: float = 0.95) -> Queue:
    """The queue of a committed all-vs-all ``reid match`` output."""
    m = manifest.require_manifest(uri, job="match")
    if not storage.exists(storage.join(uri, "identities.parquet")):
        raise ReidError(
            f"{uri}: a `reid match --query` output has no identities to review; pass an all-vs-all match output"
        )
    decisions = storage.read_parquet(storage.join(uri, "decisions.parquet"))
    proposed = storage.read_parquet(storage.join(uri, "new_individuals.parquet"))
    identities = storage.read_parquet(storage.join(uri, "identities.parquet"))
    queries = _read_parts(uri, "queries")
    matches = _read_parts(
        uri, "matches", ["query_id", "neighbor_id", "rank", "score", "neighbor_individual_id"]
    )
    threshold = m.get("threshold")
    bounds = score_bounds(decisions, threshold, target_precision)
    ident = dict(zip(identities["image_id"].to_pylist(), identities["identity"].to_pylist(), strict=True))
    meta = {
        r["image_id"]: {**{k: r.get(k) for k in META}, "identity": ident.get(r["image_id"])}
        for r in queries.select([c for c in ["image_id", *META] if c in queries.column_names]).to_pylist()
    }
    photos: dict[str, list[str]] = collections.defaultdict(list)
    cells = collections.Counter((m["identity"], m["survey"]) for m in meta.values() if m["identity"])

    def sole(q: str) -> int:
        """1 when the photo is its identity's only sighting in its survey: deciding it flips a cell."""
        m = meta.get(q, {})
        return int(cells[(m.get("identity"), m.get("survey"))] == 1)

    for image_id, who in ident.items():
        if who is not None:
            photos[who].append(image_id)

    # per query: best image of each labelled neighbour individual, and its first unlabelled neighbour
    matches = matches.sort_by([("query_id", "ascending"), ("rank", "ascending")])
    best_image: dict[tuple[str, str], str] = {}
    first_unlabelled: dict[str, tuple[str, float]] = {}
    alternatives: dict[str, list[dict]] = collections.defaultdict(list)
    for q, n, s, ind in zip(*(matches[c].to_pylist() for c in ("query_id", "neighbor_id", "score", "neighbor_individual_id")), strict=True):  # fmt: skip
        if ind is not None:
            if (q, ind) not in best_image and len(alternatives[q]) < ALTERNATIVES:
                alternatives[q].append({"individual_id": ind, "image_id": n, "score": s})
            best_image.setdefault((q, ind), n)
        elif meta.get(q, {}).get("individual_id") is None:
            first_unlabelled.setdefault(q, (n, s))

    low = -math.inf if bounds["low"] is None else bounds["low"]
    high = math.inf if bounds["high"] is None else bounds["high"]
    items: list[dict] = []

    def item(kind: str, q: str, ind: str | None, score: float | None, impact: int, why: str, **extra) -> None:
        items.append({
            "item_id": extra.pop("item_id", f"{kind}:{q}"), "kind": kind, "query": q, "impact": impact,
            "candidate_individual": ind, "candidate_image": extra.pop("image", best_image.get((q, ind or ""))),
            "score": score, "members": extra.pop("members", []), "why": why, **extra,
        })  # fmt: skip

    dec = {r["query_id"]: r for r in decisions.to_pylist()}
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for image_id, group in zip(proposed["image_id"].to_pylist(), proposed["proposed_individual"].to_pylist(), strict=True):  # fmt: skip
        groups[group].append(image_id)
    for group, members in groups.items():
        rep = max(members, key=lambda x: (dec[x]["score"] if dec[x]["score"] is not None else -math.inf, x))
        r = dec[rep]
        why = f"proposed new individual {group} ({len(members)} photo{'s' * (len(members) > 1)})"
        item("new", rep, r["predicted_individual"], r["score"], len(members), why, members=sorted(members),
             item_id=f"new:{group}", proposed=group)  # fmt: skip
    for q, r in dec.items():
        if r["is_new"] or r["score"] is None:
            continue
        if r["individual_id"] is not None and r["predicted_individual"] != r["individual_id"]:
            why = f"labelled {r['individual_id']}, but the model puts it with {r['predicted_individual']}"
            item("disagreement", q, r["predicted_individual"], r["score"], 1 + sole(q), why)
        elif r["individual_id"] is None and low <= r["score"] < high:
            why = (
                f"matched to {r['predicted_individual']} with a score under {high:.3f}, the sure-match bound"
            )
            why = (
                why
                if math.isfinite(high)
                else f"matched to {r['predicted_individual']} (no score is sure here)"
            )
            item("uncertain", q, r["predicted_individual"], r["score"], 1 + sole(q), why)
    seen_pairs: set[tuple[str, str]] = set()
    for q, (n, s) in first_unlabelled.items():
        pair = (min(q, n), max(q, n))
        a, b = meta.get(q, {}).get("identity"), meta.get(n, {}).get("identity")
        if s < low or a == b or pair in seen_pairs:
            continue
        seen_pairs.add(pair)
        why = (
            f"matches another unlabelled photo of the batch (identity {b or 'none'}, this one {a or 'none'})"
        )
        item("batch", q, b, s, 2 + sole(q) + sole(n), why, image=n, item_id=f"batch:{pair[0]}|{pair[1]}")
    rank = {k: i for i, k in enumerate(KINDS)}
    mid = low if math.isfinite(low) else 0.0
    items.sort(
        key=lambda it: (rank[it["kind"]], -it["impact"], abs((it["score"] or mid) - mid), it["item_id"])
    )
    return Queue(uri, items, meta, dict(photos), bounds, dict(alternatives))
