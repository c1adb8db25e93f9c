"""Small pieces every job shares: the config base (finite numbers, absolute paths, location
checks, one-line option errors), the closing summary table, the progress bar, and the Ray wiring
more than one job uses (task errors as user errors, the sharded k-NN of `reid match` and `reid index`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from reid import storage
from reid.errors import ConfigError, ReidError
from reid.settings import (  # noqa: F401 - re-exported for the jobs
    Input,
    InputOrName,
    Loc,
    LocalPath,
    Output,
    OutputFile,
    Settings,
    location_fields,
    locations,
    paths_as_given,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from reid.embeddings import Block
    from reid.matching import Exclusions
    from reid.search.index_store import IndexInfo

console = Console(stderr=True)


def print_summary(job: str, summary: dict) -> None:
    """The closing summary of a job, one row per figure."""
    table = Table(title=f"reid {job}", show_header=False, title_justify="left")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            continue
        table.add_row(str(key), str(value))
    console.print(table)


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


# --------------------------------------------------------------------------------------------
# Job configs: locations resolved in the driver, finite numbers, checks before any work

# Config base and location field types: reid.settings (re-exported here for the jobs).
JobConfig = Settings


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_locations(cfg: BaseModel) -> None:
    """Every location of a config checked before any work, each refusal one line naming it:
    outputs that cannot be written (an existing file, a missing bucket), S3 inputs whose bucket,
    endpoint or credentials do not answer (short timeouts). Also sweeps a killed run's temp files."""
    for name, loc, value in locations(cfg):
        label = option_name(name) if loc.role == "output" else name
        if loc.role == "output":
            storage.check_output(value, label, loc.kind)
        elif not storage.is_name(value):
            storage.check_input(value, label)
    for _name, loc, value in locations(cfg):
        if loc.role == "output" and loc.kind == "folder":
            storage.sweep_temp(value)


# --------------------------------------------------------------------------------------------
# One-line option errors


def allowed_range(cls: type[BaseModel] | None, field: str) -> str:
    """A field's bounds in words (``1 to 1000``, ``> 0``, ``>= 0 and < 1``), or '' when unbounded."""
    if cls is None or field not in cls.model_fields:
        return ""
    lo = hi = ""
    for m in cls.model_fields[field].metadata:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                lo = f"{sign} {getattr(m, attr)}"
        for attr, sign in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                hi = f"{sign} {getattr(m, attr)}"
    if lo.startswith(">=") and hi.startswith("<="):
        return f"{lo[3:]} to {hi[3:]}"
    return " and ".join(x for x in (lo, hi) if x)


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_config(job: str, cls: type[ConfigT], **values: Any) -> ConfigT:
    """A job's config from its command's options; a validation error becomes one line
    (:func:`options_error`), so every command builds and reports its options the same way."""
    try:
        return cls(**values)
    except ValueError as e:
        raise options_error(job, e, cls) from e


def options_error(
    job: str, e: ValueError, cls: type[BaseModel] | None = None, as_fields: bool = False
) -> ConfigError:
    """A config's validation error as one line: the option, the value, what is allowed.

    e.g. ``reid match --k 0: out of range (allowed: 1 to 1000)``; several errors are joined by ``;``.
    Every job's command uses it, so every option error reads the same; ``as_fields`` names the
    settings as a pipeline file spells them (``batch_size``) rather than as options.
    """
    if not isinstance(e, ValidationError):
        return ConfigError(f"reid {job}: " + " ".join(str(e).split()))
    parts = []
    for err in e.errors(include_url=False):
        loc = [str(x) for x in err.get("loc", ()) if not isinstance(x, int)]
        kind = err.get("type", "")
        msg = str(err.get("msg", kind)).removeprefix("Value error, ")
        if not loc:  # a check across options (model validator): its own words
            parts.append(msg)
            continue
        value = err.get("input")
        shown = "" if isinstance(value, dict) or kind == "missing" else f" {_show(value)}"
        if kind == "finite_number":
            what = "not a finite number; give a number (nan and inf are refused)"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bounds = allowed_range(cls, loc[0]) or msg.removeprefix("Input should be ")
            what = f"out of range (allowed: {bounds})"
        else:
            what = msg[:1].lower() + msg[1:]
        name = ".".join(loc) if as_fields else option_name(".".join(loc))
        parts.append(f"{name}{shown}: {what}")
    return ConfigError(f"reid {job}: " + "; ".join(parts))


def one_line(message: str) -> str:
    """A multi-line error (pydantic's) as one line, without its links and error-type tags."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines if not ln.startswith("For further information"))
    return re.sub(r" \[type=[^\]]*\]", "", text)


def make(job: str, cls: type[BaseModel], **values: Any) -> Any:
    """``cls(**values)``, a validation error turned into :func:`options_error`'s one line."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise options_error(job, e, cls) from None


# --------------------------------------------------------------------------------------------
# Ray wiring shared by jobs


def ray_get(refs: Any) -> Any:
    """``ray.get`` that re-raises a user error from a task as itself, so the CLI prints one clear line."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ReidError):
            raise cause from None
        raise


def knn(
    info: IndexInfo,
    blocks: list[Block],
    k: int,
    exclude: Exclusions,
    nprobe: int | None = None,
    workers: int | None = None,
    gpu: bool | None = None,
    stats: dict | None = None,
    desc: str = "match",
    window: int = 16,
) -> Iterator[tuple[Block, pa.Table, np.ndarray, np.ndarray]]:
    """(shard x query block) searches of :mod:`reid.search.allvsall` as Ray tasks (``reid match`` and
    ``reid index``'s calibration); yields (block, query metadata, scores [n,k], global ids [n,k])
    as blocks complete; each block keeps a running top-k merged from its shards' results.
    """
    import ray

    from cluster.runtime import task_env
    from reid.search import allvsall

    res = ray.cluster_resources()
    n_gpus = int(res.get("GPU", 0)) if gpu is not False else 0
    if gpu and not n_gpus:
        raise ConfigError("--gpu was asked for, but the Ray cluster has no GPU")
    n_workers = workers or (n_gpus or max(1, int(res.get("CPU", 1))))
    task = ray.remote(allvsall.search_task).options(
        num_cpus=1, num_gpus=1 if n_gpus else 0, runtime_env=task_env(), max_retries=2
    )
    reader = ray.remote(allvsall.read_task).options(
        num_cpus=1, num_returns=2, runtime_env=task_env(), max_retries=2
    )
    data: dict[int, object] = {}  # block id -> ref of (vectors, metadata), until the block completes
    read_timings = []
    by_id = {b.id: b for b in blocks}
    merger = allvsall.BlockMerger(len(info.shards), k)
    pending: dict = {}
    todo = iter(allvsall.task_order(len(info.shards), blocks, window))
    timing = dict.fromkeys(["load_s", "search_s", "search_cpu_s", "cpu_s"], 0.0)  # summed over tasks
    driver_cpu = time.process_time()
    bar = progress(None, total=sum(b.n for b in blocks), desc=desc, unit="query")
    try:
        while True:
            while len(pending) < 2 * n_workers:
                nxt = next(todo, None)
                if nxt is None:
                    break
                s, b = nxt
                if b.id not in data:
                    data[b.id], t = reader.remote(b, info.model_id)
                    read_timings.append(t)
                ref = task.remote(
                    info.uri, info.version, s, b.id, data[b.id], k, exclude, nprobe, bool(n_gpus)
                )
                pending[ref] = b.id
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            block_id, meta, d, g, t = ray_get(ready[0])
            for key in timing:
                timing[key] += t[key]
            done = merger.add(block_id, meta, d, g)
            if done is not None:
                data.pop(block_id, None)  # frees the block in the object store
                bar.update(by_id[block_id].n)
                yield by_id[block_id], *done
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref)
    if stats is not None:
        timing["driver_cpu_s"] = time.process_time() - driver_cpu
        reads = ray.get(read_timings)
        timing["read_s"] = sum(r["read_s"] for r in reads)
        timing["cpu_s"] += sum(r["read_cpu_s"] for r in reads)
        stats.update({key: round(v, 3) for key, v in timing.items()})
        stats.update(workers=n_workers, gpus=n_gpus)
