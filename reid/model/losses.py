"""Metric-learning losses and miners from pytorch-metric-learning (PML), chosen by name.

Margins are in the unit PML uses for each loss and distance:

- ``contrastive``: ``pos_margin``/``neg_margin`` in the distance's own unit. Cosine similarity:
  positives are pulled above ``pos_margin`` (default 1.0), negatives pushed below ``neg_margin``
  (0.5). Euclidean distance between unit vectors (0 to 2): positives pulled within ``pos_margin``
  (0.0), negatives pushed beyond ``neg_margin`` (1.0, i.e. cosine 0.5: the same geometry).
- ``triplet``: ``margin`` between the anchor-positive and anchor-negative similarity (cosine, 0.1)
  or distance (euclidean, 0.2).
- ``circle``: ``m`` (relaxation, 0.4) and ``gamma`` (scale, 80); cosine only.
- ``arcface`` / ``subcenter_arcface``: ``margin`` in **degrees** (28.6 = 0.5 rad), ``scale`` 64,
  ``sub_centers`` 3; a learnt [classes x dim] weight matrix; cosine only.
- ``cosface`` (additive cosine margin, a.k.a. large-margin cosine loss): ``margin`` in **cosine**
  units (0.35), ``scale`` 64; a learnt weight matrix like ArcFace's. Its margin does not bend
  with the angle, which makes it the easier of the two to train from random initialisation.
  Still, from random weights with many classes per batch a class-weight loss can collapse the
  features for epochs (benchmarks/recipe_start.py); the from-scratch recipe uses ``circle``.

Miners (pair and triplet losses only): ``hard`` (batch-hard: hardest positive and negative per
anchor), ``semihard`` (triplets whose negative lies within the margin but beyond the positive),
``easy`` (easiest positive with a semi-hard negative, Xuan et al. 2020: stabler on noisy labels
and large intra-individual variation), ``none`` (all pairs/triplets in the batch).

Across workers, :class:`MetricLoss` mines and computes pair losses over the embeddings gathered
from every worker (PML's distributed wrappers), so negatives come from the whole global batch.
Classification losses (ArcFace) need no gathering; their weight matrix is kept in sync by
wrapping the criterion in DistributedDataParallel (the training job does this).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from reid.errors import ConfigError

PAIR_LOSSES = ("contrastive", "triplet", "circle")
CLASSIFICATION_LOSSES = ("arcface", "subcenter_arcface", "cosface")
LOSSES = PAIR_LOSSES + CLASSIFICATION_LOSSES
MINERS = ("none", "easy", "semihard", "hard")
DISTANCES = ("cosine", "euclidean")
_ALIASES = {
    "arc_face": "arcface",
    "sub_center_arcface": "subcenter_arcface",
    "cos_face": "cosface",
    "subcenterarcface": "subcenter_arcface",
    "triplet_margin": "triplet",
    "semi_hard": "semihard",
    "batch_hard": "hard",
    "": "none",
}


def canonical(name: str | None) -> str:
    """Lower-case, ``-`` as ``_``, common aliases folded (``sub-center-arcface`` -> ``subcenter_arcface``)."""
    n = (name or "").strip().lower().replace("-", "_")
    return _ALIASES.get(n, n)


def is_classification(loss: str) -> bool:
    """True for losses with a per-individual weight matrix (ArcFace family)."""
    return canonical(loss) in CLASSIFICATION_LOSSES


def is_pair_loss(loss: str) -> bool:
    """True for losses built from positive pairs within the batch (need >= 2 images per individual)."""
    return canonical(loss) in PAIR_LOSSES


def loss_defaults(loss: str, distance: str = "cosine") -> dict:
    """The default parameters of a loss for a distance, in PML's units (see the module docstring)."""
    loss, distance = canonical(loss), canonical(distance)
    cos = distance == "cosine"
    return {
        "contrastive": {"pos_margin": 1.0, "neg_margin": 0.5}
        if cos
        else {"pos_margin": 0.0, "neg_margin": 1.0},
        "triplet": {"margin": 0.1 if cos else 0.2},
        "circle": {"m": 0.4, "gamma": 80},
        "arcface": {"margin": 28.6, "scale": 64.0},
        "subcenter_arcface": {"margin": 28.6, "scale": 64.0, "sub_centers": 3},
        "cosface": {"margin": 0.35, "scale": 64.0},
    }[loss]


def _pml_loss_class(loss: str):
    from pytorch_metric_learning import losses as L

    return {
        "contrastive": L.ContrastiveLoss,
        "triplet": L.TripletMarginLoss,
        "circle": L.CircleLoss,
        "arcface": L.ArcFaceLoss,
        "subcenter_arcface": L.SubCenterArcFaceLoss,
        "cosface": L.CosFaceLoss,
    }[loss]


def _check_params(cls, params: dict, what: str, reserved: tuple[str, ...] = ()) -> None:
    accepted = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= {p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")}
    accepted -= {"distance", "reducer", "embedding_regularizer", "weight_regularizer", *reserved}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"{what}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")


def validate(
    loss: str,
    miner: str = "none",
    distance: str = "cosine",
    loss_params: dict | None = None,
    miner_params: dict | None = None,
) -> tuple[str, str, str]:
    """Check a loss/miner/distance choice by name; returns the canonical names or raises ConfigError."""
    loss_c, miner_c, dist_c = canonical(loss), canonical(miner), canonical(distance)
    if loss_c not in LOSSES:
        raise ConfigError(f"loss {loss!r}: expected one of {', '.join(LOSSES)}")
    if miner_c not in MINERS:
        raise ConfigError(f"miner {miner!r}: expected one of {', '.join(MINERS)}")
    if dist_c not in DISTANCES:
        raise ConfigError(f"distance {distance!r}: expected one of {', '.join(DISTANCES)}")
    if loss_c in ("circle", *CLASSIFICATION_LOSSES) and dist_c != "cosine":
        raise ConfigError(f"loss {loss_c!r} is defined on cosine similarity; set distance = 'cosine'")
    if loss_c in CLASSIFICATION_LOSSES and miner_c != "none":
        raise ConfigError(
            f"miner {miner_c!r} does not apply to the classification loss {loss_c!r}; set miner = 'none'"
        )
    _check_params(
        _pml_loss_class(loss_c),
        loss_params or {},
        f"loss {loss_c!r}",
        reserved=("num_classes", "embedding_size"),
    )
    if miner_c != "none":
        _check_params(type(_miner(miner_c, dist_c, {}, 0.2)), miner_params or {}, f"miner {miner_c!r}")
    return loss_c, miner_c, dist_c


def create_distance(distance: str):
    """PML distance object: cosine similarity, or euclidean distance between L2-normalised vectors."""
    from pytorch_metric_learning import distances as D

    if canonical(distance) == "cosine":
        return D.CosineSimilarity()
    return D.LpDistance(normalize_embeddings=True, p=2, power=1)


def create_loss(
    loss: str,
    distance: str = "cosine",
    num_classes: int | None = None,
    embedding_dim: int | None = None,
    **params,
) -> nn.Module:
    """A PML loss by name with this project's defaults (overridden by ``params``)."""
    loss_c, _, dist_c = validate(loss, "none", distance, params)
    kwargs = {**loss_defaults(loss_c, dist_c), **params}
    cls = _pml_loss_class(loss_c)
    if loss_c in CLASSIFICATION_LOSSES:
        if not num_classes or not embedding_dim:
            raise ConfigError(f"loss {loss_c!r} needs num_classes and embedding_dim")
        return cls(num_classes=int(num_classes), embedding_size=int(embedding_dim), **kwargs)
    return cls(distance=create_distance(dist_c), **kwargs)


def _miner(miner: str, distance: str, params: dict, margin: float):
    from pytorch_metric_learning import miners as M

    dist = create_distance(distance)
    if miner == "hard":
        return M.BatchHardMiner(distance=dist, **params)
    if miner == "semihard":
        return M.TripletMarginMiner(
            **{"margin": margin, "type_of_triplets": "semihard", **params}, distance=dist
        )
    if miner == "easy":
        return M.BatchEasyHardMiner(
            **{"pos_strategy": "easy", "neg_strategy": "semihard", **params}, distance=dist
        )
    raise ConfigError(f"miner {miner!r}: expected one of {', '.join(MINERS)}")


def create_miner(miner: str, distance: str = "cosine", loss: str = "triplet", **params):
    """A PML miner by name (None for ``none``); semi-hard uses the triplet margin of ``loss``."""
    miner_c, dist_c = canonical(miner), canonical(distance)
    if miner_c == "none":
        return None
    margin = loss_defaults("triplet", dist_c)["margin"]
    if canonical(loss) == "triplet":
        margin = params.pop("loss_margin", margin)
    params.pop("loss_margin", None)
    return _miner(miner_c, dist_c, params, margin)


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


class MetricLoss(nn.Module):
    """Miner + loss in one module: ``forward(embeddings, labels) -> scalar``.

    Under torch.distributed with several workers, pair losses mine and compute over the embeddings
    of every worker (PML's gathered-embedding wrappers; the loss is scaled by the world size so
    DDP's gradient averaging yields the gradient of the global loss). Classification losses are
    per-sample, so they stay local and DDP averaging alone gives the global gradient.
    """

    def __init__(
        self,
        loss: str,
        miner: str = "none",
        distance: str = "cosine",
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        loss_params: dict | None = None,
        miner_params: dict | None = None,
    ):
        super().__init__()
        self.loss_name, self.miner_name, self.distance = validate(
            loss, miner, distance, loss_params, miner_params
        )
        loss_params = dict(loss_params or {})
        self.loss = create_loss(self.loss_name, self.distance, num_classes, embedding_dim, **loss_params)
        mp = dict(miner_params or {})
        if "margin" in loss_params:
            mp.setdefault("loss_margin", loss_params["margin"])
        self.miner = create_miner(self.miner_name, self.distance, self.loss_name, **mp)
        self._wrapped = False
        # the configured margin in the loss's own unit (ArcFace: radians, once PML converted degrees)
        self.full_margin = (
            float(self.inner_loss().margin) if self.loss_name in CLASSIFICATION_LOSSES else None
        )

    def scale_margin(self, fraction: float) -> None:
        """Margin losses: apply ``fraction`` (0-1) of the configured margin (a margin warm-up).

        From random initialisation every class sits at cosine ~0, where the full margin holds the
        loss at its chance level (about scale x margin + ln(classes)) and gives the network little
        to follow; when it escapes that plateau then depends on noise (a rounding difference in
        decoding moved it by ~15 epochs). Ramping the margin up from 0 starts from a plain
        normalised softmax, which learns at once, and reaches the margin the recipe asked for.
        """
        if self.full_margin is not None:
            self.inner_loss().margin = self.full_margin * min(1.0, max(0.0, fraction))

    def _wrap(self) -> None:
        """Swap in PML's distributed wrappers once torch.distributed is up (pair losses only)."""
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

        if self._wrapped or self.loss_name in CLASSIFICATION_LOSSES or not _distributed():
            return
        self.loss = DistributedLossWrapper(self.loss, efficient=False)
        if self.miner is not None:
            self.miner = DistributedMinerWrapper(self.miner, efficient=False)
        self._wrapped = True

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._wrap()
        embeddings = embeddings.float()
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)

    def inner_loss(self) -> nn.Module:
        """The PML loss itself (unwrapped): holds the ArcFace weight matrix when there is one."""
        return getattr(self.loss, "loss", self.loss)
