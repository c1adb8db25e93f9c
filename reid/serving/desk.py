"""The review desk: the queue of one match output, and the decisions reviewers record on it.

What is stored is built here from the queue item the page showed (photos, candidate, score), so a
request can only say which item and which answer: ``same``, ``different``, ``new``, ``merge``
(the photo's individual and the candidate are one) or ``split`` (the photo leaves its individual).
``undo`` appends a retraction; nothing is ever rewritten. Conflicts between reviewers come back
as queue items (:mod:`reid.review.queue`).
"""

from __future__ import annotations

import threading

from reid import review
from reid.errors import ReidError
from reid.review.queue import PROPOSAL, Queue, load_queue
from reid.review.resolve import ID_FORMAT, Resolution, check_id_format, resolve

__all__ = ["ANSWERS", "ReviewDesk", "query_decision"]

ANSWERS = ("same", "different", "new", "merge", "split")


class ReviewDesk:
    """Pages of the queue and decisions on its items; reviews go to ``reviews_dir/_reviews``."""

    def __init__(
        self,
        matches: str,
        reviews_dir: str,
        id_format: str = ID_FORMAT,
        model_id: str | None = None,
        index_version: str | None = None,
        sources: dict[str, str] | None = None,
    ):
        self.queue: Queue = load_queue(matches)
        self.reviews_dir, self.id_format = reviews_dir, check_id_format(id_format)
        self.model_id, self.index_version = model_id, index_version
        self.sources = sources or {}
        self._lock = threading.Lock()
        self._res: Resolution | None = None
        self.by_id = {it["item_id"]: it for it in self.queue.items}

    def resolution(self) -> Resolution:
        with self._lock:
            if self._res is None:
                self._res = resolve(review.read_reviews(self.reviews_dir), self.id_format)
            return self._res

    def individuals(self) -> list[str]:
        """Every individual a reviewer may name: labelled or matched in the match output (not the
        model's proposals), merged ones under the name kept, and those reviews minted since."""
        res = self.resolution()
        known = {res.canonical(i) for i in self.queue.photos if not i.startswith(PROPOSAL)}
        return sorted(known | {v["individual_id"] for v in res.labels.values()} - {None})

    def page(self, **filters) -> dict:
        """A page of the queue (see :meth:`reid.review.queue.Queue.page`), photos with file names."""
        res = self.resolution()
        out = self.queue.page(res, **filters)
        for it in out["items"]:
            for p in [it["query"], it["candidate"], *it["others"]]:
                if p is not None:
                    p["file"] = self.sources.get(p["image_id"])
                    p["individual_id"] = res.canonical(p.get("individual_id"))
            label = res.labels.get(it["query"]["image_id"])
            it["reviewed_as"] = label["individual_id"] if label else None
        out["reviews"] = res.counts
        return out

    def _store(self, decision: str, **fields) -> dict:
        rec = review.record(
            self.reviews_dir, decision, None, model_id=self.model_id, index_version=self.index_version,
            name_new=False, **fields,
        )  # fmt: skip
        with self._lock:
            self._res = None
        minted = self.resolution().minted.get(rec["review_id"])
        return {**rec, "minted": minted} if minted else rec

    def decide(
        self, item_id: str, answer: str, reviewer: str | None = None, note: str | None = None,
        name: str | None = None, candidate: str | None = None,
    ) -> dict:  # fmt: skip
        """Record ``answer`` about a queue item; returns the stored decision. ``candidate``: the
        individual the answer is about (default: the item's): one of the item's nearest
        (``alternatives``), or any of :meth:`individuals` (the reviewer searched for it)."""
        it = self.by_id.get(item_id)
        if it is None and item_id.startswith("conflict:"):
            q = item_id.split(":", 1)[1]
            it = next((c for c in self.queue.conflict_items(self.resolution()) if c["query"] == q), None)
        if it is None:
            raise ReidError(f"no queue item {item_id[:120]!r}: reload the queue")
        if answer not in ANSWERS:
            raise ReidError(f"answer {answer!r}: expected one of {', '.join(ANSWERS)}")
        q, ind, img, score = it["query"], it["candidate_individual"], it["candidate_image"], it["score"]
        if candidate is not None and candidate != ind:
            alt = next(
                (a for a in self.queue.alternatives.get(q, []) if a["individual_id"] == candidate), None
            )
            if alt is not None:
                ind, img, score = candidate, alt["image_id"], alt["score"]
            elif candidate in self.individuals():  # named by the reviewer (searched), not a neighbour
                ind, img, score = candidate, (self.queue.photos.get(candidate) or [None])[0], None
            else:
                raise ReidError(f"{candidate[:64]!r} is not a known individual: pick one the page offers")
        common = dict(
            query_image_id=q, candidate_image_id=img, score=score, reviewer=reviewer, note=note,
            item_id=item_id, threshold=self.queue.bounds["low"],
        )  # fmt: skip
        proposal = ind is None or ind.startswith(PROPOSAL)
        own = self.queue.meta.get(q, {}).get("individual_id")
        if answer == "same" and it["kind"] == "batch" and proposal:
            # the other photo has no known individual yet: the two are one new individual
            return self._store("new", **common, individual_id=name, members=[img], year=self.queue.year(q))
        if answer == "same":
            if ind is None or proposal:
                raise ReidError("this item has no known candidate individual: answer new or different")
            return self._store("same", **common, individual_id=ind)
        if answer == "different":
            return self._store("different", **common, individual_id=None if proposal else ind)
        if answer == "new":
            members = [m for m in it["members"] if m != q]
            return self._store("new", **common, individual_id=name, members=members, year=self.queue.year(q))
        if answer == "merge":
            if not own or proposal:
                raise ReidError("merge needs a labelled photo and a known candidate individual")
            return self._store("merge", **common, individual_id=own, other_individual_id=ind)
        if not own:
            raise ReidError("split needs a labelled photo (it leaves its individual for a new one)")
        return self._store(
            "split", **common, individual_id=name, other_individual_id=own, year=self.queue.year(q)
        )

    def undo(self, review_id: str, reviewer: str | None = None) -> dict:
        """Retract a decision (an appended ``undo``; the log is never rewritten)."""
        known = set(review.read_reviews(self.reviews_dir).column("review_id").to_pylist())
        if review_id not in known:
            raise ReidError(f"no decision {review_id[:80]!r} to undo")
        return self._store("undo", retracts=review_id, reviewer=reviewer)


def query_decision(
    reviews_dir: str, shown: dict, decision: str, individual_id: str | None, reviewer: str | None,
    note: str | None, model_id: str | None, index_version: str | None,
) -> dict:  # fmt: skip
    """Record a decision about a photo the page queried (``shown``: what the page was answered):
    ``same``/``different`` must name one of its candidates."""
    cand = None
    if decision in ("same", "different"):
        cand = next((c for c in shown["candidates"] if c["individual_id"] == individual_id), None)
        if cand is None:
            raise ReidError(f"{individual_id!r} is not a candidate of this query")
    return review.record(
        reviews_dir, decision, shown["sha256"], individual_id=individual_id, query_image_id=shown["image_id"],
        candidate_image_id=cand["image_id"] if cand else None,
        score=cand["score"] if cand else shown["best_score"], threshold=shown["threshold"],
        model_id=model_id, index_version=index_version, reviewer=reviewer, note=note,
    )  # fmt: skip
