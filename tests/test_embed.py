"""The embed job on a real local Ray: exactness, rejects, resume, S3."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.embed import EmbedConfig, read_embeddings, run
from jobs.ingest import IngestConfig
from jobs.ingest import run as ingest
from reid import archive, manifest, storage
from reid.archive import ArchiveWriter
from reid.errors import ReidError
from reid.images.transforms import preprocess
from reid.model.network import create_model
from reid.model.package import load_package, save_package
from reid.model.spec import ModelSpec
from tests.support.images import bad_folder, jpeg_bytes, photo

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec(backbone="resnet10t", embedding_dim=32, input_size=64)
    path = str(tmp_path_factory.mktemp("model") / "pkg")
    save_package(create_model(spec, load_pretrained=False), spec, path)
    return path


def _archive(path, n=40, per_group=None):
    w = ArchiveWriter(str(path))
    if per_group:
        w.row_group_bytes = 1
    for i in range(n):
        bbox = {"x": 4.0, "y": 2.0, "w": 60.0, "h": 50.0} if i % 3 == 0 else None
        w.add(
            {
                "image_id": f"img{i:03d}",
                "image": jpeg_bytes(photo(96, 64, seed=i)),
                "individual_id": f"ind{i % 5}",
                "survey": "2024",
                "bbox": bbox,
                "source": f"mem://{i}",
            }
        )
    w.close()
    manifest.write_manifest(str(path), "ingest", {}, [], {"rows": n}, manifest.now())
    return str(path)


def test_embeddings_equal_direct_model_call_and_rejects_listed(tmp_path, model_dir, ray_local):
    """The CPU layout (each model actor decodes its own units); the S3 test runs the other one."""
    expect = bad_folder(tmp_path / "src")
    arch = str(tmp_path / "arch")
    ingest(IngestConfig(src=str(tmp_path / "src"), out=arch))
    # add rows that decode badly at embed time (bytes that passed no ingest check)
    extra = ArchiveWriter(arch + "/extra", skip_ids=archive.existing_ids(arch))
    extra.add({"image_id": "broken", "image": b"\xff\xd8\xff" + b"\x00" * 100, "source": "mem://broken"})
    extra.close()
    out = str(tmp_path / "emb")
    s = run(EmbedConfig(archive=arch, model=model_dir, out=out, batch_size=4, num_cpus=2))
    n_good = sum(v is None for v in expect.values())
    assert s["embedded"] == n_good and s["rejected"] == 1
    assert s["inline_decode"] and s["actors"] == 2  # one single-threaded actor per CPU
    emb = read_embeddings(out)
    assert emb.num_rows == n_good
    rejects = storage.read_parquet(out + "/_rejects.parquet").to_pylist()
    assert [r["image_id"] for r in rejects] == ["broken"] and rejects[0]["reason"].startswith(
        ("corrupt", "truncated")
    )
    model, spec = load_package(model_dir)
    rows = {r["image_id"]: r for r in archive.read_archive(arch).to_pylist()}
    x = torch.stack(
        [preprocess(rows[i]["image"], rows[i]["bbox"], spec)[0] for i in emb["image_id"].to_pylist()]
    )
    with torch.no_grad():
        direct = model(x).numpy()
    got = np.stack(emb["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, direct, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert set(emb["model_id"].to_pylist()) == {spec.model_id}
    # each embedding carries its archive row's photo_id (ingest's hash of the photo, not image_id)
    photo = dict(zip(emb["image_id"].to_pylist(), emb["photo_id"].to_pylist()))
    assert photo == {i: rows[i]["photo_id"] for i in photo} and all(photo.values())
    assert manifest.read_manifest(out)["counts"] == {"embeddings": n_good, "rejects": 1, "units": 2}


def test_resume_skips_committed_units_and_refuses_other_model(tmp_path, model_dir, ray_local):
    arch = _archive(tmp_path / "arch", n=40, per_group=True)
    units = len(__import__("jobs.embed", fromlist=["plan_units"]).plan_units(arch))
    assert units == 40
    out = str(tmp_path / "emb")
    first = run(EmbedConfig(archive=arch, model=model_dir, out=out, num_cpus=2, max_units=15))
    assert first["embedded"] == 15 and manifest.read_manifest(out) is None  # not committed as a whole
    second = run(EmbedConfig(archive=arch, model=model_dir, out=out, num_cpus=2))
    assert second["skipped_units"] == 15 and second["embedded"] == 25
    third = run(EmbedConfig(archive=arch, model=model_dir, out=out, num_cpus=2))
    assert third["todo_units"] == 0 and third["embedded"] == 0
    ids = read_embeddings(out).column("image_id").to_pylist()
    assert sorted(ids) == [f"img{i:03d}" for i in range(40)]
    emb = read_embeddings(out)  # rows written without photo_id: one photo per annotation
    assert emb["photo_id"].to_pylist() == emb["image_id"].to_pylist()
    other = str(tmp_path / "other")
    spec = ModelSpec(backbone="resnet10t", embedding_dim=32, input_size=64)
    torch.manual_seed(1)
    save_package(create_model(spec, load_pretrained=False), spec, other)
    with pytest.raises(ReidError, match="holds embeddings of model"):
        run(EmbedConfig(archive=arch, model=other, out=out, num_cpus=2))


def test_bad_inputs_fail_before_work(tmp_path, model_dir):
    with pytest.raises(ReidError, match="archive not found"):
        run(EmbedConfig(archive=str(tmp_path / "none"), model=model_dir, out=str(tmp_path / "o")))
    arch = _archive(tmp_path / "a", n=3)
    with pytest.raises(ReidError, match="not a model package"):
        run(EmbedConfig(archive=arch, model=str(tmp_path), out=str(tmp_path / "o")))
    storage.write_parquet(pa.table({"image_id": ["x"]}), str(tmp_path / "bad" / "p.parquet"))
    with pytest.raises(ReidError, match="column 'image' is missing"):
        run(EmbedConfig(archive=str(tmp_path / "bad"), model=model_dir, out=str(tmp_path / "o")))


@pytest.mark.s3
def test_s3_archive_to_s3_embeddings(tmp_path, model_dir, s3_bucket, ray_local):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(photo(seed=i)))
    arch = f"{s3_bucket}/archive"
    ingest(IngestConfig(src=str(tmp_path / "src"), out=arch))
    out = f"{s3_bucket}/emb"
    # the GPU layout (decode actors feeding the model actors), forced on CPU
    s = run(EmbedConfig(archive=arch, model=model_dir, out=out, num_cpus=2, inline_decode=False))
    assert s["embedded"] == 6 and s["inline_decode"] is False and s["actors"] == 1
    assert read_embeddings(out).num_rows == 6
    assert run(EmbedConfig(archive=arch, model=model_dir, out=out, num_cpus=2))["todo_units"] == 0


def test_config_makes_paths_absolute_and_keeps_model_names(tmp_path, monkeypatch):
    """Local paths are resolved in the driver (Ray workers run elsewhere); model names stay names."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg").mkdir()
    cfg = EmbedConfig(archive="arch", model="pkg", out="./emb")
    assert (cfg.archive, cfg.model, cfg.out) == tuple(str(tmp_path / n) for n in ("arch", "pkg", "emb"))
    for name in ("timm:resnet18", "hf-hub:org/name", "efficientnet-lite:efficientnet_lite0"):
        assert EmbedConfig(archive="a", model=name, out="e").model == name
    with pytest.raises(ValueError, match="must not be empty"):
        EmbedConfig(archive=" ", model="timm:resnet18", out="e")
