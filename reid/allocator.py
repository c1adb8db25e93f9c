"""glibc malloc settings for torch on CPU: keep freed activation buffers instead of unmapping them.

glibc serves large allocations (above a threshold that grows to 32 MB at most) with mmap and
returns them to the kernel on free. A CPU forward pass allocates activations of ~100 MB per
batch (resnet18 @ 224, batch 32), so every batch maps them again and the kernel zeroes each
page; ``benchmarks/allocator.py`` measures the kernel's share and what raising both thresholds
gains. The process then keeps its peak heap instead of shrinking back after each batch: a
long-lived model actor reaches that peak on its first batch anyway.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
DEFAULT_LIMIT = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap
_applied: int | None = None
_USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def _enabled() -> bool:
    return os.environ.get("REID_KEEP_FREED_MEMORY", "1") != "0" and sys.platform.startswith("linux")


def process_env(limit: int = DEFAULT_LIMIT) -> dict[str, str]:
    """The same settings as environment variables, for a process started from here (Ray actors).

    With MALLOC_ARENA_MAX=1 too: a thread other than the main one allocates from an arena of its
    own whose heaps are capped at 64 MB, so its large blocks are mmapped whatever the threshold,
    and Ray Data runs an actor's batches on such a thread (``benchmarks/allocator.py`` measures
    both threads). Empty when disabled or set by the user.
    """
    if not _enabled() or any(os.environ.get(v) for v in _USER_VARS):
        return {}
    return {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(limit),
        "MALLOC_TRIM_THRESHOLD_": str(limit),
    }


def keep_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Raise glibc's mmap and trim thresholds to ``limit`` bytes in this process (idempotent).

    Takes effect for allocations from the main thread (see :func:`process_env` for others). A
    no-op (False) off glibc or with REID_KEEP_FREED_MEMORY=0; MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_ in the environment are left to decide.
    """
    global _applied
    if _applied == limit:
        return True
    if not _enabled():
        return False
    if any(os.environ.get(v) for v in _USER_VARS):
        return True  # set at process start (process_env() or the user): the environment decides
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
    if ok:
        _applied = limit
    return ok
