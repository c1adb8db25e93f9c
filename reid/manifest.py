"""``_manifest.json``: every job output carries one, written last. Readers trust only outputs with one."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from reid import __version__, storage
from reid.errors import ReidError

MANIFEST = "_manifest.json"
_SECRET = re.compile(r"(secret|password|passwd|token|credential|private|access_key|api_key)", re.I)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def scrub(value: Any) -> Any:
    """Replace the values of secret-looking keys (recursively) with ``"***"``."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET.search(str(k)) and v else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def code_version() -> str:
    """Package version plus the git commit when the code runs from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def read_manifest(uri: str) -> dict | None:
    """The manifest of an output, or None when the output is missing or not committed."""
    target = storage.join(uri, MANIFEST)
    if not storage.exists(target):
        return None
    return json.loads(storage.read_text(target))


def require_manifest(uri: str, job: str | None = None) -> dict:
    """The manifest of an input, or a clear error when it is missing (output incomplete)."""
    m = read_manifest(uri)
    if m is None:
        if not storage.exists(uri):
            raise ReidError(f"{uri}: not found")
        raise ReidError(
            f"{uri}: no {MANIFEST}; the job that writes it did not finish. Re-run it (it resumes)."
        )
    if job and m.get("job") != job:
        raise ReidError(f"{uri}: expected the output of `reid {job}`, found `reid {m.get('job')}`")
    return m


def lineage(inputs: list[str]) -> list[dict]:
    """Input URIs with a summary of their own manifests (job, model_id, counts, end time)."""
    out = []
    for uri in inputs:
        try:
            m = read_manifest(uri)
        except (ReidError, OSError, ValueError):
            m = None
        entry: dict[str, Any] = {"uri": uri}
        if m:
            entry.update({k: m[k] for k in ("job", "ended_at", "counts", "model_id") if k in m})
        out.append(entry)
    return out


def write_manifest(
    uri: str,
    job: str,
    config: dict,
    inputs: list[str],
    counts: dict,
    started_at: str,
    **extra: Any,
) -> dict:
    """Write ``uri/_manifest.json`` (last, atomically) and return it."""
    m = {
        "job": job,
        "config": scrub(config),
        "code_version": code_version(),
        "inputs": lineage(inputs),
        "counts": counts,
        "started_at": started_at,
        "ended_at": now(),
        **scrub(extra),
    }
    storage.write_json(storage.join(uri, MANIFEST), m)  # strict JSON: a NaN figure is written as null
    return m


def ensure_writable_output(uri: str, job: str, force: bool = False) -> dict | None:
    """Check an output location before work starts; returns an existing manifest (committed output).

    Refuses a location that cannot be written (an existing file, a missing bucket, ...) in one line,
    never overwrites a different job's output, and sweeps the temporary files a killed run left.
    """
    storage.check_output(uri)
    m = read_manifest(uri)
    if m and m.get("job") != job:
        raise ReidError(f"{uri} holds the output of `reid {m.get('job')}`; choose another --out")
    storage.sweep_temp(uri)
    return None if force else m
