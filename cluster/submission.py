"""What `reid submit` checks before anything reaches a cluster and what identifies a submission:
locations that mean the same on every node, inputs that exist (their manifests as fingerprints),
the job's environment variables and driver resources, and Ray's client logs kept quiet."""

from __future__ import annotations

import json
import logging
import os
import re

from reid import storage
from reid.errors import ReidError
from reid.manifest import read_manifest

__all__ = [
    "check_locations",
    "fingerprint",
    "is_location",
    "parse_env",
    "parse_resources",
    "quiet_client_logs",
]

# A value with a scheme other than these is a name (timm:resnet18, hf-hub:org/model), not a location.
_NAME_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:(?!//)")


def is_location(value: object) -> bool:
    """A string that names a place (path, file:// or s3:// URI) rather than a name or a number."""
    if not isinstance(value, str) or not value:
        return False
    if value.startswith(("s3://", "file://")):
        return True
    if _NAME_SCHEME.match(value):
        return False
    return "/" in value or value.startswith(("~", "."))


def fingerprint(uri: str) -> dict:
    """What identifies an input's current state: its manifest (job output) or size/mtime (a file)."""
    import pyarrow.fs as pafs

    m = read_manifest(uri)
    if m:
        return {"uri": uri, "job": m.get("job"), "ended_at": m.get("ended_at"), "counts": m.get("counts")}
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return {"uri": uri, "size": info.size, "mtime": str(info.mtime)}
    return {"uri": uri}


def check_locations(
    job: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], check_inputs: bool = True
) -> list[dict]:
    """Refuse relative local paths and missing inputs; returns the inputs' fingerprints."""
    for name, uri in [*inputs, *outputs]:
        if not storage.is_remote(uri) and not os.path.isabs(os.path.expanduser(uri.removeprefix("file://"))):
            raise ReidError(
                f"reid {job}: {name} {uri!r} is a relative path, but a submitted job runs in its own working "
                "directory on the cluster: pass an absolute path every node can see, or an s3:// URI"
            )
    prints = []
    for name, uri in inputs:
        if not check_inputs:
            prints.append({"uri": uri})
            continue
        try:
            found = storage.exists(uri)
        except OSError as e:
            raise ReidError(
                f"reid {job}: cannot check input {name} {uri} from here ({e}); fix the storage settings "
                "or pass --no-check-inputs when only the cluster can see it"
            ) from e
        if not found:
            raise ReidError(f"reid {job}: input {name} {uri} does not exist; create it first or fix the path")
        prints.append(fingerprint(uri))
    return prints


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ReidError(f"--env {p!r}: expected NAME=VALUE")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def parse_resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
            raise ValueError
    except ValueError as e:
        raise ReidError(f"--entrypoint-resources {text!r}: expected JSON like '{{\"worker\": 1}}'") from e
    return {str(k): float(v) for k, v in value.items()}


def quiet_client_logs() -> None:
    """Ray's client logs (packaging, uploads, websockets) say what our own lines already say."""
    import ray  # noqa: F401  (sets up the "ray" logger and its handlers)

    ray_logger = logging.getLogger("ray")
    for handler in ray_logger.handlers:  # Ray's SDK loggers set their own level INFO
        handler.setLevel(logging.ERROR)
