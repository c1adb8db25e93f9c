"""`reid serve`: queries, upload limits and refusals, no path traversal, decisions stored.

The app runs on a small index built by the real jobs (see tests/servedata.py: an untrained model,
a known photo that is an exact archive crop, a new animal no archive photo resembles).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import pyarrow.compute as pc
import pytest
from PIL import Image

from reid import review
from reid.errors import ReidError
from tests.support.servedata import files_under, known_photo, new_animal_photo, png

MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from jobs.serve import create_app

    app = create_app(served["index"], served["model"], max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    with TestClient(app, base_url="http://127.0.0.1") as c:  # a name the server answers to
        yield c


@pytest.mark.ray
def test_info_uses_the_calibrated_threshold_and_offers_examples(client, served):
    from reid.search import index_store

    info = client.get("/api/info").json()
    stored = index_store.open_index(served["index"])
    assert stored.threshold is not None
    assert info["threshold"] == pytest.approx(stored.threshold)
    assert info["threshold_source"] == "calibrated with the index"
    assert info["images"] == stored.ntotal and info["version"] == stored.version
    assert 1 <= len(info["examples"]) <= 6
    for ex in info["examples"]:
        r = client.get(ex["thumb"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size[0] > 16


@pytest.mark.ray
def test_known_photo_ranks_its_individual_first(client, served):
    image_id, individual, data = known_photo(served["archive"])
    r = client.post("/api/query", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    a = r.json()
    top = a["candidates"][0]
    assert (top["individual_id"], top["image_id"]) == (individual, image_id)
    assert top["score"] > 0.999 and top["rank"] == 1
    assert not a["is_new"] and a["best_score"] >= a["threshold"]
    assert a["sha256"] == hashlib.sha256(data).hexdigest()
    assert len({c["individual_id"] for c in a["candidates"]}) == len(a["candidates"]) == 5
    assert [c["score"] for c in a["candidates"]] == sorted(
        (c["score"] for c in a["candidates"]), reverse=True
    )
    assert all(set(t) >= {"embed", "search", "decode", "total"} for t in [a["timing_ms"]])


@pytest.mark.ray
def test_new_animal_is_likely_new(client):
    a = client.post("/api/query", content=new_animal_photo()).json()
    assert a["is_new"], a
    assert a["best_score"] < a["threshold"]


@pytest.mark.ray
def test_example_query_leaves_out_the_photo_and_its_burst(client, served):
    ex = client.get("/api/info").json()["examples"][0]
    a = client.post(f"/api/example/{ex['image_id']}").json()
    assert a["archive_label"] == ex["individual_id"] and a["image_id"] == ex["image_id"]
    shown = {im["image_id"] for c in a["candidates"] for im in c["images"]}
    assert ex["image_id"] not in shown
    assert client.post("/api/example/not-an-id").status_code == 404


@pytest.mark.ray
def test_upload_limits(client):
    # bytes: refused from the declared length, and while streaming when no length is declared
    r = client.post("/api/query", content=b"\xff" * (MAX_BYTES + 1))
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():
        for _ in range(30):
            yield b"\x00" * 10_000

    r = client.post("/api/query", content=chunks())
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # pixels: a small file of a big image is refused before its pixels are decoded
    r = client.post("/api/query", content=png(2000, 1000))
    assert r.status_code == 413 and "2000x1000" in r.json()["error"]
    assert client.post("/api/query", content=png(900, 900)).status_code == 200


@pytest.mark.ray
@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.4 not a photo", 415, "not an image"),
        (b"<script>alert(1)</script>", 415, "not an image"),
        (b"P6\n4 4\n255\n" + b"\x00" * 48, 415, "PPM images are not accepted"),
    ],
)
def test_non_images_are_refused_with_a_message(client, data, status, words):
    r = client.post("/api/query", content=data)
    assert r.status_code == status
    assert words in r.json()["error"]


@pytest.mark.ray
def test_truncated_photo_is_refused(client):
    data = new_animal_photo()
    r = client.post("/api/query", content=data[: len(data) // 2])
    assert r.status_code == 422 and "truncated" in r.json()["error"]


@pytest.mark.ray
@pytest.mark.parametrize(
    "path",
    [
        "/thumb/..%2F..%2Fetc%2Fpasswd",
        "/thumb/%2Fetc%2Fpasswd",
        "/thumb/../../etc/passwd",
        "/thumb/..%2F",
        "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/thumb/_manifest.json",
        "/static/..%2F..%2Fserve.py",
        "/static/../serve.py",
        "/static/index.html",
        "/jobs/static/app.js",
        "/api/example/..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_no_path_reaches_the_filesystem(client, path):
    r = client.request("POST" if path.startswith("/api/") else "GET", path)
    assert r.status_code in (404, 405), (path, r.status_code)
    assert b"root:" not in r.content and b"import" not in r.content


@pytest.mark.ray
def test_page_and_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>Re-identification review</title>" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/static/app.js", "/static/app.css"):
        assert client.get(path).status_code == 200
    assert "http" not in r.text.replace("http-equiv", "")  # no CDN: everything comes from this server


@pytest.mark.ray
def test_decisions_are_stored_next_to_the_index_and_uploads_are_not(client, served):
    before = files_under(served["index"])
    image_id, individual, data = known_photo(served["archive"])
    a = client.post("/api/query", content=data).json()
    second = a["candidates"][1]["individual_id"]
    ids = []
    for body in (
        {"decision": "same", "individual_id": individual, "reviewer": "ana"},
        {"decision": "different", "individual_id": second},
    ):
        r = client.post("/api/decision", json={"query_id": a["query_id"], **body})
        assert r.status_code == 200, r.text
        ids.append(r.json()["stored"]["review_id"])
    n = client.post("/api/query", content=new_animal_photo(7)).json()
    r = client.post(
        "/api/decision", json={"query_id": n["query_id"], "decision": "new", "individual_id": "Blue 1"}
    )
    assert r.status_code == 200 and r.json()["stored"]["individual_id"] == "Blue 1"
    ids.append(r.json()["stored"]["review_id"])

    # refused: not a candidate, unknown query, unknown decision, bad name
    bad = [
        ({"query_id": a["query_id"], "decision": "same", "individual_id": "someone-else"}, 400),
        ({"query_id": "0" * 64, "decision": "new"}, 404),
        ({"query_id": a["query_id"], "decision": "maybe", "individual_id": individual}, 422),
        ({"query_id": n["query_id"], "decision": "new", "individual_id": "../../etc"}, 400),
    ]
    for body, status in bad:
        assert client.post("/api/decision", json=body).status_code == status, body

    stored = review.read_reviews(served["index"]).to_pylist()
    mine = [s for s in stored if s["review_id"] in ids]
    assert [(s["decision"], s["individual_id"]) for s in mine] == [
        ("same", individual), ("different", second), ("new", "Blue 1"),
    ]  # fmt: skip
    assert mine[0]["candidate_image_id"] == image_id and mine[0]["reviewer"] == "ana"
    assert mine[0]["score"] > 0.999 and mine[0]["model_id"] and mine[0]["index_version"]
    labels = {r["query_sha256"]: r for r in review.confirmed_labels(served["index"]).to_pylist()}
    assert labels[a["sha256"]]["individual_id"] == individual  # "different" about another one keeps it
    assert labels[n["sha256"]]["individual_id"] == "Blue 1"
    assert client.get("/api/reviews?limit=2").json()["reviews"][0]["individual_id"] == "Blue 1"

    after = files_under(served["index"])
    added = set(after) - set(before)
    assert added and all(os.sep + "_reviews" + os.sep in p for p in added)  # only decisions were written
    assert {p: after[p] for p in before} == before  # and nothing of the index changed


@pytest.mark.ray
def test_a_model_the_index_was_not_built_with_is_refused(served, tmp_path):
    from jobs.serve import create_app
    from reid.model.network import create_model
    from reid.model.package import save_package
    from reid.model.spec import ModelSpec

    spec = ModelSpec(backbone="resnet10t", embedding_dim=16, input_size=64)
    save_package(create_model(spec, load_pretrained=False), spec, str(tmp_path / "other"))
    with pytest.raises(ReidError, match="dim 16"):
        create_app(served["index"], str(tmp_path / "other"))


def test_cli_has_serve():
    import typer
    from typer.testing import CliRunner

    from jobs import serve
    from jobs.cli import JOB_MODULES

    assert "jobs.serve" in JOB_MODULES
    app = typer.Typer()
    app.callback()(lambda: None)
    serve.register(app)
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0
    for opt in (
        "--index",
        "--model",
        "--archive",
        "--host",
        "--port",
        "--k",
        "--max-upload-mb",
        "--allowed-host",
        "--max-megapixels",
        "--decode-slots",
    ):
        assert opt in r.output


# --------------------------------------------------------------------------------------------
# reid.review on its own


def test_review_log_and_confirmed_labels(tmp_path):
    idx = str(tmp_path / "index")
    q1, q2, q3 = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))
    review.record(idx, "same", q1, "lion-a", query_image_id="img1")
    review.record(idx, "different", q1, "lion-b")  # about another individual: label kept
    review.record(idx, "same", q2, "lion-c")
    review.record(idx, "different", q2, "lion-c")  # retracts the earlier "same"
    new = review.record(idx, "new", q3)
    assert new["individual_id"] == review.new_individual_name(q3)
    labels = review.confirmed_labels(idx)
    assert labels.schema == review.LABELS_SCHEMA
    assert sorted(zip(labels["query_sha256"].to_pylist(), labels["individual_id"].to_pylist())) == sorted(
        [(q1, "lion-a"), (q3, new["individual_id"])]
    )
    assert labels.filter(pc.equal(labels["query_sha256"], q1))["image_id"].to_pylist() == ["img1"]
    pairs = review.rejected_pairs(idx)
    assert sorted(pairs["individual_id"].to_pylist()) == ["lion-b", "lion-c"]
    assert review.read_reviews(idx).num_rows == 5
    assert review.confirmed_labels(str(tmp_path / "none")).num_rows == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("maybe", "a" * 64, "x"), "expected one of"),
        (("same", "a" * 64, None), "names the candidate"),
        (("same", "not-a-hash", "x"), "SHA-256"),
        (("new", "a" * 64, "../x"), "letters, digits"),
    ],
)
def test_review_refuses_bad_records(tmp_path, args, words):
    with pytest.raises(ReidError, match=words):
        review.record(str(tmp_path), *args)


# --------------------------------------------------------------------------------------------
# Host/Origin guard, decode gate and options on their own (no server; the real one is exercised
# in tests/test_integrity_serve.py)


def test_host_guard_answers_only_to_served_names():
    from jobs.serve import HostGuard

    g = HostGuard("10.0.0.5", ["reviews.example.org", "lab:9000"])
    assert g.check_host("testserver") is not None
    g.bind("10.0.0.5", 8123)
    ok = [
        "127.0.0.1:8123",
        "LOCALHOST:8123",
        "[::1]:8123",
        "10.0.0.5:8123",
        "reviews.example.org",
        "lab:9000",
    ]
    bad = [
        "127.0.0.1:8124",
        "evil.com:8123",
        "lab:9001",
        "",
        "127.0.0.1:abc",
        "[::1",
        "a@127.0.0.1:8123",
        None,
    ]
    assert [h for h in ok if g.check_host(h) is not None] == []
    assert [h for h in bad if g.check_host(h) is None] == []
    assert "--allowed-host" in g.check_host("evil.com:8123")


@pytest.mark.parametrize(
    ("origin", "fetch_site", "allowed"),
    [
        ("http://127.0.0.1:8123", "same-origin", True),
        ("http://localhost:8123", None, True),
        (None, None, True),  # curl, scripts: no browser, no ambient credentials to abuse
        ("http://evil.example", "cross-site", False),
        ("http://evil.example", None, False),
        (None, "cross-site", False),
        ("null", None, False),
        ("http://127.0.0.1:8124", "same-site", False),
        ("http://127.0.0.1:8123", "same-site", False),
        ("file://", None, False),
    ],
)
def test_host_guard_refuses_cross_site_state_changes(origin, fetch_site, allowed):
    from jobs.serve import HostGuard

    why = HostGuard("127.0.0.1", port=8123).check_origin(origin, fetch_site)
    assert (why is None) == allowed, why


def test_decode_gate_bounds_slots_and_pixels_first_come_first_served():
    from reid.serving.uploads import Busy, DecodeGate

    gate = DecodeGate(slots=2, pixels=100, wait_s=0.2)
    with gate.hold(60), gate.hold(30):
        with pytest.raises(Busy, match="at most 2 at once"):  # no slot left
            with gate.hold(1):
                pass
    with gate.hold(60):
        with pytest.raises(Busy, match="try again"):  # a slot, but not the pixels
            with gate.hold(50):
                pass
        order: list[str] = []

        def later(name: str, pixels: int) -> None:
            with gate.hold(pixels, wait_s=10):
                order.append(name)

        big = threading.Thread(target=later, args=("big", 80))
        big.start()
        time.sleep(0.1)
        small = threading.Thread(target=later, args=("small", 10))  # would fit now, but queues behind
        small.start()
        time.sleep(0.1)
        assert order == []
    big.join(5), small.join(5)
    assert order == ["big", "small"]
    with gate.hold(10**9) as weight:  # larger than the budget: runs alone
        assert weight == 100
    s = gate.stats()
    assert s["in_flight"] == 0 and s["peak"] == 2 and s["peak_pixels"] == 100 and s["refused"] == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-megapixels", "nan"], "--max-megapixels nan: not a finite number"),
        (["--threshold", "inf"], "--threshold inf: not a finite number"),
        (["--allowed-host", "evil/path"], "allowed_hosts: Value error, 'evil/path' is not a host name"),
        (["--allowed-host", "lab:99999"], "the port must be a number from 1 to 65535"),
        (["--max-megapixels", "500"], "max_pixels"),
        (["--decode-slots", "0"], "decode_slots"),
        (["--port", "70000"], "port"),
    ],
)
def test_bad_serve_options_are_one_line_errors(args, words, tmp_path):
    import typer
    from typer.testing import CliRunner

    from jobs import serve
    from reid.errors import ConfigError

    app = typer.Typer()
    app.callback()(lambda: None)
    serve.register(app)
    r = CliRunner().invoke(app, ["serve", "--index", str(tmp_path), "--model", str(tmp_path), *args])
    assert isinstance(r.exception, ConfigError), r.output
    assert words in str(r.exception) and "\n" not in str(r.exception)


# --------------------------------------------------------------------------------------------
# The review queue API (a hand-made match output; decisions under a folder of their own)


@pytest.mark.ray
def test_review_queue_api(client, served, tmp_path):
    from fastapi.testclient import TestClient

    from jobs.serve import create_app
    from tests.support.servedata import hand_made_matches

    assert client.get("/api/queue").status_code == 404  # served without --matches
    assert "--matches" in client.get("/api/queue").json()["error"]
    reviews = str(tmp_path / "reviews")
    app = create_app(served["index"], served["model"], matches=hand_made_matches(tmp_path), reviews=reviews,
                     id_format="T-{year}-{n:03d}")  # fmt: skip
    with TestClient(app, base_url="http://127.0.0.1") as c:
        page = c.get("/api/queue?limit=2").json()
        assert page["total"] == page["open"] == 5 and len(page["items"]) == 2 and page["decided"] == 0
        assert page["items"][0]["kind"] == "new" and page["items"][0]["query"]["survey"] == "2023"
        assert {it["query"]["image_id"] for it in c.get("/api/queue?survey=2022").json()["items"]} == {
            "u1",
            "u2",
        }
        assert c.get("/api/queue?date_from=2023-01-01&kind=new").json()["total"] == 1
        new = c.post(
            "/api/review", json={"item_id": page["items"][0]["item_id"], "answer": "new", "reviewer": "ana"}
        )
        assert new.status_code == 200 and new.json()["stored"]["minted"] == "T-2023-001"
        u2 = "uncertain:u2"
        assert (
            c.post("/api/review", json={"item_id": u2, "answer": "same", "reviewer": "ana"}).status_code
            == 200
        )
        bo = c.post("/api/review", json={"item_id": u2, "answer": "different", "reviewer": "bo"}).json()[
            "stored"
        ]
        after = c.get("/api/queue").json()
        assert after["items"][0]["kind"] == "conflict" and after["reviews"]["conflicts"] == 1
        assert (
            c.post("/api/review/undo", json={"review_id": bo["review_id"], "reviewer": "bo"}).status_code
            == 200
        )
        settled = c.get("/api/queue").json()
        assert settled["reviews"]["conflicts"] == 0 and settled["decided"] == 2
        names = c.get("/api/individuals").json()["individuals"]
        assert names == ["A", "B", "T-2023-001"]  # known ones and the id minted above; no proposals
        u1 = c.post("/api/review", json={"item_id": "uncertain:u1", "answer": "same", "candidate": "B"})
        assert u1.json()["stored"]["individual_id"] == "B"  # named through the search box, not offered
        bad = [
            ({"item_id": u2, "answer": "maybe"}, 422),
            ({"item_id": "new:none", "answer": "new"}, 400),
            ({"item_id": u2, "answer": "same", "candidate": "Z"}, 400),
        ]
        for body, status in bad:
            assert c.post("/api/review", json=body).status_code == status, body
        cross = c.post(
            "/api/review", json={"item_id": u2, "answer": "new"}, headers={"Origin": "http://evil.example"}
        )
        assert cross.status_code == 403
    assert len(review.read_reviews(reviews)) == 5  # new, same, different, undo, same: nothing else stored


@pytest.mark.ray
def test_review_view_draws_verified_keypoint_matches(client, served):
    from reid import archive

    rows = list(archive.iter_rows(served["archive"], columns=["image_id", "individual_id"]))
    a = next(r for r in rows if r["individual_id"])
    other = next(r for r in rows if r["individual_id"] and r["individual_id"] != a["individual_id"])
    itself = client.get(f"/matches/{a['image_id']}/{a['image_id']}.png")
    assert itself.status_code == 200 and itself.headers["content-type"] == "image/png"
    drawn = Image.open(io.BytesIO(itself.content))
    assert drawn.width > drawn.height  # both crops side by side
    stranger = client.get(f"/matches/{a['image_id']}/{other['image_id']}.png")
    assert stranger.status_code == 200
    # a photo against itself verifies far more keypoints than against another animal
    assert int(itself.headers["x-inliers"]) > max(8, int(stranger.headers["x-inliers"]))
    assert client.get(f"/matches/{a['image_id']}/not-an-id.png").status_code == 404
