"""Storage URIs: one function maps a plain path, ``file://`` or ``s3://`` URI to a pyarrow filesystem.

S3 endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``), so the same code runs against AWS and a local endpoint.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from functools import lru_cache

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reid.errors import ReidError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _s3_options() -> tuple:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    return (
        endpoint,
        region,
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
        env.get("AWS_SESSION_TOKEN"),
    )


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint, region, key, secret, token) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region}
    if endpoint:
        scheme = "https" if endpoint.startswith("https") else "http"
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["scheme"] = scheme
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map ``uri`` to ``(filesystem, path)``: path is absolute locally, ``bucket/key`` on S3."""
    uri = str(uri)
    if is_s3(uri):
        path = uri[len("s3://") :].rstrip("/")
        if not path:
            raise ReidError(f"{uri!r}: an S3 URI needs a bucket, e.g. s3://my-bucket/archive")
        return _s3_filesystem(*_s3_options()), path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise ReidError(f"{uri!r}: unsupported URI scheme; use a local path, file:// or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI (``/`` separators, scheme kept)."""
    uri = str(uri)
    if is_s3(uri):
        return "s3://" + posixpath.join(uri[len("s3://") :].rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise ReidError(f"{uri}: not found") from e


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file or the new one, never a partial one.

    Locally: a temporary name in the same folder, then an atomic rename. On S3 a single PUT is
    already atomic, so the object is written directly.
    """
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if is_s3(uri) else os.path.dirname(path)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    fs.create_dir(parent, recursive=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def list_files(uri: str, suffix: str = "", recursive: bool = True) -> list[str]:
    """Data files under ``uri`` as URIs, sorted; names starting with ``_`` or ``.`` are skipped."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [uri]
    out = []
    for fi in fs.get_file_info(pafs.FileSelector(path, recursive=recursive)):
        rel = fi.path[len(path) :].lstrip("/")
        if fi.type != pafs.FileType.File or any(p.startswith(("_", ".")) for p in rel.split("/")):
            continue
        if fi.path.endswith(suffix):
            out.append(join(uri, rel))
    return sorted(out)


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def write_parquet(table: pa.Table, uri: str, row_group_size: int | None = None) -> None:
    """Write a Parquet file atomically (see :func:`write_bytes`)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size, compression="zstd")
    write_bytes(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except FileNotFoundError as e:
        raise ReidError(f"{uri}: not found") from e
