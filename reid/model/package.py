"""Model packages on storage (weights + ``model.json`` + a content-hash ``model_id``), and
published models used as they are (``timm:``, ``hf-hub:``, ``<weight source>:`` names)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
from torch import nn

from reid import storage
from reid.errors import ConfigError, ReidError
from reid.model import weight_sources
from reid.model.network import ReidModel, build_backbone, create_model, resolve_spec
from reid.model.spec import CONFIG, WEIGHTS, ModelSpec, is_hub_name, timm_with_backbones, validate_spec

__all__ = ["is_zero_shot", "load_package", "model_id", "read_spec", "save_package", "zero_shot_spec"]


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
    return name.startswith("timm:") or is_hub_name(name) or bool(sep and weight_sources.is_source(source))


def load_package(uri_or_name: str, map_location: str | torch.device = "cpu") -> tuple[ReidModel, ModelSpec]:
    """Load a model package (directory or s3:// prefix), or a zero-shot ``timm:``/``hf-hub:`` model.

    The weights are checked against the package's model_id, so a corrupt or hand-edited package
    is refused rather than producing embeddings under a wrong id.
    """
    from safetensors.torch import load

    if is_zero_shot(uri_or_name):
        timm = timm_with_backbones()

        spec = zero_shot_spec(uri_or_name)
        validate_spec(spec)
        backbone = build_backbone(spec, spec.pretrained)
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
            "(corrupt or modified package); re-save it with reid.model.package.save_package"
        )
    model = create_model(spec, load_pretrained=False)
    try:
        model.load_state_dict(load(weights))
    except RuntimeError as e:
        raise ReidError(f"{uri_or_name}: weights do not fit backbone {spec.backbone!r}: {e}") from e
    model.spec = spec
    return model.to(map_location).eval(), spec
