"""glibc's defaults vs reid/allocator.py's settings for a CPU forward pass, on the main thread and
on a worker thread (where a Ray Data actor runs its batches).

Each case runs in a fresh process (the settings must be in place at start): resnet18 @ 224,
batch 32, forward-only for --seconds, with --threads torch threads. Prints img/s and the share
of CPU time spent in the kernel, then one JSON line.

    python benchmarks/allocator.py [--seconds 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from reid.allocator import process_env  # noqa: E402

_CHILD = r"""
import json, resource, sys, threading, time
sys.path.insert(0, {repo!r})
import torch
from reid.model.spec import ModelSpec
from reid.model.network import create_model
torch.set_num_threads({threads})
model = create_model(ModelSpec(backbone="resnet18", embedding_dim=512, input_size=224), load_pretrained=False).eval()
x = torch.randn(32, 3, 224, 224)
out = {{}}
def run():
    with torch.inference_mode():
        model(x)
        r0, t0, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
        while time.perf_counter() - t0 < {seconds}:
            model(x)
            n += len(x)
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    sys_s, user_s = r1.ru_stime - r0.ru_stime, r1.ru_utime - r0.ru_utime
    out.update(img_s=n / wall, kernel_share=sys_s / max(1e-9, sys_s + user_s))
if {thread}:
    t = threading.Thread(target=run); t.start(); t.join()
else:
    run()
print(json.dumps(out))
"""


def case(env: dict, thread: bool, args) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    full.update(env)
    code = _CHILD.format(repo=REPO, threads=args.threads, seconds=args.seconds, thread=thread)
    res = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tuned = process_env()
    if not tuned:
        sys.exit("reid.allocator is disabled here (not Linux, REID_KEEP_FREED_MEMORY=0 or MALLOC_* set)")
    figures = {"threads": args.threads}
    for where, thread in (("main_thread", False), ("worker_thread", True)):
        for name, env in (("glibc_default", {"REID_KEEP_FREED_MEMORY": "0"}), ("reid_allocator", tuned)):
            r = case(env, thread, args)
            print(
                f"{where:14s} {name:15s} {r['img_s']:7.1f} img/s   kernel {100 * r['kernel_share']:5.1f}% of CPU"
            )
            figures[f"{where}_{name}_img_s"] = round(r["img_s"], 2)
            figures[f"{where}_{name}_kernel_share"] = round(r["kernel_share"], 3)
        figures[f"{where}_speedup"] = round(
            figures[f"{where}_reid_allocator_img_s"] / figures[f"{where}_glibc_default_img_s"], 3
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
