"""reid.review: the decision log resolved (several reviewers, conflicts, minted ids, merges, splits,
undo), applied to match tables, and the review queue over a small hand-made match output."""

from __future__ import annotations

import pyarrow as pa
import pytest

from reid import review, storage
from reid.errors import ConfigError, ReidError
from reid.review import apply, resolve
from reid.review.queue import load_queue, score_bounds
from tests.support.servedata import hand_made_matches


def log(tmp_path, *decisions: tuple) -> str:
    """Record ``(decision, image_id, individual, reviewer, extra)`` tuples; returns the folder."""
    folder = str(tmp_path / "idx")
    for decision, image_id, individual, reviewer, *extra in decisions:
        review.record(folder, decision, None, individual_id=individual, query_image_id=image_id,
                      reviewer=reviewer, name_new=False, **(extra[0] if extra else {}))  # fmt: skip
    return folder


def resolved(folder: str, fmt: str = "NYL-{year}-{n:04d}") -> resolve.Resolution:
    return resolve.resolve(review.read_reviews(folder), fmt)


def test_agreeing_reviewers_label_and_disagreeing_ones_conflict(tmp_path):
    folder = log(
        tmp_path,
        ("same", "p1", "A", "ana"),
        ("same", "p1", "A", "bo"),  # agrees
        ("same", "p2", "A", "ana"),
        ("same", "p2", "B", "bo"),  # two identities: conflict
        ("same", "p3", "C", "ana"),
        ("different", "p3", "C", "bo"),  # same against different about C: conflict
        ("same", "p4", "D", "ana"),
        ("different", "p4", "D", "ana"),  # ana changed her mind: withdrawn, and ruled out
    )
    res = resolved(folder)
    assert res.labels["p1"]["individual_id"] == "A" and res.labels["p1"]["reviewer"] == "ana, bo"
    assert set(res.conflicts) == {"p2", "p3"} and "p2" not in res.labels and "p3" not in res.labels
    assert {d["individual_id"] for d in res.conflicts["p2"]} == {"A", "B"}
    assert "p4" not in res.labels and ("p4", "D") in res.rejected
    assert ("p3", "C") not in res.rejected  # a contested rejection is not applied either
    assert res.decided >= {"p1", "p2", "p3", "p4"}


def test_minted_ids_are_stable_and_undo_leaves_a_gap(tmp_path):
    folder = log(
        tmp_path,
        ("new", "p1", None, "ana", {"year": 2024, "members": ["p1b"]}),
        ("new", "p2", None, "ana", {"year": 2024}),
        ("new", "p3", None, "bo", {"year": 2023}),
        ("new", "p4", "Stripes", "bo", {"year": 2024}),  # named: nothing minted
    )
    res = resolved(folder)
    names = {q: v["individual_id"] for q, v in res.labels.items()}
    assert names == {"p1": "NYL-2024-0001", "p1b": "NYL-2024-0001", "p2": "NYL-2024-0002",
                     "p3": "NYL-2023-0001", "p4": "Stripes"}  # fmt: skip
    table = review.confirmed_labels(folder, "NYL-{year}-{n:04d}")  # the same view, as a table
    assert dict(zip(table["image_id"].to_pylist(), table["individual_id"].to_pylist(), strict=True)) == names
    first = next(r for r in review.read_reviews(folder).to_pylist() if r["query_image_id"] == "p1")
    review.record(folder, "undo", None, retracts=first["review_id"], reviewer="ana")
    review.record(folder, "new", None, query_image_id="p5", year=2024, name_new=False)
    again = {q: v["individual_id"] for q, v in resolved(folder).labels.items()}
    assert "p1" not in again and again["p2"] == "NYL-2024-0002"  # unchanged by the undo
    assert again["p5"] == "NYL-2024-0003"  # the next number; 0001 is never reused


def test_merge_split_and_two_new_answers_agree(tmp_path):
    folder = log(
        tmp_path,
        ("same", "p1", "B", "ana"),
        ("merge", None, "A", "ana", {"other_individual_id": "B"}),
        ("split", "p2", None, "bo", {"other_individual_id": "A", "year": 2022}),
        ("new", "p3", None, "ana", {"year": 2022}),
        ("new", "p3", None, "bo", {"year": 2022}),  # two reviewers, one new individual
    )
    res = resolved(folder, "ind-{year}-{n}")
    assert res.merges == {"B": "A"} and res.labels["p1"]["individual_id"] == "A"
    assert res.labels["p2"]["individual_id"] == "ind-2022-1" and ("p2", "A") in res.rejected
    assert res.labels["p3"]["individual_id"] == "ind-2022-2" and not res.conflicts


@pytest.mark.parametrize(("fmt", "words"), [("NYL-{year}", "needs {n}"), ("X-{nope}", "does not format")])
def test_bad_id_formats_are_refused(fmt, words):
    with pytest.raises(ConfigError, match=words):
        resolve.check_id_format(fmt)


def test_record_refuses_incomplete_decisions(tmp_path):
    with pytest.raises(ReidError, match="merged into it"):
        review.record(str(tmp_path), "merge", None, individual_id="A")
    with pytest.raises(ReidError, match="review_id it retracts"):
        review.record(str(tmp_path), "undo", None)
    with pytest.raises(ReidError, match="SHA-256"):
        review.record(str(tmp_path), "new", None)  # neither a photo id nor a hash
    with pytest.raises(ReidError, match="no decisions found"):
        review.find_reviews(str(tmp_path / "nothing"))


def test_applied_to_match_tables(tmp_path):
    folder = log(
        tmp_path,
        ("same", "q1", "A", "ana"),
        ("different", "q2", "B", "ana", {"candidate_image_id": "g3"}),
        ("merge", None, "A", "ana", {"other_individual_id": "C"}),
    )
    reviewed = apply.load(folder)
    queries = pa.table({"image_id": ["q1", "q2"], "individual_id": pa.array([None, "C"], pa.string())})
    assert reviewed.relabel(queries)["individual_id"].to_pylist() == ["A", "A"]  # confirmed; C merged into A
    matches = pa.table({
        "query_id": ["q2", "q2", "q2", "q9"], "neighbor_id": ["g1", "g3", "q1", "g1"],
        "neighbor_individual_id": pa.array(["B", None, None, "B"], pa.string()),
    })  # fmt: skip
    kept = reviewed.filter_matches(matches).to_pylist()
    # q2-B ruled out, q2-g3 ruled out, q1 now names A for whoever matches it; q9-B untouched
    assert [(r["query_id"], r["neighbor_id"], r["neighbor_individual_id"]) for r in kept] == [
        ("q2", "q1", "A"), ("q9", "g1", "B"),
    ]  # fmt: skip
    ident = pa.table({"image_id": ["q1", "q9"], "survey": ["2021", "2021"], "identity": ["X", "B"],
                      "basis": ["match", "match"]})  # fmt: skip
    assert reviewed.mark(ident).to_pylist()[0] == {"image_id": "q1", "survey": "2021", "identity": "A",
                                                   "basis": "confirmed"}  # fmt: skip
    # q2 was ruled out of B; left as a new one by the model, it is unresolved, not a new animal
    proposed = pa.table({"image_id": ["q2"], "survey": ["2021"], "identity": ["new-q2"], "basis": ["new"]})
    assert reviewed.mark(proposed).to_pylist()[0] == {"image_id": "q2", "survey": "2021", "identity": None,
                                                      "basis": "unresolved"}  # fmt: skip
    assert reviewed.lineage()["labels"] == 1 and reviewed.digest


# --------------------------------------------------------------------------------------------
# The queue over a hand-made match output


def test_score_bounds_from_labelled_queries():
    dec = pa.table({"individual_id": ["A", "A", "B", None], "predicted_individual": ["A", "B", "B", "A"],
                    "score": pa.array([0.99, 0.95, 0.97, 0.8], pa.float32())})  # fmt: skip
    b = score_bounds(dec, 0.5, target_precision=0.9)
    assert b["low"] == 0.5 and b["high"] == pytest.approx(0.97) and b["labelled"] == 3
    assert score_bounds(dec, None, target_precision=1.0)["low"] is None


def test_queue_order_filters_paging_and_decided(tmp_path):
    q = load_queue(hand_made_matches(tmp_path))
    page = q.page(limit=50)
    kinds = [it["kind"] for it in page["items"]]
    assert kinds[0] == "new" and page["items"][0]["impact"] == 2  # the proposed individual first
    assert kinds == ["new", "uncertain", "uncertain", "batch", "disagreement"]  # u3 scores above the band
    assert page["items"][-1]["query"]["image_id"] == "l2"  # labelled A, put with B
    new = page["items"][0]
    assert new["query"]["image_id"] == "u4" and [o["image_id"] for o in new["others"]] == ["u5"]
    batch = page["items"][3]
    assert batch["item_id"] == "batch:u1|u3" and batch["candidate"]["image_id"] == "u3"
    # filters: survey, camera, dates (of the query photo); paging
    assert {it["query"]["image_id"] for it in q.page(survey="2022", limit=50)["items"]} == {"u1", "u2"}
    assert {it["query"]["image_id"] for it in q.page(camera="c3", limit=50)["items"]} == {"u4"}
    dated = q.page(date_from="2022-05-01", date_to="2022-06-30", limit=50)["items"]
    assert {it["query"]["image_id"] for it in dated} == {"u1", "u2"}
    assert [it["item_id"] for it in q.page(offset=1, limit=2)["items"]] == [
        it["item_id"] for it in page["items"][1:3]
    ]
    assert (
        page["filters"]["surveys"] == ["2021", "2022", "2023"] and page["filters"]["dates"][0] == "2021-05-01"
    )
    # a decision takes its item out of the open queue; a conflict puts it first
    folder = log(tmp_path, ("new", "u4", None, "ana", {"item_id": new["item_id"], "members": ["u5"]}),
                 ("same", "u2", "A", "ana"), ("different", "u2", "A", "bo"))  # fmt: skip
    after = q.page(resolved(folder), limit=50)
    assert after["decided"] == 2 and after["open"] == page["open"] - 1  # u4, u2 decided; u2's conflict open
    assert after["items"][0]["kind"] == "conflict" and after["items"][0]["query"]["image_id"] == "u2"
    assert new["item_id"] not in {it["item_id"] for it in after["items"]}
    assert len(q.page(resolved(folder), include_decided=True, limit=50)["items"]) == len(page["items"]) + 1


def test_desk_builds_decisions_from_the_item_shown(tmp_path):
    from reid.serving.desk import ReviewDesk

    desk = ReviewDesk(hand_made_matches(tmp_path), str(tmp_path / "rev"), "T-{year}-{n}")
    page = desk.page(limit=50)
    by_query = {it["query"]["image_id"]: it for it in page["items"]}
    u2 = by_query["u2"]
    assert [a["individual_id"] for a in u2["alternatives"]] == ["A"]  # its nearest known individuals
    new = desk.decide(by_query["u4"]["item_id"], "new", "ana")
    assert new["minted"] == "T-2023-1" and new["members"] == ["u5"] and new["year"] == 2023
    batch = desk.decide("batch:u1|u3", "same", "ana")  # u3 is matched to B, a known individual
    assert (batch["decision"], batch["individual_id"], batch["candidate_image_id"]) == ("same", "B", "u3")
    with pytest.raises(ReidError, match="not a known individual"):
        desk.decide(u2["item_id"], "same", "ana", candidate="Z")
    with pytest.raises(ReidError, match="needs a labelled photo"):
        desk.decide(u2["item_id"], "split", "ana")
    same = desk.decide(u2["item_id"], "same", "ana", candidate="A")
    assert same["individual_id"] == "A" and same["score"] == pytest.approx(0.85)
    assert desk.page(limit=50)["decided"] == 4  # u1 answered through its batch item too
    desk.undo(same["review_id"], "ana")
    after = desk.page(limit=50)
    assert after["decided"] == 3 and "u2" in {it["query"]["image_id"] for it in after["items"]}
    with pytest.raises(ReidError, match="no decision"):
        desk.undo("nope")
    with pytest.raises(ReidError, match="no queue item"):
        desk.decide("new:gone", "new")


def test_queue_refuses_what_is_not_an_all_vs_all_match(tmp_path):
    out = hand_made_matches(tmp_path)
    storage.delete(storage.join(out, "identities.parquet"))
    with pytest.raises(ReidError, match="all-vs-all"):
        load_queue(out)
    with pytest.raises(ReidError, match="not found"):
        load_queue(str(tmp_path / "nothing"))


def test_a_rejected_pair_is_not_joined_through_others(tmp_path):
    folder = log(
        tmp_path,
        ("new", "x", "Spot", "ana"),
        ("different", "y", None, "ana", {"candidate_image_id": "x"}),
        ("different", "a", None, "ana", {"candidate_image_id": "b"}),
    )
    reviewed = apply.load(folder)
    # y may not reach x's reviewed identity through another photo of it (z, now labelled Spot too)
    matches = pa.table({"query_id": ["y", "y"], "neighbor_id": ["z", "w"],
                        "neighbor_individual_id": pa.array(["Spot", "Other"], pa.string())})  # fmt: skip
    assert reviewed.filter_matches(matches)["neighbor_id"].to_pylist() == ["w"]
    # a and b grouped into one proposed individual through c: b leaves for a group of its own
    proposed = pa.table({"image_id": ["a", "b", "c"], "proposed_individual": ["new-1", "new-1", "new-1"]})
    groups = reviewed.separate(proposed)["proposed_individual"].to_pylist()
    assert groups[0] == groups[2] == "new-1" and groups[1] not in ("new-1", None)
