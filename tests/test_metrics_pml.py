"""reid.evaluation.metrics against pytorch-metric-learning's AccuracyCalculator on the same embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from reid.evaluation.metrics import retrieval_metrics

INCLUDE = ("precision_at_1", "mean_average_precision_at_r", "mean_average_precision")


def _clustered(seed: int, noise: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of 2-7 images per individual plus a few single-image individuals, L2-normalised."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 8, 25)
    labels = np.r_[np.repeat(np.arange(25), sizes), np.arange(25, 30)]
    centres = rng.normal(size=(30, 16))
    x = centres[labels] + noise * rng.normal(size=(len(labels), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def _pml(q, ql, g, gl, same_source: bool) -> dict:
    # k=None ranks the whole reference set, so PML's mean_average_precision is the full-ranking mAP
    calc = AccuracyCalculator(include=INCLUDE, k=None)
    t = torch.from_numpy
    return calc.get_accuracy(t(q), t(ql), t(g), t(gl), ref_includes_query=same_source)


@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_matches_pml(seed):
    x, labels = _clustered(seed)
    ours = retrieval_metrics(x, labels)
    pml = _pml(x, labels, x, labels, same_source=True)
    # PML also leaves out queries whose label has no other image ("lone query labels")
    assert ours["n_queries"] == len(labels) - 5
    assert ours["accuracy@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["map"] == pytest.approx(pml["mean_average_precision"], abs=1e-9)


def test_query_gallery_matches_pml():
    x, labels = _clustered(2, noise=1.0)
    rng = np.random.default_rng(3)
    is_query = rng.random(len(labels)) < 0.4
    q, ql, g, gl = x[is_query], labels[is_query], x[~is_query], labels[~is_query]
    ours = retrieval_metrics(q, ql, g, gl)
    pml = _pml(q, ql, g, gl, same_source=False)
    assert ours["n_queries"] > 20
    assert ours["accuracy@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["map"] == pytest.approx(pml["mean_average_precision"], abs=1e-9)
