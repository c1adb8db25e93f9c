"""Progress of long loops, for whoever reads it: a bar on a terminal, one line per unit or epoch in
a log (``reid embed ... > log.txt``), nothing with ``REID_PROGRESS=0``; and the per-epoch lines of a
training run, followed from the ``history.json`` its first worker rewrites."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

from reid import storage
from reid.errors import ReidError

__all__ = ["PROGRESS_ENV", "LineProgress", "follow_epochs", "progress"]

PROGRESS_ENV = "REID_PROGRESS"  # 0: no progress; 1: progress even when neither stream would get it


class LineProgress:
    """Progress as plain lines for a log (``reid embed ... > log.txt``): one line per update (a
    unit, an epoch), at most one every ``interval`` seconds, and always the last. A tqdm bar's
    carriage-return redraws make an unreadable file, so a stream that is not a terminal gets these."""

    def __init__(
        self,
        items: Iterable | None,
        total: int | None,
        desc: str,
        unit: str,
        stream: TextIO,
        interval: float = 0.0,
    ):
        self.items, self.total, self.desc, self.unit = items, total, desc, unit
        self.stream, self.interval = stream, interval
        self.n = 0
        self.postfix = ""
        self._t0 = time.monotonic()
        self._last_t = -math.inf
        self._last_n = 0

    def __iter__(self) -> Iterator:
        for item in self.items or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last_t >= self.interval or (self.total is not None and self.n >= self.total):
            self._write(now)

    def close(self) -> None:
        if self.n != self._last_n:
            self._write(time.monotonic())

    def line(self, elapsed: float) -> str:
        """``embed: 512/1,000 img (51%) 42.1 img/s, 0:12 elapsed, 0:11 left, loss=0.31``."""
        done = f"{self.n:,g}" + (f"/{self.total:,g}" if self.total else "") + f" {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [f"{rate:,.1f} {self.unit}/s" if rate >= 1 or not rate else f"{1 / rate:,.1f} s/{self.unit}"]
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if self.total and rate > 0:
            parts.append(f"{tqdm.format_interval((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {done} " + ", ".join(parts)

    def _write(self, now: float) -> None:
        self._last_t, self._last_n = now, self.n
        self.stream.write(self.line(now - self._t0) + "\n")
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def progress(
    items: Iterable | None,
    total: int | None = None,
    desc: str = "",
    unit: str = "img",
    interval: float = 5.0,
) -> tqdm | LineProgress:
    """Progress of a long loop, for whoever reads it.

    A bar on stderr when it is a terminal; one line per update on stdout when stdout is not a
    terminal (a log file: at most one every ``interval`` seconds, 0 = every update, for coarse units
    such as an embed unit or an epoch). ``REID_PROGRESS=0`` turns progress off; ``REID_PROGRESS=1``
    writes lines to stderr when neither would show (stdout a terminal, stderr redirected).
    """
    mode = os.environ.get(PROGRESS_ENV, "").strip()
    if mode == "0":
        return tqdm(items, total=total, disable=True)
    if not _is_terminal(sys.stdout):
        return LineProgress(items, total, desc, unit, sys.stdout, interval)
    if not _is_terminal(sys.stderr) and mode == "1":
        return LineProgress(items, total, desc, unit, sys.stderr, interval)
    return tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not _is_terminal(sys.stderr),
    )


@contextlib.contextmanager
def follow_epochs(
    history_uri: str, epochs: int, show: tuple[str, ...] = ("loss",), poll_s: float = 2.0
) -> Iterator[None]:
    """Per-epoch progress of a training run, read from the ``history.json`` its first worker
    rewrites after each epoch (rows with ``epoch``; 0 = the untrained baseline). The driver is
    blocked in Ray Train's ``fit()`` and worker output stays in Ray's logs, so a thread polls it."""
    bar = progress(None, total=epochs, desc="train", unit="epoch", interval=0)
    stop = threading.Event()

    def poll() -> None:
        try:
            rows = json.loads(storage.read_text(history_uri))
        except (OSError, ValueError, ReidError):  # not written yet, or being replaced
            return
        by_epoch = {r["epoch"]: r for r in rows if isinstance(r, dict) and isinstance(r.get("epoch"), int)}
        for epoch in sorted(e for e in by_epoch if e > bar.n):  # one line each, however many landed
            row = by_epoch[epoch]
            bar.set_postfix({k: row[k] for k in show if isinstance(row.get(k), (int, float))}, refresh=False)
            bar.update(epoch - bar.n)

    def loop() -> None:
        while not stop.wait(poll_s):
            poll()

    thread = threading.Thread(target=loop, name="reid-epochs", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        poll()
        bar.close()
