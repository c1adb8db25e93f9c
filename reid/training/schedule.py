"""The learning-rate schedule: a factor per optimiser step for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["lr_lambda"]


def lr_lambda(total: int, warmup: int, schedule: str, frozen: int = 0) -> Callable[[int], float]:
    """LR factor by step: 0 for ``frozen`` steps, then a linear warm-up and a cosine (or constant)
    decay over the remaining steps."""

    def f(step: int) -> float:
        if step < frozen:
            return 0.0
        step, span = step - frozen, total - frozen
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or span <= warmup:
            return 1.0
        t = min(1.0, (step - warmup) / max(1, span - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

    return f
