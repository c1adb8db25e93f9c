"""The review log -> what a build applies: labels, minted ids, rejected pairs, merges, conflicts.

Rules (oldest decision first; an ``undo`` removes the decision it names):

* per photo and reviewer, the latest ``same``/``new``/``split`` is that reviewer's answer; a later
  ``different`` about the same individual withdraws it;
* reviewers who agree give the photo its identity; reviewers who disagree (two identities, or
  ``same`` against ``different`` about one individual) make a *conflict*: nothing is applied for
  that photo, and the review queue shows it first (no last-write-wins);
* ``new``/``split`` without a name mint one from the team's scheme, e.g. ``NYL-{year}-{n:04d}``:
  ``n`` counts the log's unnamed ``new``/``split`` decisions of that year in order, undone ones
  included, so an id once minted never changes (an undo leaves a gap);
* ``different`` rules out the photo/individual pair and the photo/photo pair for every build;
* ``merge`` B into A relabels B everywhere; ``split`` moves a photo out of its individual (a new id).

Only archive photos (``query_image_id``) are resolved; uploads are counted, not applied.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field

import pyarrow as pa

from reid.errors import ConfigError
from reid.review.log import ASSIGNING

__all__ = ["ID_FORMAT", "Resolution", "check_id_format", "mint", "resolve"]

ID_FORMAT = "ind-{year}-{n:04d}"


def check_id_format(fmt: str) -> str:
    """Refuse an id scheme that does not format (fields: ``year``, ``n``) or gives no unique ids."""
    try:
        a, b = fmt.format(year=2024, n=1), fmt.format(year=2024, n=2)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"--id-format {fmt!r}: does not format ({type(e).__name__}: {e}); use the fields "
            "{year} and {n}, e.g. 'NYL-{year}-{n:04d}'"
        ) from None
    if a == b or not a.strip():
        raise ConfigError(f"--id-format {fmt!r}: needs {{n}} so that each new individual gets its own id")
    return fmt


def mint(fmt: str, year: int, n: int) -> str:
    """The ``n``-th new individual id of ``year`` under the scheme ``fmt``."""
    return fmt.format(year=year, n=n)


@dataclass
class Resolution:
    """What the log decides (see the module docstring for the rules)."""

    labels: dict[str, dict] = field(default_factory=dict)  # image_id -> {individual_id, decision, ...}
    rejected: set[tuple[str, str]] = field(default_factory=set)  # (image_id, individual_id)
    rejected_images: set[tuple[str, str]] = field(default_factory=set)  # (image_id, image_id), sorted
    merges: dict[str, str] = field(default_factory=dict)  # merged individual -> the one kept
    conflicts: dict[str, list[dict]] = field(default_factory=dict)  # image_id -> disagreeing decisions
    decided: set[str] = field(default_factory=set)  # photos with a standing decision
    decided_items: set[str] = field(default_factory=set)  # queue items with a standing decision
    minted: dict[str, str] = field(default_factory=dict)  # review_id -> minted id
    counts: dict[str, int] = field(default_factory=dict)

    def canonical(self, individual: str | None) -> str | None:
        """An individual after merges (B merged into A -> A)."""
        seen = set()
        while individual in self.merges and individual not in seen:
            seen.add(individual)
            individual = self.merges[individual]
        return individual


def _year(row: dict) -> int:
    if row.get("year"):
        return int(row["year"])
    at = row["decided_at"]
    return (at if isinstance(at, dt.datetime) else dt.datetime.fromisoformat(at)).year


def _brief(row: dict, target: str | None) -> dict:
    return {
        "review_id": row["review_id"], "reviewer": row["reviewer"], "decision": row["decision"],
        "individual_id": target, "decided_at": str(row["decided_at"]),
    }  # fmt: skip


def resolve(reviews: pa.Table, id_format: str = ID_FORMAT) -> Resolution:
    """Resolve a log (:func:`reid.review.read_reviews`) into a :class:`Resolution`."""
    check_id_format(id_format)
    rows = reviews.to_pylist()  # oldest first
    res = Resolution()
    undone = {r["retracts"] for r in rows if r["decision"] == "undo"}
    per_year: collections.Counter[int] = collections.Counter()
    for r in rows:
        if r["decision"] in ("new", "split") and not r["individual_id"]:
            year = _year(r)
            per_year[year] += 1
            res.minted[r["review_id"]] = mint(id_format, year, per_year[year])
    active = [r for r in rows if r["decision"] != "undo" and r["review_id"] not in undone]

    def target(r: dict) -> str | None:
        return r["individual_id"] or res.minted.get(r["review_id"])

    # per photo, per reviewer: the standing answer and the rejections
    answer: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    rejects: dict[str, dict[str, dict[str, dict]]] = collections.defaultdict(
        lambda: collections.defaultdict(dict)
    )
    for r in active:
        if r["decision"] == "merge":
            kept, gone = r["individual_id"], r["other_individual_id"]
            if res.canonical(kept) != gone:  # a merge that would loop is ignored
                res.merges[gone] = kept
            continue
        q, who = r["query_image_id"], r["reviewer"] or ""
        if q is None:
            res.counts["uploads"] = res.counts.get("uploads", 0) + 1
            continue
        if r["item_id"]:
            res.decided_items.add(r["item_id"])
        res.decided.add(q)
        res.decided.update(r["members"] or [])
        if r["decision"] in ASSIGNING:
            answer[q][who] = r
            rejects[q][who].pop(target(r) or "", None)
        elif r["decision"] == "different":
            mine = answer[q].get(who)
            if mine is not None and r["individual_id"] and target(mine) == r["individual_id"]:
                del answer[q][who]
            if r["individual_id"]:
                rejects[q][who][r["individual_id"]] = r
            if r["candidate_image_id"]:
                res.rejected_images.add(tuple(sorted((q, r["candidate_image_id"]))))  # type: ignore[arg-type]

    member_labels: dict[str, dict] = {}
    for q in sorted(set(answer) | set(rejects)):
        answers = list(answer.get(q, {}).values())
        ruled_out = {ind: r for who in rejects.get(q, {}).values() for ind, r in who.items()}
        # two "new" answers agree (one new individual), two names must be equal
        keys = {("new",) if r["decision"] in ("new", "split") and not r["individual_id"] else ("id", target(r))
                for r in answers}  # fmt: skip
        contested = {target(r) for r in answers} & set(ruled_out)
        if len(keys) > 1 or contested:
            res.conflicts[q] = [_brief(r, target(r)) for r in answers] + [
                _brief(r, ind) for ind, r in ruled_out.items() if ind in contested
            ]
        for ind in set(ruled_out) - contested:
            res.rejected.add((q, ind))
        for r in answers:
            if r["decision"] == "split" and r["other_individual_id"]:
                res.rejected.add((q, r["other_individual_id"]))
        if q in res.conflicts or not answers:
            continue
        first = min(answers, key=lambda r: (str(r["decided_at"]), r["review_id"]))
        label = {
            "individual_id": target(first), "decision": first["decision"], "review_id": first["review_id"],
            "query_sha256": first["query_sha256"],
            "reviewer": ", ".join(sorted({r["reviewer"] or "" for r in answers} - {""})) or None,
            "decided_at": first["decided_at"],
        }  # fmt: skip
        res.labels[q] = label
        for r in answers:
            for m in r["members"] or []:
                member_labels.setdefault(m, {**label, "decision": "member", "query_sha256": None})
    for m, label in member_labels.items():  # a photo's own answer wins over a group it was shown in
        if m not in res.labels and m not in res.conflicts:
            res.labels[m] = label
    for label in res.labels.values():
        label["individual_id"] = res.canonical(label["individual_id"])
    res.counts.update(
        decisions=len(rows), standing=len(active), labels=len(res.labels), conflicts=len(res.conflicts),
        rejected=len(res.rejected) + len(res.rejected_images), merges=len(res.merges), minted=len(res.minted),
    )  # fmt: skip
    return res
