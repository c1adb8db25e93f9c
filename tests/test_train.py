"""`reid train`: real Ray Train workers on CPU, real timm models, a small generated archive."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from reid.archive import ArchiveWriter, stable_id
from reid.errors import ConfigError

pytestmark = pytest.mark.ray

FAST = dict(
    backbone="resnet10t", input_size=32, embedding_dim=32, p=2, k=2, augment=0.0, val_fraction=0.25,
    val_exclude="none", lr_backbone=1e-3, lr_head=3e-3, warmup_epochs=0.0, cpus_per_worker=1,
    workers=2, torch_threads=1, loss="contrastive", miner="none",
)  # fmt: skip


def _coat(ident: int, rng: np.random.Generator) -> Image.Image:
    """An individual's coat: a few coloured discs at fixed places, drawn with a little jitter."""
    g = np.random.default_rng(ident)
    img = Image.new("RGB", (48, 48), tuple(int(v) for v in g.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = g.integers(4, 40, 2) + rng.integers(-2, 3, 2)
        r = int(g.integers(4, 9))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in g.integers(0, 255, 3)))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (48, 48, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_archive(out: str, individuals: int = 8, per: int = 6, singletons: bool = False) -> str:
    rng = np.random.default_rng(0)
    w = ArchiveWriter(out)
    for i in range(individuals):
        for j in range(1 if singletons else per):
            buf = io.BytesIO()
            _coat(i, rng).save(buf, format="PNG")
            w.add({"image_id": stable_id("t", str(i), str(j)), "image": buf.getvalue(), "individual_id": f"ind{i}",
                   "source": f"ind{i}/{j}.png", "width": 48, "height": 48, "camera_id": f"c{j % 2}"})  # fmt: skip
    w.close()
    return out


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    return make_archive(str(tmp_path_factory.mktemp("arch") / "archive"))


def test_split_cache_and_validation_pixels(tmp_path, small_archive):
    """Identity-disjoint hold-out; the cache keeps every row or names why not; validation pixels
    are exactly what the embed job feeds the model (reid.images.preprocess)."""
    from reid.data import trainval
    from reid.data.cache import ensure_cache
    from reid.data.dataset import CachedImages
    from reid.data.labels import read_labels
    from reid.images.preprocess import decode_for_model

    labels = read_labels(small_archive)
    split = trainval.make_split(labels, val_fraction=0.25, seed=0, min_train_images=2)
    train_ids = set(split.train.column("individual_id").to_pylist())
    val_ids = set(split.val.column("individual_id").to_pylist())
    assert len(val_ids) == 2 and not train_ids & val_ids and len(split.classes) == 6
    # A corrupt row is reported as a reject with its reason, not silently dropped.
    bad = make_archive(str(tmp_path / "bad"), individuals=2, per=3)
    w = ArchiveWriter(bad)
    w.add({"image_id": "broken", "image": b"not an image", "individual_id": "ind0", "source": "x.png"})
    w.close()
    info = ensure_cache(bad, ["broken", *read_labels(bad).column("image_id").to_pylist()],
                                  str(tmp_path / "cache"), "train", 32)  # fmt: skip
    assert info.rows == 6 and [r["image_id"] for r in info.rejects] == ["broken"]
    assert "corrupt" in info.rejects[0]["reason"]
    again = ensure_cache(bad, ["broken", *read_labels(bad).column("image_id").to_pylist()],
                                   str(tmp_path / "cache"), "train", 32)  # fmt: skip
    assert not again.built and again.path == info.path
    ids = split.val.column("image_id").to_pylist()
    ev = ensure_cache(small_archive, ids, str(tmp_path / "cache"), "eval", 40)
    ds = CachedImages(ev.path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=40)
    from reid.archive import read_archive

    rows = {r["image_id"]: r for r in read_archive(small_archive).to_pylist()}
    x, _ = ds[0]
    want, _ = decode_for_model(rows[ds.image_ids[0]]["image"], None, 40)
    assert np.allclose(x.numpy(), (want.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_bad_config_fails_before_any_worker(tmp_path, small_archive):
    import ray

    from jobs.train import make_config, run

    ray.shutdown()  # a Ray left by an earlier test would hide one these calls started

    out = str(tmp_path / "m")
    with pytest.raises(ConfigError, match="resnet18"):
        run(make_config(archive=small_archive, out=out, backbone="resnet18x"))
    with pytest.raises(ConfigError, match="loss 'focal'"):
        run(make_config(archive=small_archive, out=out, loss="focal"))
    with pytest.raises(ConfigError, match="miner 'hardest'"):
        run(make_config(archive=small_archive, out=out, miner="hardest"))
    with pytest.raises(ConfigError, match="p=50"):
        run(make_config(archive=small_archive, out=out, p=50))
    singles = make_archive(str(tmp_path / "singles"), singletons=True)
    with pytest.raises(ConfigError, match="no individual has 2 or more"):
        run(make_config(archive=singles, out=out, loss="triplet"))
    cfg_file = tmp_path / "train.toml"
    cfg_file.write_text('[train]\nbackbone = "resnet10t"\nloss = "arcface"\nepochs = 3\nbogus = 1\n')
    with pytest.raises(ConfigError, match="bogus"):
        make_config(str(cfg_file), archive=small_archive, out=out)
    cfg_file.write_text("backbone: resnet10t\nloss: arcface\nepochs: 3\n")
    cfg_file = cfg_file.rename(tmp_path / "train.yaml")
    cfg = make_config(str(cfg_file), archive=small_archive, out=out, epochs=5)
    assert (cfg.loss, cfg.epochs, cfg.miner) == ("arcface", 5, "semihard")
    assert not ray.is_initialized()  # every failure above came before Ray started


def test_two_workers_train_in_sync(tmp_path, small_archive, ray_local):
    """ArcFace on 2 workers: the loss falls and both replicas (backbone, head and the ArcFace
    weight matrix) hold identical weights after every epoch."""
    from jobs.train import make_config, run
    from reid.model.package import load_package

    out = str(tmp_path / "model")
    cfg = make_config(archive=small_archive, out=out, epochs=3, steps_per_epoch=5,
                      **{**FAST, "loss": "arcface", "lr_loss": 0.05})  # fmt: skip
    summary = run(cfg)
    assert summary["epochs_run"] == 3 and summary["replicas_in_sync"] is True
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    losses = [r["loss"] for r in history if r["epoch"] > 0]
    assert losses[-1] < losses[0], losses
    assert history[0]["epoch"] == 0 and "val_accuracy@1" in history[0]  # the untrained baseline
    assert all(r["replicas_in_sync"] for r in history)
    model, spec = load_package(out)
    assert spec.embedding_dim == 32 and spec.backbone == "resnet10t"
    m = json.loads((tmp_path / "model" / "_manifest.json").read_text())
    assert m["job"] == "train" and m["model_id"] == spec.model_id and m["config"]["loss"] == "arcface"
    assert os.listdir(tmp_path / "model" / "tensorboard")
    # The same command again: nothing to redo. Other settings under the same --out: refused by name.
    assert run(cfg)["status"].startswith("already trained")
    with pytest.raises(ConfigError, match="embedding_dim"):
        run(make_config(archive=small_archive, out=out, **{**FAST, "loss": "arcface", "embedding_dim": 16}))


def _train_worker_pids() -> list[int]:
    """Live Ray Train worker processes of *this* test's Ray (descendants of this process; other
    Ray instances on the machine are not ours to touch)."""
    import psutil

    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            continue
        if "RayTrainWorker" in title:
            pids.append(proc.pid)
    return pids


@pytest.mark.chaos
@pytest.mark.slow
def test_killed_worker_and_rerun_resume_from_checkpoints(tmp_path, small_archive, ray_local):
    """A pair loss (negatives gathered from both workers); one worker is SIGKILLed after the first
    checkpoint and the run finishes from it; then a re-run with more epochs resumes, not restarts."""
    from jobs.train import make_config, run

    out = tmp_path / "chaos"
    cfg = make_config(
        archive=small_archive, out=str(out), epochs=3, steps_per_epoch=8, max_failures=2, **FAST
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run(cfg)), daemon=True)
    thread.start()
    deadline = time.time() + 300
    snapshot = out / "_ray" / "train" / "checkpoint_manager_snapshot.json"
    while not (snapshot.exists() and "epoch-0001" in snapshot.read_text()):  # registered, not just written
        assert thread.is_alive() and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.2)
    pids = _train_worker_pids()
    assert pids, "no live Ray Train worker to kill"
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert result["epochs_run"] == 3 and result["replicas_in_sync"] is True
    assert result["resumed_from_epochs"] and min(result["resumed_from_epochs"]) >= 1
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    losses = [r["loss"] for r in history if r["epoch"] > 0]
    assert losses[-1] < losses[0], losses
    # The same --out with more epochs: Ray restores the last checkpoint (epoch 3) and carries on.
    more = run(
        make_config(archive=small_archive, out=str(out), epochs=4, steps_per_epoch=8, max_failures=2, **FAST)
    )
    assert more["epochs_run"] == 4 and 3 in more["resumed_from_epochs"]
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [0, 1, 2, 3, 4]


@pytest.mark.s3
@pytest.mark.slow
def test_train_to_s3(s3_bucket, small_archive, ray_local):
    """Model package, history, manifest and Ray checkpoints all land under an s3:// --out."""
    from jobs.train import make_config, run
    from reid import storage
    from reid.model.package import load_package

    out = f"{s3_bucket}/models/m1"
    summary = run(make_config(archive=small_archive, out=out, epochs=1, steps_per_epoch=3,
                              **{**FAST, "workers": 1}))  # fmt: skip
    assert summary["epochs_run"] == 1
    assert load_package(out)[1].backbone == "resnet10t"
    for name in ("history.json", "_manifest.json", "_ray/train/epoch-0001/state.pt"):
        assert storage.exists(storage.join(out, name)), name


def test_frozen_backbone_first_then_fine_tuned(tmp_path, small_archive):
    """freeze_epochs: the backbone keeps its (pretrained) weights while the head learns, then trains."""
    import torch

    from jobs.train import make_config
    from reid.training import Session

    cfg = make_config(
        None, **{**FAST, "workers": 1, "steps_per_epoch": 3, "epochs": 3, "freeze_epochs": 1, "loss": "arcface"},
        archive=small_archive, out=str(tmp_path / "m"),
    )  # fmt: skip
    s = Session(cfg)

    def snapshot(module):  # weights and BatchNorm statistics
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def same(a, module):
        return all(torch.equal(v, module.state_dict()[k]) for k, v in a.items())

    backbone, head = snapshot(s.model.backbone), snapshot(s.model.neck)
    s.train_epoch(1)
    assert same(backbone, s.model.backbone), "a frozen backbone changed (weights or BatchNorm statistics)"
    assert not same(head, s.model.neck)
    s.train_epoch(2)
    assert not same(backbone, s.model.backbone)


def test_closed_split_trains_without_validation(tmp_path, small_archive):
    """A closed split holds no unseen individual: train on its train rows, validate nothing
    (score with `reid evaluate --protocol split`), instead of refusing."""
    from reid import archive
    from reid.data import splits, trainval
    from reid.data.labels import read_labels

    table = archive.read_archive(small_archive, columns=splits.INPUT_COLUMNS)
    closed = splits.make_split(table, "closed-photo", test_fraction=0.3, seed=0)
    uri = str(tmp_path / "closed.parquet")
    splits.write_split(closed, uri, {"job": "split", "config": {"kind": "closed-photo"}})
    plan = trainval.make_split(read_labels(small_archive), uri)
    n_train = sum(1 for r in closed.to_pylist() if r["split"] == "train")
    assert plan.train.num_rows == n_train and plan.val.num_rows == 0
