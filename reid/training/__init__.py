"""Training an embedding model, without Ray: the config, the data plan, the LR schedule, one
worker's :class:`Session`, the epoch loop and the history it writes. ``jobs/train.py`` runs
:func:`fit` inside Ray Train workers; a notebook or a benchmark can run it in a plain loop."""

from reid.training.config import RESUMABLE, TrainConfig, load_config_file
from reid.training.history import HISTORY, metric_key, summarize, write_history
from reid.training.loop import STATE, fit
from reid.training.plan import DataPlan, plan_data
from reid.training.schedule import lr_lambda
from reid.training.session import Session, normal_priority

__all__ = [
    "HISTORY",
    "RESUMABLE",
    "STATE",
    "DataPlan",
    "Session",
    "TrainConfig",
    "fit",
    "load_config_file",
    "lr_lambda",
    "metric_key",
    "normal_priority",
    "plan_data",
    "summarize",
    "write_history",
]
