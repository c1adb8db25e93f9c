"""The synthetic survey generator and `reid synth`: determinism, population, bursts, truth, CLI."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.synth import SynthJobConfig, run
from reid import archive, manifest
from reid.errors import ConfigError
from reid.images.imageio import decode
from reid.schema import validate_archive
from reid.synthetic.render import Sprites
from reid.synthetic.scenes import generate
from reid.synthetic.survey import SynthConfig, plan
from reid.synthetic.truth import history_table, read_truth, truth_capture_history

REID = str(Path(sys.executable).with_name("reid"))
SMALL = dict(individuals=8, years=3, images_per_individual=5, seed=3, unlabeled_fraction=0.15)


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth") / "archive")
    run(SynthJobConfig(out=out, **SMALL))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes():
    c = SynthConfig(individuals=3, years=2, images_per_individual=3, seed=11)
    a = list(generate(c))
    b = list(generate(c))
    assert [r["image"] for r in a] == [r["image"] for r in b]
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    other = list(generate(SynthConfig(individuals=3, years=2, images_per_individual=3, seed=12)))
    assert {r["image_id"] for r in other}.isdisjoint(r["image_id"] for r in a)
    assert a[0]["image"] != other[0]["image"]


def test_rendering_one_image_does_not_depend_on_the_others():
    c = SynthConfig(individuals=4, years=2, images_per_individual=3, seed=5)
    everything = {r["image_id"]: r["image"] for r in generate(c)}
    last = plan(c).sightings[-1]
    alone = list(generate(c, skip_ids=set(everything) - {last.image_id}))
    assert len(alone) == 1 and alone[0]["image"] == everything[last.image_id]


def test_counts_labels_and_history_agree():
    c = SynthConfig(individuals=30, years=3, images_per_individual=6, seed=1, unlabeled_fraction=0.2)
    p = plan(c)
    n = len(p)
    assert 0.5 * 30 * 3 * 6 < n < 2 * 30 * 3 * 6
    assert sum(not s.labeled for s in p.sightings) == round(0.2 * n)
    per_survey = defaultdict(int)
    for s in p.sightings:
        per_survey[s.survey] += 1
    hist = history_table(p).to_pylist()
    for survey in c.surveys():
        assert per_survey[survey] == sum(h["n_images"] for h in hist if h["survey"] == survey)
    seen = sum(h["seen"] for h in hist)
    assert abs(n / seen - 6) < 1.5  # mean images per seen individual and survey


def test_survival_and_recruitment_show_across_years():
    c = SynthConfig(individuals=40, years=4, survival=0.7, recruitment=0.3, seed=2)
    hist = history_table(plan(c)).to_pylist()
    alive = defaultdict(dict)
    for h in hist:
        alive[h["individual_id"]][h["survey"]] = h["alive"]
        assert h["seen"] <= h["alive"]  # only the living are photographed
    surveys = c.surveys()
    first = [i for i, a in alive.items() if a[surveys[0]]]
    recruits = [i for i, a in alive.items() if not a[surveys[0]]]
    died = [i for i in first if not alive[i][surveys[-1]]]
    assert len(first) == 40 and recruits and died
    for a in alive.values():  # dead stays dead: alive years are one contiguous run
        seq = "".join(str(a[s]) for s in surveys)
        assert "1" in seq and "101" not in seq and "1001" not in seq


def test_bursts_share_camera_and_are_seconds_apart(survey):
    truth = read_truth(survey).to_pylist()
    bursts = defaultdict(list)
    for t in truth:
        bursts[t["burst_id"]].append(t)
    assert any(len(b) > 1 for b in bursts.values())
    for frames in bursts.values():
        frames.sort(key=lambda t: t["frame"])
        assert (
            len(
                {(f["camera_id"], f["individual_id"], f["survey"], f["viewpoint"], f["wide"]) for f in frames}
            )
            == 1
        )
        gaps = [
            (b["captured_at"] - a["captured_at"]).total_seconds()
            for a, b in zip(frames, frames[1:], strict=False)
        ]
        assert all(1 <= g <= 5 for g in gaps)
        assert frames[0]["captured_at"].year == int(frames[0]["survey"])


def test_archive_validates_and_bbox_is_the_animal(survey):
    table = archive.read_archive(survey)
    validate_archive(table, survey)
    assert manifest.require_manifest(survey, job="synth")["counts"]["images"] == len(table)
    rows = table.to_pylist()
    assert {r["species"] for r in rows} == {"synthetic-cat"}
    assert {r["viewpoint"] for r in rows} == {"left", "right"}
    assert all(r["source"].startswith("synth://3/") for r in rows)
    wide = [r for r in rows if r["width"] > 128]
    assert wide, "some frames must be bigger than the animal so the bbox crop matters"
    for r in rows[:40] + wide[:10]:
        img = Image.open(io.BytesIO(r["image"]))
        assert img.format == "JPEG" and img.size == (r["width"], r["height"])
        b = r["bbox"]
        assert (
            0 <= b["x"] and 0 <= b["y"] and b["x"] + b["w"] <= r["width"] and b["y"] + b["h"] <= r["height"]
        )
        assert b["w"] >= 20 and b["h"] >= 15
        assert decode(r["image"], bbox=b).ok
    for r in wide[:5]:
        assert r["bbox"]["w"] * r["bbox"]["h"] < 0.6 * r["width"] * r["height"]


def test_truth_is_complete_and_matches_the_archive(survey):
    table = archive.read_archive(survey, columns=["image_id", "individual_id", "survey"])
    truth = {t["image_id"]: t for t in read_truth(survey).to_pylist()}
    rows = table.to_pylist()
    assert set(truth) == {r["image_id"] for r in rows}
    for r in rows:
        t = truth[r["image_id"]]
        assert t["individual_id"]
        assert r["individual_id"] == (t["individual_id"] if t["labeled"] else None)
    assert sum(r["individual_id"] is None for r in rows) == round(0.15 * len(rows))
    history = truth_capture_history(survey).to_pylist()
    seen = defaultdict(set)
    for t in truth.values():
        seen[t["survey"]].add(t["individual_id"])
    assert [k for k in history[0] if k != "individual_id"] == ["2021", "2022", "2023"]
    for h in history:
        for s in ("2021", "2022", "2023"):
            assert h[s] == int(h["individual_id"] in seen[s])
    assert len(truth_capture_history(survey, seen_only=False)) >= len(history)


def test_left_and_right_flanks_differ():
    c = SynthConfig(individuals=2, seed=0)
    sprites = Sprites(c)
    for k in range(2):
        right = np.asarray(sprites.get(k, "right", 0), dtype=np.float32)
        left = np.asarray(
            sprites.get(k, "left", 0).transpose(Image.Transpose.FLIP_LEFT_RIGHT), dtype=np.float32
        )
        np.testing.assert_array_equal(right[..., 3], left[..., 3])  # same body, mirrored
        body = right[..., 3] > 200
        dark_r = right[..., :3].mean(-1)[body] < 90
        dark_l = left[..., :3].mean(-1)[body] < 90
        assert 0.08 < dark_r.mean() < 0.7  # a visible coat pattern
        assert (dark_r != dark_l).mean() > 0.15  # a different pattern on each flank
    a = np.asarray(sprites.get(0, "right", 0), dtype=np.float32)[..., :3]
    b = np.asarray(sprites.get(1, "right", 0), dtype=np.float32)[..., :3]
    assert np.abs(a - b).mean() > 10  # and on each individual


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="individuals"):
        SynthConfig(individuals=0)
    with pytest.raises(ConfigError, match="unlabeled"):
        SynthConfig(unlabeled_fraction=1.0)


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the `reid` command line in-process (a subprocess costs seconds of imports)."""
    from jobs.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_runs_and_a_rerun_does_not_duplicate(tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = ["synth", out, "--individuals", "4", "--years", "2", "--images-per-individual", "3", "--seed", "7"]
    first = subprocess.run([REID, *args], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "ground truth" in first.stdout
    ids = archive.read_archive(out, columns=["image_id"]).column("image_id").to_pylist()
    files = archive.archive_files(out)
    code, _, err = cli(args, capsys)
    assert code == 0, err
    assert archive.archive_files(out) == files
    again = archive.read_archive(out, columns=["image_id"]).column("image_id").to_pylist()
    assert sorted(again) == sorted(ids)
    assert manifest.read_manifest(out)["counts"]["written"] == 0
    code, _, err = cli(args[:-1] + ["8"], capsys)
    assert code == 2 and "other options (seed)" in err
    code, _, err = cli(["synth", str(tmp_path / "x"), "--unlabeled-fraction", "1.5"], capsys)
    assert code == 2 and err.startswith("error:") and "unlabeled" in err and "Traceback" not in err


def test_cli_help(capsys):
    code, out, _ = cli(["synth", "--help"], capsys)
    assert code == 0 and "--individuals" in out and "--unlabeled-fraction" in out


def test_a_resumed_run_renders_only_the_missing_images(tmp_path):
    out = str(tmp_path / "resume")
    cfg = SynthJobConfig(out=out, individuals=3, years=2, images_per_individual=3, seed=4)
    run(cfg)
    table = archive.read_archive(out)
    # simulate a run killed before its manifest, holding only the first half of the images
    for f in archive.archive_files(out):
        Path(f).unlink()
    (Path(out) / manifest.MANIFEST).unlink()
    half = table.slice(0, len(table) // 2)
    writer = archive.ArchiveWriter(out)
    for r in half.to_pylist():
        writer.add(r)
    writer.close()
    summary = run(cfg)
    assert summary["already_present"] == len(half) and summary["written"] == len(table) - len(half)
    again = archive.read_archive(out)
    assert sorted(again.column("image_id").to_pylist()) == sorted(table.column("image_id").to_pylist())


@pytest.mark.s3
def test_writes_to_s3(s3_bucket):
    out = f"{s3_bucket}/synth"
    summary = run(SynthJobConfig(out=out, individuals=2, years=1, images_per_individual=2, seed=9))
    assert len(archive.read_archive(out)) == summary["images"]
    assert len(read_truth(out)) == summary["images"]
    assert manifest.require_manifest(out, job="synth")


def untrained_accuracy(individuals: int = 30, seed: int = 1, init_seed: int = 0) -> tuple[float, float]:
    """Leave-one-out cosine 1-NN accuracy of a random-init resnet18 on bbox crops, over individuals.

    Returns (accuracy with burst siblings excluded from the gallery, accuracy with them in).
    Burst siblings are near-duplicates; a query counts only when a same-flank image of its
    individual exists outside its burst (what a perfect model needs to answer).
    """
    import timm
    import torch

    c = SynthConfig(individuals=individuals, years=3, seed=seed)
    p = plan(c)
    keep = set(sorted({s.individual for s in p.sightings})[:individuals])
    chosen = [s for s in p.sightings if s.individual in keep]
    skip = {s.image_id for s in p.sightings} - {s.image_id for s in chosen}
    rows = list(generate(c, skip_ids=skip, survey_plan=p))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = torch.stack(
        [
            (
                torch.from_numpy(
                    np.asarray(decode(r["image"], bbox=r["bbox"]).image.resize((128, 128))).copy()
                )
                .permute(2, 0, 1)
                .float()
                / 255
                - mean
            )
            / std
            for r in rows
        ]
    )
    torch.manual_seed(init_seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(
            torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)]), dim=1
        )
    e = emb.numpy()
    ind = np.array([s.individual for s in chosen])
    burst = np.array([s.burst for s in chosen])
    view = np.array([s.viewpoint for s in chosen])
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    with_bursts = float((ind[sim.argmax(1)] == ind).mean())
    same_burst = burst[:, None] == burst[None, :]
    sim = np.where(same_burst, -np.inf, sim)
    answerable = ((ind[:, None] == ind[None, :]) & ~same_burst & (view[:, None] == view[None, :])).any(1)
    return float((ind[sim.argmax(1)] == ind)[answerable].mean()), with_bursts


@pytest.mark.slow
def test_an_untrained_network_cannot_match_individuals():
    acc, _ = untrained_accuracy(individuals=30)
    assert acc <= 0.3, f"random-init resnet18 reaches accuracy@1 {acc:.3f}: the synthetic task is too easy"
