"""Storage URIs: one function maps a location to a pyarrow filesystem and a path in it.

A plain path or ``file://`` is local; ``s3://`` uses the settings below; a scheme registered with
:func:`register_filesystem` uses that filesystem; any other scheme pyarrow knows (``gs://``,
``abfs://``, ``hdfs://``, ...) goes through ``pyarrow.fs.FileSystem.from_uri``, and a scheme only
fsspec knows (``memory://``, ``az://`` with adlfs, ...) through fsspec wrapped for pyarrow. Every
reader and writer here goes through :func:`resolve`, so all schemes behave as ``s3://`` does.
``boto3`` is imported only by the S3 pre-flight check.

S3 endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``), so the same code runs against AWS and a local endpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import socket
import uuid
from functools import lru_cache

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reid.errors import ReidError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def is_remote(uri: str) -> bool:
    """A location on a remote filesystem (any ``scheme://`` but ``file://``): no local path, no rename."""
    uri = str(uri)
    return "://" in uri and not uri.startswith("file://")


# scheme -> filesystem whose paths are the URI without ``scheme://`` (see register_filesystem)
_REGISTERED: dict[str, pafs.FileSystem] = {}


def register_filesystem(scheme: str, fs: pafs.FileSystem | None) -> None:
    """Route ``scheme://a/b`` to ``fs`` at path ``a/b`` (None removes it).

    For a store pyarrow cannot open from a URI alone (a custom ``pyarrow.fs.PyFileSystem``, a
    ``SubTreeFileSystem``, an fsspec filesystem wrapped with ``pyarrow.fs.FSSpecHandler``).
    Registration is per process: Ray workers need it done where they start too.
    """
    scheme = scheme.lower().removesuffix("://")
    if fs is None:
        _REGISTERED.pop(scheme, None)
    else:
        _REGISTERED[scheme] = fs


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def _other_scheme(uri: str) -> tuple[pafs.FileSystem, str]:
    """A non-S3 URI through the registry, pyarrow's own URI parser, or fsspec."""
    scheme = _scheme(uri)
    if scheme in _REGISTERED:
        return _REGISTERED[scheme], uri.split("://", 1)[1].rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
    try:
        import fsspec

        fsspec_fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise ReidError(
            f"{uri!r}: unsupported URI scheme {scheme!r} (pyarrow: {why}; fsspec: {e}); use a local "
            "path, file://, s3://, a scheme pyarrow knows (gs://, abfs://, hdfs://) or install its fsspec "
            "package"
        ) from e
    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), str(path).rstrip("/") or "/"


def s3_options() -> tuple:
    """(endpoint, region, key, secret, token) from the standard AWS variables."""
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


# A name with a scheme that is not a location: timm:resnet18, hf-hub:org/model (but not C:\\ on Windows).
_NAME_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:(?!//)")


def is_name(value: str) -> bool:
    """A value with a scheme that names a thing rather than a place (``timm:resnet18``)."""
    return bool(_NAME_SCHEME.match(str(value)))


def absolute(uri: str) -> str:
    """A location as the driver sees it, valid in any process: local paths made absolute.

    Ray workers run in other working directories (Ray Train's trial folder), so every job resolves
    its paths here, at config validation, before anything reaches Ray. ``s3://`` URIs, other
    schemes and names such as ``timm:resnet18`` are returned unchanged.
    """
    uri = str(uri)
    if is_s3(uri) or ("://" in uri and not uri.startswith("file://")) or _NAME_SCHEME.match(uri):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path)) if path else uri


def absolute_if_path(value: str) -> str:
    """:func:`absolute` for a value that may be a location or a plain name ('timm', 'none').

    A value is a location when it looks like one (a separator, ``.``/``~`` prefix, a URI) or names
    something that exists in the working directory.
    """
    value = str(value)
    looks = "/" in value or os.sep in value or value.startswith((".", "~", "file://"))
    return absolute(value) if looks or os.path.exists(value) else value


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map ``uri`` to ``(filesystem, path)``: path is absolute locally, ``bucket/key`` on S3.

    Other schemes: see the module docstring; an unknown one is a one-line error naming it.
    """
    uri = str(uri)
    if is_s3(uri):
        path = uri[len("s3://") :].rstrip("/")
        if not path:
            raise ReidError(f"{uri!r}: an S3 URI needs a bucket, e.g. s3://my-bucket/archive")
        return _s3_filesystem(*s3_options()), path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return _other_scheme(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI (``/`` separators, scheme kept)."""
    uri = str(uri)
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
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


_TMP_PREFIX = ".tmp-"
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # this machine, in temp names
# .tmp-<host>-<pid>-<uuid>-<name>: the writer, so a later run can tell a dead writer's file from a live one
_TMP_NAME = re.compile(r"^\.tmp-(?:([0-9a-f]{8})-(\d+)-)?[0-9a-f]{32}-")
_FOREIGN_TMP_AGE_S = 24 * 3600  # another host's temp file: swept once this old


def _writer_alive(host: str | None, pid: str | None, mtime: float) -> bool:
    import time

    if host is None or pid is None:  # the old naming, without its writer: a leftover
        return False
    if host != HOST_TAG:
        return time.time() - mtime < _FOREIGN_TMP_AGE_S
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temp(uri: str) -> list[str]:
    """Remove the temporary files that killed writers left under a local output; returns their paths.

    :func:`write_bytes` names each temporary file after its writer (host, pid), so files of a
    writer still running are kept. S3 outputs have none (objects are written in one PUT).
    """
    if is_remote(uri):
        return []
    root = absolute(uri)
    if not os.path.isdir(root):
        return []
    removed = []
    for folder, _, files in os.walk(root):
        for name in files:
            m = _TMP_NAME.match(name)
            full = os.path.join(folder, name)
            if not m:
                continue
            try:
                if not _writer_alive(m.group(1), m.group(2), os.lstat(full).st_mtime):
                    os.unlink(full)
                    removed.append(full)
            except FileNotFoundError:
                continue
    return removed


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file or the new one, never a partial one.

    Locally: a temporary name in the same folder, then an atomic rename. On S3 (and the object
    stores behind other schemes) a single PUT is already atomic, so the object is written directly.
    """
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    if is_remote(uri):
        if not is_s3(uri) and parent:
            fs.create_dir(parent, recursive=True)  # a no-op on object stores; needed on hdfs and the like
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    fs.create_dir(parent, recursive=True)
    tmp = os.path.join(
        parent, f"{_TMP_PREFIX}{HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex}-{os.path.basename(path)}"
    )
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def dumps_json(value, indent: int | None = 2) -> str:
    """JSON any standard parser reads: non-finite numbers become null (never ``NaN``/``Infinity``).

    Numpy scalars become Python numbers; other objects (paths, times) their ``str``.
    """

    def default(o):
        item = getattr(o, "item", None)  # numpy scalars
        if callable(item):
            try:
                return item()
            except (TypeError, ValueError):
                pass
        return str(o)

    # round-trip once so numpy scalars (default=) are also cleaned of NaN
    once = json.loads(json.dumps(value, default=default, allow_nan=True))
    return json.dumps(finite_json(once), indent=indent, allow_nan=False)


def write_json(uri: str, value, indent: int | None = 2) -> None:
    """Write ``value`` as strict JSON (see :func:`dumps_json`), atomically."""
    write_text(uri, dumps_json(value, indent=indent))


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


# --------------------------------------------------------------------------------------------
# Pre-flight checks (reid.preflight; kept here as the names every job already calls)


def check_s3(uri: str, what: str = "input") -> None:
    """See :func:`reid.preflight.check_s3`."""
    from reid import preflight

    preflight.check_s3(uri, what)


def check_output(uri: str, what: str = "--out", kind: str = "folder") -> None:
    """See :func:`reid.preflight.check_output`."""
    from reid import preflight

    preflight.check_output(uri, what, kind)


def check_input(uri: str, what: str = "input") -> None:
    """See :func:`reid.preflight.check_input`."""
    from reid import preflight

    preflight.check_input(uri, what)


def finite_json(value):
    """``value`` with every NaN/inf float replaced by None (JSON null), recursively."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
