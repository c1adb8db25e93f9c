"""reid.allocator: large freed blocks stay in the heap, also on threads other than the main one."""

import json
import os
import subprocess
import sys

import pytest

from reid import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

# Allocates a 160 MB block on a worker thread (as a Ray Data actor runs its batches), twice, and
# reports where each landed: in the brk heap (kept and reused) or in a mapping of its own (mapped
# on allocation and unmapped on free, so every batch pays for zeroed pages again).
_CHILD = r"""
import json, sys, threading
import numpy as np
sys.path.insert(0, {repo!r})
from reid.allocator import keep_freed_memory
keep_freed_memory()
def region(addr):
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= addr < hi:
            return line.split()[-1] if len(line.split()) > 5 else "anonymous mapping"
out = []
def work():
    for _ in range(2):
        a = np.empty(40_000_000, np.float32)
        a.fill(1.0)
        out.append(region(a.ctypes.data))
        del a
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps(out))
"""


def _regions(extra_env: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(extra_env)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _CHILD.format(repo=repo)], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_process_env_keeps_big_blocks_in_the_heap_on_worker_threads():
    assert _regions({"REID_KEEP_FREED_MEMORY": "0"}) == ["anonymous mapping"] * 2  # glibc's default
    assert _regions(allocator.process_env()) == ["[heap]"] * 2


def test_in_process_setting_and_its_switches(monkeypatch):
    assert allocator.keep_freed_memory() is True
    env = allocator.process_env()
    assert env["MALLOC_ARENA_MAX"] == "1" and int(env["MALLOC_MMAP_THRESHOLD_"]) == allocator.DEFAULT_LIMIT
    monkeypatch.setenv("REID_KEEP_FREED_MEMORY", "0")
    assert allocator.process_env() == {}
    monkeypatch.delenv("REID_KEEP_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's own setting wins
    assert allocator.process_env() == {}
