"""Training an embedding model, without Ray: the config, the data plan, the LR schedule, one
worker's :class:`Session`, the epoch loop and the history it writes. ``jobs/train.py`` runs
:func:`fit` inside Ray Train workers; a notebook or a benchmark can run it in a plain loop.

Names load on first use: the config and the plan are read by every ``reid`` command, torch only
by the ones that train."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RESUMABLE": "config",
    "TrainConfig": "config",
    "load_config_file": "config",
    "HISTORY": "history",
    "metric_key": "history",
    "summarize": "history",
    "write_history": "history",
    "STATE": "loop",
    "fit": "loop",
    "DataPlan": "plan",
    "plan_data": "plan",
    "lr_lambda": "schedule",
    "Session": "session",
    "normal_priority": "session",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'reid.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"reid.training.{_WHERE[name]}"), name)
