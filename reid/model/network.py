"""The network a :class:`~reid.model.spec.ModelSpec` describes: backbone (cut at a layer when
asked), pooling, neck, L2 normalisation."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError, ReidError
from reid.model import weight_sources
from reid.model.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, timm_with_backbones, validate_spec

__all__ = ["GeM", "ReidModel", "build_backbone", "create_model", "resolve_spec"]


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): p=1 is average, large p tends to max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=dims).pow(1.0 / p)


class ReidModel(nn.Module):
    """Backbone -> pooling -> neck -> L2 normalisation; input [B, 3, S, S] normalised floats."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        width = backbone.num_features
        self._fmt = str(getattr(backbone, "output_fmt", "NCHW"))
        self._prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
        self.gem = GeM() if spec.pooling == "gem" else None
        if spec.neck == "identity":
            self.neck: nn.Module = nn.Identity()
        else:
            layers: list[nn.Module] = [nn.Linear(width, spec.embedding_dim, bias=spec.neck == "linear")]
            if spec.neck == "linear_bn":
                layers.append(nn.BatchNorm1d(spec.embedding_dim))
            self.neck = nn.Sequential(*layers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output: feature maps or tokens (pooled features for ``pooling='head'``)."""
        if self.spec.pooling == "head":
            return self.backbone(x)  # built with num_classes=0: timm's own pooling, no classifier
        return self.backbone.forward_features(x)

    def pool(self, f: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, C] from :meth:`trunk`'s output."""
        if self.spec.pooling == "head":
            return f
        if f.ndim == 3:  # tokens [B, N, C]: pool patch tokens, not the class/register tokens
            f, dims = f[:, self._prefix :], (1,)
        elif self._fmt == "NHWC":
            dims = (1, 2)
        else:
            dims = (2, 3)
        return self.gem(f, dims) if self.gem is not None else f.mean(dim=dims)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features [B, C]."""
        return self.pool(self.trunk(x))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Embeddings from :meth:`trunk`'s output: pooling, neck, L2 normalisation (what a frozen
        backbone's training updates)."""
        return F.normalize(self.neck(self.pool(f)).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Backbone parameters and head parameters (pooling + neck), for separate learning rates."""
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return {"backbone": list(self.backbone.parameters()), "head": head}


def build_backbone(spec: ModelSpec, pretrained: str | None) -> nn.Module:
    """The timm backbone with its pretrained weights (when named), cut at ``feature_layer``."""
    backbone = _whole_backbone(spec, pretrained)
    if spec.feature_layer is not None:
        _cut(backbone, spec)
    return backbone


def _cut(backbone: nn.Module, spec: ModelSpec) -> None:
    """Drop every layer after ``spec.feature_layer`` (timm's own pruning, so forward_features stops there)."""
    import inspect

    prune = getattr(backbone, "prune_intermediate_layers", None)
    if prune is None:
        raise ConfigError(
            f"feature_layer: backbone {spec.backbone!r} cannot be cut at a layer (timm has no "
            "prune_intermediate_layers for it); leave feature_layer unset"
        )
    kwargs: dict = {"prune_head": True, "prune_norm": True}
    if "extra_blocks" in inspect.signature(prune).parameters:
        kwargs["extra_blocks"] = True  # EfficientNet/MobileNet: index every block, not only stage ends
    try:
        prune(indices=[spec.feature_layer], **kwargs)
    except (AssertionError, IndexError, ValueError) as e:
        raise ConfigError(
            f"feature_layer {spec.feature_layer}: not a layer of {spec.backbone!r} ({e})"
        ) from e


def _whole_backbone(spec: ModelSpec, pretrained: str | None) -> nn.Module:
    timm = timm_with_backbones()

    kwargs: dict = {"num_classes": 0}
    if spec.pooling != "head":
        kwargs["global_pool"] = ""
    if pretrained is None:
        return timm.create_model(spec.backbone, pretrained=False, **kwargs)
    if weight_sources.is_source(pretrained):
        model = timm.create_model(spec.backbone, pretrained=False, **kwargs)
        return weight_sources.load_pretrained(model, spec.backbone, pretrained)
    if pretrained == "timm":
        try:
            return timm.create_model(spec.backbone, pretrained=True, **kwargs)
        except Exception as e:  # network, missing weights, hub auth: say which model and why
            raise ReidError(
                f"could not load pretrained weights for {spec.backbone!r}: {type(e).__name__}: {e}. "
                "Offline? Download the weights file and pass its path as `pretrained`."
            ) from e
    path = os.path.expanduser(pretrained)
    try:
        return timm.create_model(
            spec.backbone, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs
        )
    except Exception as e:  # noqa: BLE001 - a mismatched file is a user error, named
        raise ReidError(
            f"pretrained weights file {path}: does not fit backbone {spec.backbone!r}: {type(e).__name__}: {e}"
        ) from e


def resolve_spec(spec: ModelSpec, backbone: nn.Module | None = None) -> ModelSpec:
    """Fill what the spec leaves open (mean/std, identity width) from the backbone's timm config."""
    timm = timm_with_backbones()

    if backbone is None:
        backbone = build_backbone(dataclasses.replace(spec, pooling="avg"), None)
    cfg = dict(timm.data.resolve_model_data_config(backbone))
    if weight_sources.is_source(spec.pretrained):  # the preprocessing the source's weights expect
        source = weight_sources.get_source(spec.pretrained)
        cfg.update(mean=source.mean, std=source.std)
    changes: dict = {}
    if spec.mean is None:
        changes["mean"] = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    if spec.std is None:
        changes["std"] = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if spec.neck == "identity":
        changes["embedding_dim"] = int(backbone.num_features)
    return dataclasses.replace(spec, **changes)


def create_model(spec: ModelSpec, load_pretrained: bool = True) -> ReidModel:
    """Build the model a spec describes (pretrained backbone weights only when asked and named)."""
    validate_spec(spec)
    backbone = build_backbone(spec, spec.pretrained if load_pretrained else None)
    return ReidModel(resolve_spec(spec, backbone), backbone)
