"""Pre-flight checks of locations: one clear line before any work, instead of an OSError minutes later.

The S3 bucket check is the only user of ``boto3`` (imported when an ``s3://`` location is checked).
"""

from __future__ import annotations

import os
from functools import lru_cache

from reid.errors import ReidError
from reid.storage import absolute, is_remote, is_s3, resolve, s3_options

__all__ = ["PREFLIGHT_TIMEOUT_S", "check_input", "check_output", "check_s3"]

PREFLIGHT_TIMEOUT_S = float(os.environ.get("REID_S3_PREFLIGHT_TIMEOUT", "3"))


def _bucket(uri: str) -> str:
    return str(uri)[len("s3://") :].split("/", 1)[0]


@lru_cache(maxsize=32)
def _check_bucket(bucket: str, options: tuple, timeout_s: float) -> str | None:
    """None when ``bucket`` answers with the current settings, else what is wrong and the fix."""
    import boto3
    import botocore.exceptions as bex
    from botocore.config import Config

    endpoint, region, key, secret, token = options
    session = boto3.session.Session(
        aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token, region_name=region
    )
    client = session.client(
        "s3",
        endpoint_url=endpoint or None,
        config=Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
    where = endpoint or "AWS S3"
    try:
        client.head_bucket(Bucket=bucket)
    except bex.NoCredentialsError:
        return (
            "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
            "or run where an instance role applies"
        )
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError) as e:
        return f"the S3 endpoint {where} did not answer ({type(e).__name__}); check AWS_ENDPOINT_URL and the network"
    except bex.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return f"bucket {bucket!r} does not exist at {where}; create it (aws s3 mb s3://{bucket}) or fix the URI"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"access to bucket {bucket!r} denied ({code}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role) and the bucket's policy"
            )
        return f"S3 refused the bucket check ({code or e}); check the URI and the credentials"
    except (bex.BotoCoreError, OSError, ValueError) as e:
        return (
            f"cannot check the bucket ({type(e).__name__}: {e}); check AWS_ENDPOINT_URL and the credentials"
        )
    return None


def check_s3(uri: str, what: str = "input") -> None:
    """Refuse an ``s3://`` location that cannot work: no bucket, no credentials, an endpoint that
    does not answer, a bucket that does not exist. Short timeouts, one attempt, cached per bucket."""
    uri = str(uri)
    bucket = _bucket(uri)
    if not bucket:
        raise ReidError(f"{what} {uri!r}: an S3 URI needs a bucket, e.g. s3://my-bucket/archive")
    problem = _check_bucket(bucket, s3_options(), PREFLIGHT_TIMEOUT_S)
    if problem:
        raise ReidError(f"{what} {uri}: {problem}")


def check_output(uri: str, what: str = "--out", kind: str = "folder") -> None:
    """Refuse an output location that cannot be written, before any work.

    ``kind`` is ``folder`` (most outputs) or ``file`` (a single table, e.g. a split). Locally: an
    existing file where a folder is wanted (or the reverse), a file among the parents, a parent
    that cannot be written; on S3, :func:`check_s3`.
    """
    uri = str(uri)
    if is_s3(uri):
        check_s3(uri, what)
        return
    if is_remote(uri):
        resolve(uri)  # an unknown scheme is refused here, by name
        return
    path = absolute(uri)
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        raise ReidError(
            f"{what} {uri}: is an existing file; {what} names a folder: give a new path or a folder "
            "this job wrote"
        )
    if kind == "file" and os.path.isdir(path):
        raise ReidError(
            f"{what} {uri}: is a folder; {what} names a file here, e.g. {uri.rstrip('/')}.parquet"
        )
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ReidError(f"{what} {uri}: {parent} is a file, so nothing can be written under it; fix the path")
    target = path if os.path.isdir(path) else parent
    if target and not os.access(target, os.W_OK | os.X_OK):
        raise ReidError(f"{what} {uri}: {target} is not writable by this user; choose another location")


def check_input(uri: str, what: str = "input") -> None:
    """Refuse an input location that cannot be read: S3 pre-flight (see :func:`check_s3`); another
    scheme must at least resolve to a filesystem."""
    if is_s3(uri):
        check_s3(uri, what)
    elif is_remote(uri):
        try:
            resolve(uri)
        except ReidError as e:
            raise ReidError(f"{what} {e}") from e
