"""`reid serve --index INDEX --model MODEL`: an interactive review page on 127.0.0.1.

Drop a photo (or pick a built-in example from the archive) and see the top-k candidate
individuals with thumbnails and scores, or "likely a new individual" when the best labelled score
is under the index's calibrated threshold. A reviewer marks a candidate "same" or "different",
or the photo "new"; decisions go to ``INDEX/_reviews/`` (:mod:`reid.review`) for the next build.

One process: FastAPI + uvicorn, the model and every index shard loaded once. That is all one
reviewer (or a few) needs for interactive latency; Ray Serve would add a cluster for nothing
here, and stays a later step should many users share one deployment. This module is the web
layer (config, Host/Origin checks, routes, socket, CLI); the matcher, the archive lookup, the
upload checks and the decode budget are domain code in :mod:`reid.serving`.

Safety: uploads are read into memory (never written to disk), capped in bytes before and while
reading and in pixels before decoding, and refused with a message when they are not images.
Thumbnails are looked up by ``image_id`` in the index's id table; nothing from a request is ever
used as a filesystem path, and the page's own files come from a fixed table. Requests must name
this server in their Host header (DNS rebinding), requests that change state must not come from
another site (Origin, Sec-Fetch-Site), and upload decodes share a bounded pixel budget.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import typer
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError, field_validator

from reid import imageio, review
from reid.errors import ConfigError, ReidError
from reid.serving.matcher import Matcher, RecentQueries
from reid.serving.uploads import Busy, DecodeGate, UploadError, check_upload

JOB = "serve"
STATIC = Path(__file__).resolve().parent / "static"
PAGES = {  # URL path -> (file in jobs/static, media type): the only files the page serves
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
MB = 1024 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}  # every other method changes state: Origin is checked
SAME_ORIGIN_FETCH = {"same-origin", "none"}  # Sec-Fetch-Site values a state change may carry
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = {"0.0.0.0", "::", ""}


class ServeConfig(BaseModel):
    index: str = Field(description="index path or s3:// URI (the version in service)")
    model: str = Field(description="the model package the index was built with")
    archive: list[str] | None = Field(None, description="archives for thumbnails (default: from lineage)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    k: int = Field(5, ge=1, le=50, description="candidate individuals shown")
    threshold: float | None = Field(
        None, allow_inf_nan=False, description="override the index's calibrated threshold"
    )
    max_upload_bytes: int = Field(10 * MB, ge=1024)
    max_pixels: int = Field(
        25_000_000, ge=1024, le=imageio.MAX_PIXELS, description="largest upload, in pixels (archives: more)"
    )
    decode_slots: int = Field(2, ge=1, le=64, description="upload decodes at once, at most")
    decode_pixels: int = Field(50_000_000, ge=1024, description="pixels being decoded at once, at most")
    decode_wait_s: float = Field(5.0, ge=0, le=600, description="wait for a decode slot, then answer 503")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names served besides loopback and --host (NAME or NAME:PORT)"
    )
    examples: int = Field(6, ge=0, le=48, description="built-in example photos from the archive")
    thumb_size: int = Field(192, ge=32, le=1024)
    seed: int = 0

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_hosts(cls, names: list[str]) -> list[str]:
        for name in names:
            parse_authority(name)  # ValueError with the reason
        return names


# --------------------------------------------------------------------------------------------
# Who may talk to the page: Host (DNS rebinding) and Origin (cross-site requests)


def parse_authority(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]:port`` -> (lower-case name, port or ``default_port``)."""
    value = value.strip()
    if not value or len(value) > 255 or any(c in value for c in "/@?#\\ \t"):
        raise ValueError(f"{value[:80]!r} is not a host name (NAME or NAME:PORT)")
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not a host name ([IPv6] or [IPv6]:PORT)")
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    else:
        name, port_text = value, None  # a name, or a bare IPv6 address
    if not name:
        raise ValueError(f"{value!r} has no host name")
    if port_text is None:
        return name.lower(), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return name.lower(), int(port_text)


def _authority(name: str, port: int | None) -> str:
    host = f"[{name}]" if ":" in name else name
    return host if port is None else f"{host}:{port}"


class HostGuard:
    """The names this server answers to, and whether a state change comes from its own page.

    Loopback names and the bound host are served at the bound port (any port until it is known,
    as under a test client); ``--allowed-host NAME`` is accepted at any port, ``NAME:PORT`` at that
    port (a reverse proxy's public name). Anything else is a DNS-rebinding attempt or a typo.
    """

    def __init__(self, host: str = "127.0.0.1", allowed: list[str] | None = None, port: int | None = None):
        self.names = set(LOOPBACK_NAMES)
        self.extra = {parse_authority(a) for a in allowed or []}
        self.port = port
        self.bind(host, port)

    def bind(self, host: str, port: int | None) -> None:
        """The address the server listens on (call again once a ``--port 0`` is bound)."""
        name = host.strip("[]").lower()
        if name not in ANY_ADDRESS:
            self.names.add(name)
        self.port = port

    def allows(self, name: str, port: int | None) -> bool:
        if (name, None) in self.extra or (name, port) in self.extra:
            return True
        return name in self.names and (self.port is None or port == self.port)

    def served(self) -> str:
        names = [_authority(n, self.port) for n in sorted(self.names)]
        return ", ".join(names + [_authority(n, p) for n, p in sorted(self.extra, key=str)])

    def check_host(self, header: str | None) -> str | None:
        """None when the Host header names this server, else why not (for an HTTP 400)."""
        try:
            ok = header is not None and self.allows(*parse_authority(header, default_port=80))
        except ValueError:
            ok = False
        if ok:
            return None
        return (
            f"this server answers only as {self.served()}, not as Host {(header or '')[:100]!r}: open "
            "the page by one of those names, or restart reid serve with --allowed-host NAME"
        )

    def check_origin(self, origin: str | None, fetch_site: str | None) -> str | None:
        """None when a state-changing request comes from this server's own page (or from a
        non-browser client, which sends neither header), else why not (for an HTTP 403)."""
        refused = (
            "cross-site request refused: decisions and queries are accepted only from this server's page"
        )
        if fetch_site is not None and fetch_site.strip().lower() not in SAME_ORIGIN_FETCH:
            return f"{refused} (Sec-Fetch-Site: {fetch_site[:40]!r})"
        if origin is None:
            return None
        try:
            parts = urlsplit(origin.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(origin)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            ok = self.allows(parts.hostname.lower(), port)
        except ValueError:
            ok = False
        return None if ok else f"{refused} (Origin: {origin[:100]!r})"


# --------------------------------------------------------------------------------------------
# The app


class Decision(BaseModel):
    query_id: str = Field(max_length=300)
    decision: Literal["same", "different", "new"]
    individual_id: str | None = Field(None, max_length=64)
    reviewer: str | None = Field(None, max_length=64)
    note: str | None = Field(None, max_length=500)


def create_app(
    index: str,
    model: str,
    archive: list[str] | str | None = None,
    **options,
):
    """The FastAPI app for one index and its model (loaded now, once)."""
    if isinstance(archive, str):
        archive = [archive]
    cfg = ServeConfig(index=index, model=model, archive=archive, **options)
    hosts = HostGuard(cfg.host, cfg.allowed_hosts)  # the port is set once the server is bound
    gate = DecodeGate(cfg.decode_slots, cfg.decode_pixels, cfg.decode_wait_s)
    matcher = Matcher(cfg)
    recent = RecentQueries()
    thumbs: collections.OrderedDict[str, bytes] = collections.OrderedDict()
    thumbs_lock = threading.Lock()
    app = FastAPI(title="reid serve", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.matcher = matcher
    app.state.config = cfg
    app.state.hosts = hosts
    app.state.decode_gate = gate

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        """Only this server's names (DNS rebinding), only its own page for state changes."""
        why = hosts.check_host(request.headers.get("host"))
        if why is not None:
            response: Response = error(400, why)
        elif request.method not in SAFE_METHODS and (
            why := hosts.check_origin(request.headers.get("origin"), request.headers.get("sec-fetch-site"))
        ):
            response = error(403, why)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def page(path: str):
        name, media = PAGES[path]

        async def serve_page() -> Response:
            return Response(
                (STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"}
            )

        return serve_page

    for path in PAGES:
        app.add_api_route(path, page(path), methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/info")
    def info() -> dict:
        examples = [{**e, "thumb": f"/thumb/{e['image_id']}"} for e in matcher.examples]
        limits = {
            k: getattr(cfg, k) for k in ("max_upload_bytes", "max_pixels", "decode_slots", "decode_pixels")
        }
        return {**matcher.describe(), **limits, "decodes": gate.stats(), "examples": examples}

    def answer(query_id: str, sha: str, image_id: str | None, result: dict, **extra) -> dict:
        recent.put(query_id, {"sha256": sha, "image_id": image_id, **result})
        for c in result["candidates"]:
            c["thumb"] = f"/thumb/{c['image_id']}"
            for im in c["images"]:
                im["thumb"] = f"/thumb/{im['image_id']}"
        return {"query_id": query_id, "sha256": sha, "image_id": image_id, **result, **extra}

    @app.post("/api/query")
    async def query(request: Request):
        """The request body is the photo's bytes (any image type; no multipart needed)."""
        t0 = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes:
            return error(
                413, f"upload too large: {int(declared):,} bytes, the limit is {cfg.max_upload_bytes:,}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_upload_bytes:
                return error(413, f"upload too large: over the {cfg.max_upload_bytes:,}-byte limit")
            chunks.append(chunk)
        data = b"".join(chunks)
        try:
            fmt, w, h = check_upload(data, cfg.max_pixels)
        except UploadError as e:
            return error(e.status, e.message)
        from reid.preprocess import decode_for_model

        def decode() -> tuple[np.ndarray | None, str | None]:
            with gate.hold(w * h):
                return decode_for_model(data, None, matcher.spec.input_size)

        t1 = time.perf_counter()
        try:
            pixels, reason = await run_in_threadpool(decode)
        except Busy as e:
            return error(503, str(e), headers={"Retry-After": "5"})
        if pixels is None:
            return error(422, f"could not decode this {fmt} image ({reason}): upload another photo")
        t2 = time.perf_counter()
        result = await run_in_threadpool(matcher.query, pixels)
        sha = hashlib.sha256(data).hexdigest()
        result["timing_ms"].update(
            read=round(1e3 * (t1 - t0), 2), decode=round(1e3 * (t2 - t1), 2),
            total=round(1e3 * (time.perf_counter() - t0), 2),
        )  # fmt: skip
        return answer(sha, sha, None, result, width=w, height=h, format=fmt)

    @app.post("/api/example/{image_id}")
    async def example(image_id: str):
        """Query with an archive photo; the photo itself and its burst are excluded."""
        t0 = time.perf_counter()
        if image_id not in matcher.row_of or image_id not in matcher.archive:
            return error(404, "no such archive image")
        pixels, reason = await run_in_threadpool(matcher.archive_pixels, image_id)
        if pixels is None:
            return error(422, f"archive image {image_id} does not decode: {reason}")
        meta = matcher.query_meta(image_id)
        result = await run_in_threadpool(matcher.query, pixels, meta)
        result["timing_ms"]["total"] = round(1e3 * (time.perf_counter() - t0), 2)
        row = matcher.archive.get(image_id)
        sha = hashlib.sha256(row["image"]).hexdigest()
        truth = meta.column("individual_id")[0].as_py()
        return answer(f"image:{image_id}", sha, image_id, result, archive_label=truth)

    @app.get("/thumb/{image_id}")
    async def thumb(image_id: str):
        if image_id not in matcher.row_of or image_id not in matcher.archive:
            return error(404, "no such archive image")
        with thumbs_lock:
            data = thumbs.get(image_id)
        if data is None:
            try:
                data = await run_in_threadpool(matcher.thumbnail, image_id)
            except ReidError as e:
                return error(422, str(e))
            with thumbs_lock:
                thumbs[image_id] = data
                while len(thumbs) > 4096:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/decision")
    def decision(d: Decision):
        q = recent.get(d.query_id)
        if q is None:
            return error(404, "unknown or expired query: run the query again, then decide")
        cand = None
        if d.decision in ("same", "different"):
            cand = next((c for c in q["candidates"] if c["individual_id"] == d.individual_id), None)
            if cand is None:
                return error(400, f"{d.individual_id!r} is not a candidate of this query")
        try:
            rec = review.record(
                cfg.index, d.decision, q["sha256"],
                individual_id=d.individual_id,
                query_image_id=q["image_id"],
                candidate_image_id=cand["image_id"] if cand else None,
                score=cand["score"] if cand else q["best_score"],
                threshold=q["threshold"], model_id=matcher.spec.model_id,
                index_version=matcher.info.version, reviewer=d.reviewer, note=d.note,
            )  # fmt: skip
        except ReidError as e:
            return error(400, str(e))
        return {"stored": rec}

    @app.get("/api/reviews")
    def reviews(limit: int = 20) -> dict:
        t = review.read_reviews(cfg.index)
        rows = t.slice(max(0, len(t) - max(0, min(limit, 500)))).to_pylist()
        for r in rows:
            r["decided_at"] = r["decided_at"].isoformat()
        return {"count": len(t), "reviews": rows[::-1]}

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 = any free port), or one line saying why not.

    Bound before anything is printed or loaded, so a port in use is an error the user can act on
    (not "Open ..." followed by uvicorn's exit 3), and ``--port 0`` can print the real port.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(
            f"--host {host}: not an address of this machine ({e}); pass --host 127.0.0.1"
        ) from None
    # a name such as localhost: IPv4 first, as uvicorn binds it
    family, kind, proto, _, addr = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)  # listening claims the port (two bound, unlistened sockets may share it)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use; pass --port with a free port or --port 0"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass --host 127.0.0.1, or a --port above 1023"
        ) from None
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int) -> str:
    """The address to open in a browser for a server bound to ``host:port``."""
    name = host.strip("[]")
    if name in ANY_ADDRESS:
        name = "127.0.0.1" if name == "0.0.0.0" else "::1"
    return f"http://{_authority(name, port)}/"


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its URL (port 0 = any free port)."""
    import uvicorn

    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    guard = getattr(app.state, "hosts", None)
    if guard is not None:
        guard.bind(host, bound)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="reid-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ReidError(f"the server did not start on {host}:{bound}")
            time.sleep(0.05)
        yield page_url(host, bound).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --------------------------------------------------------------------------------------------
# CLI


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        index: str = typer.Option(..., help="index path or s3:// URI"),
        model: str = typer.Option(..., help="the model package the index was built with"),
        archive_uri: list[str] = typer.Option(None, "--archive", help="archive(s) for thumbnails "
                                              "(default: the ones the index's embeddings came from)"),
        host: str = typer.Option("127.0.0.1", help="address to listen on (loopback by default)"),
        port: int = typer.Option(8000, help="port to listen on (0: any free port, printed)"),
        allowed_host: list[str] = typer.Option(None, "--allowed-host", help="another name the page is "
                                               "opened by (NAME or NAME:PORT; repeat for more)"),
        k: int = typer.Option(5, help="candidate individuals shown per query"),
        threshold: float = typer.Option(None, help="override the index's calibrated new-individual threshold"),
        max_upload_mb: float = typer.Option(10.0, help="largest upload accepted, in MB"),
        max_megapixels: float = typer.Option(25.0, help="largest upload accepted, in megapixels"),
        decode_slots: int = typer.Option(2, help="uploads decoded at once, at most"),
        decode_megapixels: float = typer.Option(50.0, help="megapixels being decoded at once, at most"),
        decode_wait: float = typer.Option(5.0, help="seconds an upload waits for a decode slot (then 503)"),
        examples: int = typer.Option(6, help="example photos picked from the archive"),
    ):  # fmt: skip
        """Serve the interactive review page: drop a photo, see its candidate individuals."""
        import uvicorn

        numbers = {"--threshold": threshold, "--max-upload-mb": max_upload_mb, "--max-megapixels": max_megapixels,
                   "--decode-megapixels": decode_megapixels, "--decode-wait": decode_wait}  # fmt: skip
        for name, value in numbers.items():
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{name} {value}: not a finite number; pass a number such as the default")
        try:
            options = dict(host=host, port=port, k=k, threshold=threshold, examples=examples,
                           allowed_hosts=list(allowed_host or []),
                           max_upload_bytes=int(max_upload_mb * MB), max_pixels=int(max_megapixels * 1e6),
                           decode_slots=decode_slots, decode_pixels=int(decode_megapixels * 1e6),
                           decode_wait_s=decode_wait)  # fmt: skip
            ServeConfig(index=index, model=model, **options)
        except ValidationError as e:
            why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ConfigError(f"bad serve options: {why}") from None
        sock = bind_socket(host, port)  # before loading anything: a port in use is one line, exit 2
        try:
            if not _is_loopback(host):
                typer.secho(
                    f"warning: listening on {host}: anyone who can reach it can query the archive and record "
                    "decisions (there is no login); pass --allowed-host NAME for each name the page is "
                    "opened by", fg=typer.colors.YELLOW, err=True,
                )  # fmt: skip
            web = create_app(index, model, archive_uri or None, **options)
            bound = sock.getsockname()[1]
            web.state.hosts.bind(host, bound)
            m = web.state.matcher
            typer.echo(
                f"index {index} (version {m.info.version}, {m.info.ntotal} images, {len(m.n_images)} "
                f"individuals), threshold {m.threshold}"
            )
            typer.echo(f"Open {page_url(host, bound)} in a browser (Ctrl-C stops)")
            uvicorn.Server(uvicorn.Config(web, log_level="warning")).run(sockets=[sock])
        finally:
            sock.close()
