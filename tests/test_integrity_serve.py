"""Issue 14, item 10: the review page against hostile requests and heavy uploads, for real.

Every test talks HTTP to a real uvicorn on a free loopback port (or runs `reid serve` itself as
a process), serving the small index the real jobs build (tests/servedata.py). Requests are sent
with http.client so that the Host, Origin and Sec-Fetch-Site headers are exactly what an attacker
would send: a DNS-rebinding page (another name for 127.0.0.1) or a page on another site.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.servedata import known_photo, new_animal_photo, png, review_files

REPO = Path(__file__).resolve().parents[1]
UPLOAD_PIXELS = 25_000_000  # the default upload cap; archives allow imageio.MAX_PIXELS (100 MP)
SLOTS = 2
EVIL = "http://evil.example"

pytestmark = pytest.mark.ray  # the served index is built by the real jobs


@pytest.fixture(scope="module")
def server(served):
    """(app, base URL, port) of a real uvicorn serving the test index with the default caps."""
    from jobs.serve import create_app, running

    app = create_app(served["index"], served["model"], decode_slots=SLOTS, decode_wait_s=120)
    with running(app) as url:
        yield app, url, urlsplit(url).port


def call(
    port: int, method: str, path: str, body: bytes | dict | None = None, **headers: str
) -> tuple[int, dict, dict]:
    """One request to 127.0.0.1:``port`` with exactly these headers -> (status, JSON, lower-cased headers)."""
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    headers.setdefault("Host", f"127.0.0.1:{port}")
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        is_json = r.getheader("content-type", "").startswith("application/json")
        return r.status, json.loads(data) if is_json else {}, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def same_origin(port: int) -> dict[str, str]:
    """The headers Chromium sends with a request from the page itself."""
    return {"Origin": f"http://127.0.0.1:{port}", "Sec_Fetch_Site": "same-origin"}


def test_forged_host_is_refused_and_nothing_is_stored(server, served):
    _, _, port = server
    status, a, _ = call(port, "POST", "/api/query", new_animal_photo(21))
    assert status == 200, a
    decision = {"query_id": a["query_id"], "decision": "new", "individual_id": "Rebound 1"}
    before = review_files(served["index"])

    # DNS rebinding: evil.example resolves to 127.0.0.1, so the browser sends Host: evil.example
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
        for method, path, body in (
            ("POST", "/api/decision", decision),
            ("POST", "/api/query", new_animal_photo(22)),
            ("GET", "/api/reviews", None),
            ("GET", "/", None),
        ):
            status, err, _ = call(port, method, path, body, Host=host, Origin=f"http://{host}")
            assert status == 400, (host, path, status)
            assert "answers only as" in err["error"] and "--allowed-host" in err["error"]
    status, _, _ = call(port, "GET", "/api/info", Host=f"127.0.0.1:{port + 1}")  # right name, wrong port
    assert status == 400
    assert review_files(served["index"]) == before  # nothing stored

    # the names the server is served by, at its port: answered
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert call(port, "GET", "/api/info", Host=host)[0] == 200, host
    status, stored, _ = call(port, "POST", "/api/decision", decision, **same_origin(port))
    assert status == 200 and stored["stored"]["individual_id"] == "Rebound 1"
    assert len(review_files(served["index"])) == len(before) + 1


def test_cross_site_origin_is_refused_and_nothing_is_stored(server, served):
    _, _, port = server
    _, individual, data = known_photo(served["archive"])
    status, a, _ = call(port, "POST", "/api/query", data, **same_origin(port))
    assert status == 200
    decision = {"query_id": a["query_id"], "decision": "same", "individual_id": individual}
    example = call(port, "GET", "/api/info")[1]["examples"][0]["image_id"]
    before = review_files(served["index"])

    attacks = [  # (headers a page on another site makes the browser send)
        {"Origin": EVIL, "Sec_Fetch_Site": "cross-site"},
        {"Origin": EVIL},  # a browser without Fetch Metadata
        {"Origin": "null"},  # a sandboxed iframe or a data: page
        {"Sec_Fetch_Site": "cross-site"},
        {"Origin": f"http://localhost:{port + 1}", "Sec_Fetch_Site": "same-site"},  # another local app
    ]
    stranger = new_animal_photo(23)
    for headers in attacks:
        for path, body in (
            ("/api/decision", decision),
            ("/api/query", stranger),
            (f"/api/example/{example}", None),
        ):
            status, err, _ = call(port, "POST", path, body, **headers)
            assert status == 403, (headers, path, status)
            assert err["error"].startswith("cross-site request refused"), err
    assert review_files(served["index"]) == before  # nothing stored
    # the cross-site query was not even answered: a decision on it is an unknown query
    import hashlib

    sha = hashlib.sha256(stranger).hexdigest()
    status, _, _ = call(
        port, "POST", "/api/decision", {"query_id": sha, "decision": "new"}, **same_origin(port)
    )
    assert status == 404

    # the page itself (and a script such as curl, which sends no Origin) may decide
    assert call(port, "POST", "/api/decision", decision, **same_origin(port))[0] == 200
    assert call(port, "POST", "/api/decision", decision)[0] == 200
    assert len(review_files(served["index"])) == len(before) + 2


def test_concurrent_large_uploads_are_bounded(server):
    app, _, port = server
    gate = app.state.decode_gate
    big = png(5000, 5000)  # 25 megapixels (the upload cap) in a ~80 KB file: ~100 MB to decode
    n, start = 6, threading.Barrier(6)
    done0, waited0 = gate.decoded, gate.waited
    results: list[int] = []

    def upload() -> None:
        start.wait()
        results.append(call(port, "POST", "/api/query", big, **same_origin(port))[0])

    threads = [threading.Thread(target=upload) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == [200] * n  # all answered, none lost: the wait (120 s here) was long enough
    s = call(port, "GET", "/api/info")[1]["decodes"]
    assert s["decoded"] - done0 == n and s["in_flight"] == 0
    assert s["peak"] == SLOTS  # they did run concurrently, and never more than the bound
    assert s["peak_pixels"] <= s["pixels"] == 50_000_000
    assert s["waited"] - waited0 >= n - SLOTS


def test_saturated_decoder_answers_503(server):
    app, _, port = server
    gate = app.state.decode_gate
    wait, gate.wait_s = gate.wait_s, 0.5
    try:
        with gate.hold(gate.pixels):  # the whole budget taken, as by a slow 50-megapixel decode
            t0 = time.monotonic()
            status, err, headers = call(port, "POST", "/api/query", png(3000, 3000), **same_origin(port))
            took = time.monotonic() - t0
        assert status == 503 and headers["retry-after"] == "5"
        assert err["error"].startswith("busy: 1 photo(s) of 50.0 megapixels are being decoded")
        assert "try again in a few seconds" in err["error"]
        assert 0.5 <= took < 30
        assert call(port, "POST", "/api/query", png(3000, 3000), **same_origin(port))[0] == 200
    finally:
        gate.wait_s = wait


def test_upload_pixel_cap_is_lower_than_the_archive_cap(server):
    from reid.images import imageio

    app, _, port = server
    assert app.state.config.max_pixels == UPLOAD_PIXELS < imageio.MAX_PIXELS
    decoded = app.state.decode_gate.decoded
    status, err, _ = call(port, "POST", "/api/query", png(8000, 5000), **same_origin(port))  # 40 MP
    assert status == 413
    assert err["error"] == (
        "image too large: 8000x5000 = 40,000,000 pixels, the limit is 25,000,000; downscale it"
    )
    assert app.state.decode_gate.decoded == decoded  # refused from the header: never decoded


def _serve(served: dict, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--index", served["index"], "--model", served["model"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*cmd, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_port_0_prints_the_real_port(served):
    proc = _serve(served, "--port", "0", "--allowed-host", "reviews.lab")
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Open "):
                break
        assert lines and lines[-1].startswith("Open "), (lines, proc.poll())
        m = re.fullmatch(r"Open http://127\.0\.0\.1:(\d+)/ in a browser \(Ctrl-C stops\)\n", lines[-1])
        assert m, lines[-1]
        port = int(m.group(1))
        assert port > 0
        status, info, _ = call(port, "GET", "/api/info")
        assert status == 200 and info["images"] > 0
        assert call(port, "GET", "/api/info", Host="reviews.lab")[0] == 200  # --allowed-host
        assert call(port, "GET", "/api/info", Host=f"evil.example:{port}")[0] == 400
    finally:
        _stop(proc)
    out, err = proc.communicate(timeout=30)
    assert "Traceback" not in out + err


def test_port_in_use_exits_2_with_one_line(served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _serve(served, "--port", str(port))
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            _stop(proc)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use; pass --port with a free port or --port 0"
    ]
    assert "Open" not in out and "Traceback" not in out + err
