"""Losses and miners by name, and gathered-embedding losses across two real gloo processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from reid.errors import ConfigError
from reid.model.losses import LOSSES, MINERS, MetricLoss, canonical, create_loss, loss_defaults, validate


def _batch(n_ids=4, k=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(n_ids * k, dim, generator=g), dim=1)
    labels = torch.arange(n_ids).repeat_interleave(k)
    return emb.requires_grad_(), labels


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_a_batch(loss):
    emb, labels = _batch()
    crit = MetricLoss(loss, "none", "cosine", num_classes=4, embedding_dim=16)
    value = crit(emb, labels)
    value.backward()
    assert value.item() > 0 and emb.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("miner", [m for m in MINERS if m != "none"])
@pytest.mark.parametrize(
    "loss,distance", [("triplet", "euclidean"), ("contrastive", "cosine"), ("circle", "cosine")]
)
def test_miners_with_pair_losses(miner, loss, distance):
    emb, labels = _batch(seed=1)
    value = MetricLoss(loss, miner, distance)(emb, labels)
    assert torch.isfinite(value)


def test_names_defaults_and_errors():
    assert canonical("Sub-Center-ArcFace") == "subcenter_arcface"
    assert loss_defaults("arcface")["margin"] == 28.6  # degrees, as PML takes it
    assert canonical("Cos-Face") == "cosface" and loss_defaults("cosface")["margin"] == 0.35  # cosine units
    assert loss_defaults("contrastive", "euclidean") == {"pos_margin": 0.0, "neg_margin": 1.0}
    assert create_loss("triplet", "cosine", margin=0.3).margin == 0.3
    with pytest.raises(ConfigError, match="loss 'focal'"):
        validate("focal")
    with pytest.raises(ConfigError, match="miner 'hardest'"):
        validate("triplet", "hardest")
    with pytest.raises(ConfigError, match="distance = 'cosine'"):
        validate("arcface", "none", "euclidean")
    with pytest.raises(ConfigError, match="miner = 'none'"):
        validate("arcface", "hard")
    with pytest.raises(ConfigError, match="unknown parameter"):
        validate("triplet", loss_params={"margn": 0.1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [("triplet", "hard"), ("contrastive", "none")]


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for loss, miner in CASES:
            emb_all, labels_all = _batch(n_ids=4, k=3, seed=3)
            half = len(labels_all) // world
            # Each rank holds whole individuals (2 of the 4), as the P x K sampler arranges it.
            local = emb_all.detach()[rank * half : (rank + 1) * half].clone().requires_grad_()
            value = MetricLoss(loss, miner, "cosine")(local, labels_all[rank * half : (rank + 1) * half])
            value.backward()
            results[(loss, rank)] = (value.item(), local.grad.clone())
    finally:
        torch.distributed.destroy_process_group()


def test_gathered_loss_equals_single_process_loss():
    """Two gloo processes with half the batch each reproduce the one-process loss and gradient."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, _free_port(), results), nprocs=2, start_method="spawn")
        got = dict(results)
    for loss, miner in CASES:
        emb, labels = _batch(n_ids=4, k=3, seed=3)
        value = MetricLoss(loss, miner, "cosine")(emb, labels)
        value.backward()
        # The wrapper scales by the world size, so DDP's averaging yields the global gradient.
        assert got[(loss, 0)][0] == pytest.approx(2 * value.item(), rel=1e-5)
        grad = torch.cat([got[(loss, 0)][1], got[(loss, 1)][1]]) / 2
        assert torch.allclose(grad, emb.grad, atol=1e-6)


@pytest.mark.parametrize("loss", ["cosface", "arcface", "subcenter_arcface"])
def test_margin_warmup_scales_the_margin_from_plain_softmax_to_the_full_margin(loss):
    torch.manual_seed(0)
    crit = MetricLoss(loss, num_classes=6, embedding_dim=8, loss_params={"scale": 10.0})
    emb, labels = torch.randn(12, 8), torch.arange(12) % 6
    full = crit(emb, labels).item()
    crit.scale_margin(0.0)
    plain = crit(emb, labels).item()
    crit.scale_margin(0.5)
    half = crit(emb, labels).item()
    crit.scale_margin(2.0)  # clamped: never more than the configured margin
    assert crit(emb, labels).item() == pytest.approx(full)
    assert plain < half < full
    if loss == "cosface":  # no margin: cross-entropy over scale x cosine to the class weights
        w = torch.nn.functional.normalize(crit.inner_loss().W.t(), dim=1)
        cos = torch.nn.functional.normalize(emb, dim=1) @ w.t()
        assert plain == pytest.approx(torch.nn.functional.cross_entropy(10.0 * cos, labels).item(), rel=1e-5)


def test_margin_warmup_leaves_pair_losses_alone():
    crit = MetricLoss("triplet", miner="none")
    assert crit.full_margin is None
    crit.scale_margin(0.0)  # nothing to scale; no error
