"""The review page end to end in real headless Chromium (Debian's), against a real uvicorn.

Upload an archive photo (exact crop) -> its individual ranked first; upload a new animal ->
"Likely a new individual"; record decisions on the page -> found in the index's review log.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import chromium
from scripts.chromium import wait_until
from tests.support.servedata import known_photo, new_animal_photo

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.ray,  # the served index is built by the real jobs
    pytest.mark.skipif(not chromium.available(), reason=chromium.MISSING),
]


@pytest.fixture(scope="module")
def url(served):
    from jobs.serve import create_app, running

    with running(create_app(served["index"], served["model"])) as u:
        yield u


@pytest.fixture(scope="module")
def page(url):
    pytest.importorskip("playwright.sync_api")
    with chromium.browser() as browser:
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(120_000)  # CI machines shared with other test runs can be slow
        pg.requests, pg.problems = [], []
        pg.on("request", lambda r: pg.requests.append(r.url))
        pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
        pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
        pg.goto(url, wait_until="load")
        pg.wait_for_selector("#examples img")
        yield pg


def upload(page, name: str, data: bytes, mime: str) -> None:
    page.evaluate("document.querySelector('#verdict').removeAttribute('data-verdict')")
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_known_photo_is_ranked_first_and_same_is_stored(page, served, url):
    from reid import review

    image_id, individual, data = known_photo(served["archive"])
    upload(page, "known.png", data, "image/png")
    page.wait_for_selector("#verdict[data-verdict]")
    assert page.get_attribute("#verdict", "data-verdict") == "known"
    assert f"Best match: {individual}" in page.inner_text("#verdict")
    first = page.locator("#candidates .candidate").first
    assert first.get_attribute("data-individual") == individual
    assert float(first.get_attribute("data-score")) > 0.999
    # every candidate thumbnail loads from /thumb/<image_id> (a broken one never gets a width)
    wait_until(
        page, "[...document.querySelectorAll('#candidates img')].every(i => i.complete && i.naturalWidth)"
    )
    assert page.locator("#candidates img").count() >= 5

    first.locator("button[data-decision=same]").click()
    page.wait_for_selector("#status[data-review-id]")
    review_id = page.get_attribute("#status", "data-review-id")
    assert "Saved: same" in page.inner_text("#status")
    stored = {r["review_id"]: r for r in review.read_reviews(served["index"]).to_pylist()}[review_id]
    assert stored["decision"] == "same" and stored["individual_id"] == individual
    assert stored["query_sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["candidate_image_id"] == image_id
    assert page.locator("#recent li").count() >= 1


def test_new_animal_is_likely_new_and_new_is_stored(page, served):
    from reid import review

    data = new_animal_photo(seed=11)
    upload(page, "stranger.jpg", data, "image/jpeg")
    page.wait_for_selector("#verdict[data-verdict]")
    assert page.get_attribute("#verdict", "data-verdict") == "new"
    assert "Likely a new individual" in page.inner_text("#verdict")
    page.fill("#new-name", "Magenta 1")
    page.fill("#reviewer", "tester")
    page.evaluate("document.querySelector('#status').removeAttribute('data-review-id')")
    page.click("#mark-new")
    page.wait_for_selector("#status[data-review-id]")
    review_id = page.get_attribute("#status", "data-review-id")
    labels = {r["query_sha256"]: r for r in review.confirmed_labels(served["index"]).to_pylist()}
    label = labels[hashlib.sha256(data).hexdigest()]
    assert (label["individual_id"], label["decision"], label["reviewer"]) == ("Magenta 1", "new", "tester")
    assert review_id in {r["review_id"] for r in review.read_reviews(served["index"]).to_pylist()}


def test_non_image_is_refused_on_the_page(page):
    upload(page, "notes.txt", b"field notes, not a photo", "text/plain")
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    assert page.is_hidden("#verdict")


def test_example_photo_query(page):
    page.evaluate("document.querySelector('#verdict').removeAttribute('data-verdict')")
    page.click("#examples button")
    page.wait_for_selector("#verdict[data-verdict]")
    assert page.locator("#candidates .candidate").count() == 5
    assert "archive label of the query" in page.inner_text("#verdict")


def test_page_stays_on_this_server(page, url):
    # runs last in this module: every request so far went to this server (or a local blob:)
    away = [r for r in page.requests if not r.startswith((url + "/", "blob:"))]
    assert page.requests and not away, away
    # the one expected complaint: the refused text upload (HTTP 415); no CSP or script errors
    assert [p for p in page.problems if "status of 415" not in p] == []


def test_screenshot_command(served, tmp_path):
    pytest.importorskip("playwright.sync_api")
    out = tmp_path / "serve.png"
    cmd = [sys.executable, str(REPO / "scripts" / "screenshot_serve.py"), str(out)]
    r = subprocess.run(
        [*cmd, "--index", served["index"], "--model", served["model"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from PIL import Image

    with Image.open(out) as img:
        assert img.width == 1280 and img.height >= 900
        assert len(set(img.convert("L").resize((64, 64)).getdata())) > 20  # not a blank page
