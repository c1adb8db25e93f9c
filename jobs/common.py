"""Small pieces every job shares: the closing summary table and the progress bar."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

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


def progress(items: Iterable, total: int | None = None, desc: str = "", unit: str = "img"):
    """A progress bar on stderr (silent when stderr is not a terminal and REID_PROGRESS unset)."""
    return tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=None,
    )
