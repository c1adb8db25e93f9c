"""`reid serve --index INDEX --model MODEL [--matches MATCHES]`: the review page on 127.0.0.1.

``/``: drop a photo (or pick an archive example) and see its top-k candidate individuals, or
"likely a new individual" under the index's calibrated threshold. ``/review`` (with
``--matches``): page through the decisions a ``reid match`` output needs from a person. Decisions
go to ``REVIEWS/_reviews/`` (``--reviews``, the index by default), which ``reid index/match
--reviews`` apply. One process, FastAPI + uvicorn, model and shards loaded once (docs/serve.md).

This module is the web layer (config, routes, CLI). What each request does is
:class:`reid.serving.service.ReviewService`; the Host/Origin guard (DNS rebinding, cross-site
requests), the socket, the upload checks and decode budget, the matcher and the review desk are
in :mod:`reid.serving`. Nothing from a request is used as a path; the page's files come from a
fixed table; uploads stay in memory, capped in bytes and pixels before decoding.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError, field_validator

from reid.errors import ConfigError, ReidError
from reid.images import imageio
from reid.review.resolve import ID_FORMAT
from reid.serving.guard import SAFE_METHODS, HostGuard, parse_authority
from reid.serving.service import Decision, HttpError, QueueAnswer, ReviewService, Undo
from reid.serving.sockets import bind_socket, is_loopback, page_url

__all__ = ["HostGuard", "ServeConfig", "create_app", "register", "running"]

JOB = "serve"
STATIC = Path(__file__).resolve().parent / "static"
JS, CSS, HTML = "text/javascript; charset=utf-8", "text/css; charset=utf-8", "text/html; charset=utf-8"
PAGES = {  # URL path -> (file in jobs/static, media type): the only files the page serves
    "/": ("index.html", HTML),
    "/review": ("review.html", HTML),
    "/static/app.js": ("app.js", JS),
    "/static/review.js": ("review.js", JS),
    "/static/app.css": ("app.css", CSS),
}
MB = 1024 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ServeConfig(BaseModel):
    index: str = Field(description="index path or s3:// URI (the version in service)")
    model: str = Field(description="the model package the index was built with")
    archive: list[str] | None = Field(None, description="archives for thumbnails (default: from lineage)")
    matches: str | None = Field(None, description="a `reid match` output to review (the /review queue)")
    reviews: str | None = Field(None, description="where decisions are stored (default: the index)")
    id_format: str = Field(ID_FORMAT, description="scheme of new individual ids the queue shows once minted")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    k: int = Field(5, ge=1, le=50, description="candidate individuals shown")
    threshold: float | None = Field(
        None, allow_inf_nan=False, description="override the calibrated threshold"
    )
    max_upload_bytes: int = Field(10 * MB, ge=1024)
    max_pixels: int = Field(25_000_000, ge=1024, le=imageio.MAX_PIXELS, description="largest upload, pixels")
    decode_slots: int = Field(2, ge=1, le=64, description="upload decodes at once, at most")
    decode_pixels: int = Field(50_000_000, ge=1024, description="pixels being decoded at once, at most")
    decode_wait_s: float = Field(5.0, ge=0, le=600, description="wait for a decode slot, then answer 503")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="other Host names served (NAME[:PORT])"
    )
    examples: int = Field(6, ge=0, le=48, description="built-in example photos from the archive")
    thumb_size: int = Field(192, ge=32, le=1024)
    photo_size: int = Field(768, ge=64, le=4096, description="photos in the review view, pixels a side")
    seed: int = 0

    @field_validator("allowed_hosts")
    @classmethod
    def _valid_hosts(cls, names: list[str]) -> list[str]:
        for name in names:
            parse_authority(name)  # ValueError with the reason
        return names


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def call(fn, *args, **kwargs) -> Any:
    """Run a service method off the event loop; its refusals become JSON errors."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except HttpError as e:
        return error(e.status, e.message, e.headers)
    except ReidError as e:
        return error(400, str(e))


def create_app(index: str, model: str, archive: list[str] | str | None = None, **options) -> FastAPI:
    """The FastAPI app for one index and its model (loaded now, once)."""
    archive = [archive] if isinstance(archive, str) else archive
    cfg = ServeConfig(index=index, model=model, archive=archive, **options)
    hosts = HostGuard(cfg.host, cfg.allowed_hosts)  # the port is set once the server is bound
    svc = ReviewService(cfg)
    app = FastAPI(title="reid serve", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.config, app.state.hosts, app.state.service = cfg, hosts, svc
    app.state.matcher, app.state.decode_gate, app.state.desk = svc.matcher, svc.gate, svc.desk

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

    def page(name: str, media: str):
        async def serve_page() -> Response:
            return Response(
                (STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"}
            )

        return serve_page

    for path, (name, media) in PAGES.items():
        app.add_api_route(path, page(name, media), methods=["GET"], include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.add_api_route("/api/info", svc.info, methods=["GET"])
    app.add_api_route("/api/reviews", svc.reviews, methods=["GET"])  # ?limit=20: the latest decisions

    @app.post("/api/query")
    async def query(request: Request):
        """The request body is the photo's bytes (any image type; no multipart needed)."""
        t0 = time.perf_counter()
        chunks, size = [], 0
        try:
            svc.check_length(request.headers.get("content-length"))
            async for chunk in request.stream():
                size += len(chunk)
                svc.check_length(None, size)
                chunks.append(chunk)
        except HttpError as e:
            return error(e.status, e.message)
        return await call(svc.query_upload, b"".join(chunks), t0)

    @app.post("/api/example/{image_id}")
    async def example(image_id: str):
        """Query with an archive photo; the photo itself and its burst are excluded."""
        return await call(svc.query_example, image_id)

    async def picture(image_id: str, size: int | None) -> Response:
        data = await call(svc.picture, image_id, size)
        if isinstance(data, Response):
            return data
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/thumb/{image_id}")
    async def thumb(image_id: str):
        return await picture(image_id, None)

    @app.get("/photo/{image_id}")
    async def photo(image_id: str):
        """The larger picture the review view zooms into (``photo_size`` pixels a side, at most)."""
        return await picture(image_id, cfg.photo_size)

    @app.get("/matches/{image_a}/{image_b}.png")
    async def keypoint_matches(image_a: str, image_b: str):
        """Verified keypoint matches between two archive photos, drawn; X-Inliers counts them."""
        out = await call(svc.keypoint_matches, image_a, image_b)
        if isinstance(out, Response):
            return out
        return Response(out[0], media_type="image/png", headers={"X-Inliers": str(out[1])})

    @app.post("/api/decision")
    async def decision(d: Decision):
        return await call(svc.decision, d.query_id, d.decision, d.individual_id, d.reviewer, d.note)

    @app.get("/api/queue")
    async def queue(survey: str = "", camera: str = "", date_from: str = "", date_to: str = "", kind: str = "",
                    offset: int = 0, limit: int = 20, include_decided: bool = False):  # fmt: skip
        """A page of the review queue, filtered by the query photo's survey, camera and dates."""
        filters = dict(survey=survey, camera=camera, date_from=date_from, date_to=date_to, kind=kind)
        return await call(svc.queue, offset, limit, include_decided, **filters)

    @app.post("/api/review")
    async def review_item(a: QueueAnswer):
        return await call(svc.review_item, a.item_id, a.answer, a.reviewer, a.note, a.name, a.candidate)

    @app.get("/api/individuals")
    async def individuals():
        return await call(svc.individuals)

    @app.post("/api/review/undo")
    async def undo(u: Undo):
        return await call(svc.undo, u.review_id, u.reviewer)

    return app


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its URL (port 0 = any free port)."""
    import uvicorn

    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    if getattr(app.state, "hosts", None) is not None:
        app.state.hosts.bind(host, bound)
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


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        index: str = typer.Option(..., help="index path or s3:// URI"),
        model: str = typer.Option(..., help="the model package the index was built with"),
        archive_uri: list[str] = typer.Option(None, "--archive", help="archive(s) for thumbnails "
                                              "(default: the ones the index's embeddings came from)"),
        matches: str = typer.Option(None, help="a `reid match` output: review its queue at /review"),
        reviews: str = typer.Option(None, help="where decisions are stored (default: the index)"),
        id_format: str = typer.Option(ID_FORMAT, help="scheme of minted new-individual ids"),
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
        options = dict(host=host, port=port, k=k, threshold=threshold, examples=examples, matches=matches,
                       reviews=reviews, id_format=id_format, allowed_hosts=list(allowed_host or []),
                       max_upload_bytes=int(max_upload_mb * MB), max_pixels=int(max_megapixels * 1e6),
                       decode_slots=decode_slots, decode_pixels=int(decode_megapixels * 1e6),
                       decode_wait_s=decode_wait)  # fmt: skip
        try:
            ServeConfig(index=index, model=model, **options)
        except ValidationError as e:
            why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ConfigError(f"bad serve options: {why}") from None
        sock = bind_socket(host, port)  # before loading anything: a port in use is one line, exit 2
        try:
            if not is_loopback(host):
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
            if matches:
                typer.echo(f"Review queue of {matches}: {page_url(host, bound)}review")
            uvicorn.Server(uvicorn.Config(web, log_level="warning")).run(sockets=[sock])
        finally:
            sock.close()
