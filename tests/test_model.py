"""Model factory, model packages and preprocessing, with real (randomly initialised) timm models."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reid import storage
from reid.errors import ConfigError, ReidError
from reid.images.transforms import eval_transform, preprocess, train_transform
from reid.model.network import create_model
from reid.model.package import load_package, read_spec, save_package
from reid.model.spec import ModelSpec, validate_spec

TINY = "resnet10t"


def _png(w=40, h=30, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "pooling,neck,dim",
    [("gem", "linear_bn", 64), ("avg", "linear", 32), ("head", "identity", 0)],
)
def test_forward_is_l2_normalised(pooling, neck, dim):
    torch.manual_seed(0)
    spec = ModelSpec(backbone=TINY, embedding_dim=dim, input_size=64, pooling=pooling, neck=neck)
    model = create_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    want = 512 if neck == "identity" else dim  # resnet10t features are 512 wide
    assert out.shape == (3, want) and model.spec.embedding_dim == want
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.spec.mean is not None and len(model.spec.std) == 3


def test_token_backbone_pools_patch_tokens():
    spec = ModelSpec(backbone="vit_tiny_patch16_224", embedding_dim=16, input_size=224, pooling="gem")
    model = create_model(spec).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 16)
    assert model.spec.mean == (0.5, 0.5, 0.5)  # taken from the backbone's timm config


def test_package_round_trip_and_id_check(tmp_path):
    spec = ModelSpec(backbone=TINY, embedding_dim=24, input_size=48)
    model = create_model(spec).eval()
    uri = str(tmp_path / "pkg")
    mid = save_package(model, model.spec, uri)
    meta = json.loads((tmp_path / "pkg" / "model.json").read_text())
    for key in (
        "backbone",
        "embedding_dim",
        "input_size",
        "mean",
        "std",
        "pooling",
        "neck",
        "model_id",
        "pretrained",
        "created_at",
    ):
        assert key in meta
    assert meta["model_id"] == mid
    loaded, lspec = load_package(uri)
    assert lspec.model_id == mid and lspec.input_size == 48 and not loaded.training
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    # Same weights and config -> same id; any change of weights -> another id.
    assert save_package(loaded, lspec, str(tmp_path / "again")) == mid
    with torch.no_grad():
        loaded.neck[0].weight.add_(0.01)
    assert save_package(loaded, lspec, str(tmp_path / "changed")) != mid
    # A tampered package is refused by name.
    (tmp_path / "pkg" / "model.safetensors").write_bytes(
        (tmp_path / "changed" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ReidError, match="do not match model_id"):
        load_package(uri)
    with pytest.raises(ReidError, match="not a model package"):
        read_spec(str(tmp_path / "nothing"))


def test_package_on_s3(s3_bucket):
    spec = ModelSpec(backbone=TINY, embedding_dim=8, input_size=32, neck="linear")
    model = create_model(spec)
    uri = f"{s3_bucket}/models/m1"
    mid = save_package(model, model.spec, uri)
    assert storage.exists(storage.join(uri, "model.safetensors"))
    assert load_package(uri)[1].model_id == mid


def test_local_pretrained_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model(TINY, pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = create_model(
        ModelSpec(backbone=TINY, embedding_dim=8, input_size=32, pretrained=str(tmp_path / "w.safetensors"))
    )
    assert torch.equal(model.backbone.conv1[0].weight, src.conv1[0].weight)
    with pytest.raises(ConfigError, match="pretrained"):
        validate_spec(ModelSpec(backbone=TINY, pretrained=str(tmp_path / "missing.pth")))


def test_small_cnn_is_a_timm_model_with_local_weights(tmp_path):
    """reid_cnn_s (reid.model.backbones) goes through the same timm paths as any backbone."""
    import timm
    from safetensors.torch import save_file

    import reid.model.backbones  # noqa: F401 - registers the project's backbones

    assert timm.is_model("reid_cnn_s") and timm.is_model("reid_cnn_m")
    src = timm.create_model("reid_cnn_s", pretrained=False, num_classes=0)
    assert src(torch.randn(2, 3, 64, 64)).shape == (2, 384)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    spec = ModelSpec(
        backbone="reid_cnn_s", embedding_dim=16, input_size=64, pretrained=str(tmp_path / "w.safetensors")
    )
    model = create_model(spec)
    assert torch.equal(model.backbone.stages[0][0].weight, src.stages[0][0].weight)
    assert model(torch.randn(3, 3, 64, 64)).norm(dim=1).allclose(torch.ones(3))
    assert model.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    mid = save_package(model, model.spec, str(tmp_path / "pkg"))
    again, spec2 = load_package(str(tmp_path / "pkg"))
    assert spec2.model_id == mid and torch.equal(
        again.backbone.stages[4][3].weight, model.backbone.stages[4][3].weight
    )
    with pytest.raises(ReidError, match="No pretrained weights exist for reid_cnn_s"):
        create_model(ModelSpec(backbone="reid_cnn_s", pretrained="timm"))


def test_zero_shot_name_uses_real_loading_code(monkeypatch):
    # The real timm/hf-hub download path is taken; the hub's own offline switch makes it fail fast.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReidError, match="resnet10t"):
        load_package(f"timm:{TINY}")


def test_bad_specs_are_named():
    with pytest.raises(ConfigError, match="resnet18"):
        validate_spec(ModelSpec(backbone="resnet18x"))
    with pytest.raises(ConfigError, match="pooling"):
        validate_spec(ModelSpec(backbone=TINY, pooling="max"))
    with pytest.raises(ConfigError, match="neck"):
        validate_spec(ModelSpec(backbone=TINY, neck="mlp"))


def test_transforms_follow_the_spec():
    spec = ModelSpec(backbone=TINY, input_size=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = Image.new("RGB", (70, 50), (255, 0, 0))
    x = eval_transform(spec)(img)
    assert x.shape == (3, 40, 40)
    assert torch.allclose(x[0], torch.ones(40, 40)) and torch.allclose(x[1], -torch.ones(40, 40))
    assert train_transform(spec)(img).shape == (3, 40, 40)
    t, reason = preprocess(_png(), {"x": 5, "y": 5, "w": 20, "h": 10}, spec)
    assert reason is None and t.shape == (3, 40, 40)
    t, reason = preprocess(b"not an image", None, spec)
    assert t is None and reason.startswith("corrupt")


def test_flip_is_off_by_default():
    spec = ModelSpec(backbone=TINY, input_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:, :8] = 255  # bright left half
    img = Image.fromarray(arr)
    torch.manual_seed(0)
    left_brighter = [
        (lambda x: x[:, :, :8].mean() >= x[:, :, 8:].mean())(train_transform(spec, strength=0.0)(img))
        for _ in range(20)
    ]
    assert all(left_brighter)


def test_feature_layer_cuts_the_backbone_and_round_trips(tmp_path):
    """Mid-level features: the backbone stops after the named layer; packages rebuild the same cut."""
    spec = ModelSpec(backbone="efficientnet_lite0", feature_layer=4, embedding_dim=16)
    model = create_model(spec).eval()
    assert model.backbone.num_features == 80 and len(model.backbone.blocks) == 4  # stem = layer 0
    x = torch.rand(2, 3, 64, 64)
    save_package(model, None, str(tmp_path / "m"))
    loaded, loaded_spec = load_package(str(tmp_path / "m"))
    assert loaded_spec.feature_layer == 4 and torch.allclose(model(x), loaded(x), atol=1e-6)
    assert (
        create_model(ModelSpec(backbone="resnet18", feature_layer=3, embedding_dim=8)).backbone.num_features
        == 256
    )
    with pytest.raises(ConfigError, match="feature_layer cuts the backbone before its own pooling"):
        create_model(ModelSpec(backbone="resnet18", feature_layer=2, pooling="head"))
    # The field is left out of the identity hash when unset, so older packages keep their model ids.
    assert "feature_layer" not in ModelSpec(backbone="resnet18").identity()
