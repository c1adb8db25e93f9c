"""The review queue end to end: real headless Chromium on a real uvicorn, then the real `reid match`.

A new season's batch (tests.servedata.build_review) is matched against the served archive; on
/review a reviewer confirms the proposed new individual (n) and a resighting (s), answers
"same" on a stranger by mistake, undoes it (u) and rejects it (d). `reid match --reviews` then
names the new individual from the team's scheme, labels the resighting, never links the stranger
to the individual it was rejected from, and the capture history changes accordingly.
"""

from __future__ import annotations

import json
import shutil

import pytest

from scripts import chromium
from scripts.chromium import wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.ray,  # the served index and the match output are built by the real jobs
    pytest.mark.skipif(not chromium.available(), reason=chromium.MISSING),
]
ID_FORMAT = "NYL-{year}-{n:04d}"


def press(page, key: str, count: int) -> None:
    """Press a shortcut and wait until the page has stored ``count`` decisions in this session."""
    page.keyboard.press(key)
    wait_until(page, f"document.querySelector('#status').dataset.count === '{count}'", 60)


def open_item(page, item_id: str) -> None:
    page.click(f"#queue li[data-item-id='{item_id}']")
    wait_until(page, f"document.querySelector('#view').dataset.itemId === '{item_id}'", 30)


def test_review_queue_decisions_shape_the_next_match(reviewed, tmp_path):
    pytest.importorskip("playwright.sync_api")
    from jobs.match import MatchConfig
    from jobs.match import run as match
    from jobs.serve import create_app, running
    from reid import review, storage

    decisions = str(tmp_path / "reviews")
    app = create_app(reviewed["index"], reviewed["model"], matches=reviewed["matches"], reviews=decisions,
                     id_format=ID_FORMAT)  # fmt: skip
    desk = app.state.desk
    by_file = {it["query"]["file"]: it for it in desk.page(kind="uncertain", limit=200)["items"]}
    new_item = desk.page(limit=1)["items"][0]
    resighting, stranger = by_file["resighting.png"], by_file["stranger-b.jpg"]
    assert new_item["kind"] == "new" and new_item["impact"] == 2  # the two shots of one new animal
    assert resighting["kind"] == stranger["kind"] == "uncertain"

    with running(app) as url, chromium.browser() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url + "/review", wait_until="load")
        page.wait_for_selector("#view[data-item-id]")
        assert page.get_attribute("#view", "data-item-id") == new_item["item_id"]  # impact first
        assert "stranger-a" in page.inner_text("#meta-query")  # the file name is shown
        wait_until(page, "document.querySelector('#img-query').naturalWidth > 0")
        # the pair's verified keypoint matches are drawn under the photos, with their count
        wait_until(page, "document.querySelector('#img-kp').naturalWidth > 0")
        assert page.get_attribute("#kp", "data-inliers").isdigit()
        assert "verified keypoint matches" in page.inner_text("#kp-info")
        page.fill("#reviewer", "tester")
        page.click("body")  # focus leaves the name field: keys are shortcuts again

        press(page, "n", 1)  # confirm the proposed new individual: an id from the team's scheme
        assert "NYL-2023-0001" in page.inner_text("#status")
        page.select_option("#f-kind", "uncertain")
        wait_until(page, f"!!document.querySelector(\"#queue li[data-item-id='{resighting['item_id']}']\")")
        open_item(page, resighting["item_id"])
        press(page, "s", 2)  # the resighting is its candidate
        open_item(page, stranger["item_id"])
        press(page, "s", 3)  # a mistake...
        page.keyboard.press("u")  # ...undone
        wait_until(page, "document.querySelector('#status').textContent.startsWith('Undone')")
        open_item(page, stranger["item_id"])
        press(page, "d", 3)  # and rejected
        progress = page.inner_text("#progress-text")
        assert problems == []

    log = review.read_reviews("", folder=review.reviews_uri(decisions)).to_pylist()
    assert [(r["decision"], r["reviewer"]) for r in log] == [
        ("new", "tester"), ("same", "tester"), ("same", "tester"), ("undo", "tester"), ("different", "tester"),
    ]  # fmt: skip
    assert log[0]["members"] and log[0]["year"] == 2023 and "decided" in progress

    # the next match, with the reviews: re-decides over the committed kNN parts
    out = str(tmp_path / "matches")
    shutil.copytree(reviewed["matches"], out)
    before = storage.read_parquet(storage.join(out, "capture_history.parquet")).to_pylist()
    match(MatchConfig(index=reviewed["index"], out=out, k=10, exclude_same_camera_day=True, num_cpus=2,
                      reviews=decisions, id_format=ID_FORMAT))  # fmt: skip
    ident = {
        r["image_id"]: r for r in storage.read_parquet(storage.join(out, "identities.parquet")).to_pylist()
    }
    dec = {r["query_id"]: r for r in storage.read_parquet(storage.join(out, "decisions.parquet")).to_pylist()}
    shots = [new_item["query"]["image_id"], *new_item["members"]]
    assert {(ident[s]["identity"], ident[s]["basis"]) for s in shots} == {("NYL-2023-0001", "confirmed")}
    q = resighting["query"]["image_id"]
    assert (ident[q]["identity"], ident[q]["basis"]) == (resighting["candidate_individual"], "confirmed")
    s = stranger["query"]["image_id"]
    assert dec[s]["predicted_individual"] != stranger["candidate_individual"]  # never linked again
    assert ident[s]["basis"] != "confirmed"

    after = storage.read_parquet(storage.join(out, "capture_history.parquet")).to_pylist()
    old = {r["individual"]: r for r in before}
    new = {r["individual"]: r for r in after}
    assert new["NYL-2023-0001"]["ch"] == new["NYL-2023-0001"]["ch_confirmed"] == "001"
    assert new_item["proposed"] in old and new_item["proposed"] not in new  # proposal -> confirmed id
    cand = resighting["candidate_individual"]
    assert new[cand]["ch_confirmed"][-1] == "1" and old[cand]["ch_confirmed"][-1] == "0"
    m = storage.read_parquet(storage.join(out, "population.parquet")).to_pylist()
    assert m[-1]["survey"] == "2023" and m[-1]["seen_confirmed"] == 2  # the new individual + the resighting
    lineage = json.loads(storage.read_text(storage.join(out, "_manifest.json")))
    assert lineage["reviews"]["labels"] == 3 and lineage["config"]["reviews"] == decisions
    assert decisions in [i["uri"] for i in lineage["inputs"]]

    # `reid index --reviews`: the next index holds the reviewed labels in its id tables
    from jobs.index import IndexConfig
    from jobs.index import run as index
    from reid.search.allvsall import gallery_table
    from reid.search.index_store import open_index

    emb = json.loads(storage.read_text(storage.join(reviewed["index"], "_manifest.json")))["config"][
        "embeddings"
    ]
    idx = str(tmp_path / "index")
    index(IndexConfig(embeddings=emb, out=idx, num_cpus=2, reviews=decisions, id_format=ID_FORMAT))
    g = gallery_table(open_index(idx))
    labels = dict(zip(g["image_id"].to_pylist(), g["individual_id"].to_pylist(), strict=True))
    assert {labels[s] for s in shots} == {"NYL-2023-0001"} and labels[q] == resighting["candidate_individual"]
    assert labels[s] is None  # the rejected stranger stays unlabelled
