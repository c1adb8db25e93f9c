"""reid.api: a DataFrame (or an archive) in, embeddings out, in this process, without a job."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from jobs.ingest import IngestConfig
from jobs.ingest import run as ingest_run
from reid import api
from reid.errors import ReidError
from reid.images.preprocess import decode_for_model, normalize
from reid.model.network import create_model
from reid.model.package import save_package
from reid.model.spec import ModelSpec
from tests.support.formats import write_coco, write_megadetector


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec(backbone="resnet10t", embedding_dim=32, input_size=64)
    path = str(tmp_path_factory.mktemp("model") / "pkg")
    save_package(create_model(spec, load_pretrained=False), spec, path)
    return path


def test_embed_frame_matches_the_model_and_the_archive(tmp_path, model_dir):
    src = write_coco(tmp_path / "c")
    df = api.read_frame(str(src))
    usable = df[df["problem"].isna()].reset_index(drop=True)
    assert len(df) == 6 and len(usable) == 3  # 3 annotations + 3 rejects, as ingest counts them
    assert usable["bbox"].tolist()[0] == [10.0, 5.0, 40.0, 30.0]
    model = api.load_model(model_dir, device="cpu")
    X = api.embed_frame(usable, model)
    assert X.shape == (3, 32) and X.dtype == np.float32
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    # the same vector as the model called directly on the crop
    net, spec = model
    data = open(usable["path"][0], "rb").read()
    pix, _ = decode_for_model(data, {"x": 10, "y": 5, "w": 40, "h": 30}, 64)
    with torch.inference_mode():
        direct = net(normalize(pix[None].copy(), spec.mean, spec.std)).numpy()[0]
    assert np.allclose(X[0], direct, atol=1e-5)
    # two boxes of one photo are two different animals
    assert float(X[0] @ X[1]) < 0.9999
    # and the archive path gives the same vectors for the same annotations
    arch = str(tmp_path / "arch")
    ingest_run(IngestConfig(src=str(src), out=arch))
    meta, Y = api.embed_archive(arch, model_dir, columns=["image_id", "annotation_id"])
    order = {a: i for i, a in enumerate(meta["annotation_id"])}
    for j, ann in enumerate(usable["annotation_id"]):
        assert np.allclose(X[j], Y[order[ann]], atol=1e-5)


def test_normalised_boxes_and_errors(tmp_path, model_dir):
    md = write_megadetector(tmp_path / "md")
    df = api.read_frame(str(md), min_confidence=0.5)
    kept = df[df["problem"].isna()].reset_index(drop=True)
    assert len(kept) == 1 and bool(kept["bbox_normalized"][0])
    X = api.embed_frame(kept, model_dir)
    pixel = pd.DataFrame({"path": kept["path"], "bbox": [[9.6, 12.8, 48.0, 32.0]]})
    assert np.allclose(X, api.embed_frame(pixel, model_dir), atol=1e-5)  # fractions -> the same pixels
    bad = pd.DataFrame({"path": ["a.jpg", "nope.jpg"], "bbox": [None, None]})
    with pytest.raises(ReidError, match=r"row 1 .*nope\.jpg"):
        api.embed_frame(bad, model_dir, root=str(tmp_path / "md"))
    out = api.embed_frame(bad, model_dir, root=str(tmp_path / "md"), on_error="nan")
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()
    with pytest.raises(ReidError, match="no 'file' column"):
        api.embed_frame(bad, model_dir, path_col="file")
    assert json.loads(md.read_text())["images"]  # the fixture is real MegaDetector-shaped JSON
