"""Compact CNN backbones for small crops, registered in timm's model registry.

ImageNet backbones halve the resolution twice before their first stage (stride-2 stem + max-pool):
on a 64-128 px crop of an animal, spots a few pixels wide are gone before any feature sees them,
and a randomly initialised ResNet learns them slowly. ``reid_cnn_s`` halves the resolution once
per stage (five stages of two 3x3 convs, 32..384 channels, ~0.14 GMAC at 96 px): it trains from
scratch in minutes on a laptop CPU, which makes it the demo's and the tests' backbone. For real
archives start from a pretrained timm model instead.

Registered like any timm model (``timm.create_model("reid_cnn_s")``), so model packages, the
``pretrained`` weights-file option and zero-shot loading treat it as one. It has no published
weights: ``pretrained="timm"`` fails with timm's own message; a local weights file works.
"""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Plain stride-2 stages; timm's interface (forward_features / forward_head / num_features)."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256, 384),
        in_chans: int = 3,
        num_classes: int = 0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool {global_pool!r}: reid_cnn supports 'avg' or ''")
        chans = (in_chans, *widths)
        self.stages = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


default_cfgs = generate_default_cfgs(
    {
        name: {
            "num_classes": 0,
            "input_size": (3, 96, 96),
            "pool_size": (3, 3),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "stages.0.0",
            "classifier": "head",
        }
        for name in ("reid_cnn_s.untrained", "reid_cnn_m.untrained")
    }
)


def _create(variant: str, pretrained: bool, widths: tuple[int, ...], **kwargs) -> SmallCNN:
    return build_model_with_cfg(SmallCNN, variant, pretrained, widths=widths, **kwargs)


@register_model
def reid_cnn_s(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Five stride-2 stages, 32-384 channels (~4 M parameters)."""
    return _create("reid_cnn_s", pretrained, (32, 64, 128, 256, 384), **kwargs)


@register_model
def reid_cnn_m(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Twice the channels of ``reid_cnn_s`` (~4x the compute)."""
    return _create("reid_cnn_m", pretrained, (64, 128, 256, 512, 768), **kwargs)
