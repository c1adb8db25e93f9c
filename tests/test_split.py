"""Leak-free splits: identity, open, closed and time; groups never straddle; bad inputs are named."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.split import SplitConfig
from jobs.split import run as run_split
from jobs.synth import SynthJobConfig
from jobs.synth import run as run_synth
from reid.data import splits
from reid.errors import ConfigError, ReidError
from reid.synthetic.survey import SynthConfig, plan
from reid.synthetic.truth import read_truth

REID = str(Path(sys.executable).with_name("reid"))


def plan_table(**options) -> tuple[pa.Table, dict[str, str]]:
    """Archive metadata columns of a planned synthetic survey (no pixels), and image -> burst."""
    p = plan(SynthConfig(**options))
    rows = [
        {
            "image_id": s.image_id,
            "individual_id": s.individual_id if s.labeled else None,
            "camera_id": s.camera_id,
            "captured_at": s.captured_at,
            "survey": s.survey,
        }
        for s in p.sightings
    ]
    return pa.Table.from_pylist(rows), {s.image_id: s.burst_id for s in p.sightings}


@pytest.fixture(scope="module")
def survey():
    return plan_table(individuals=60, years=3, seed=5, unlabeled_fraction=0.1)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("split") / "archive")
    run_synth(SynthJobConfig(out=out, individuals=6, years=3, images_per_individual=3, seed=2))
    return out


def sides(table: pa.Table) -> dict[str, dict[str, set]]:
    out: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in table.to_pylist():
        out[r["split"]]["individuals"].add(r["individual_id"])
        out[r["split"]]["groups"].add(r["group_id"])
        out[r["split"]]["ids"].add(r["image_id"])
    return out


def assert_no_leaks(table: pa.Table, bursts: dict[str, str]) -> None:
    s = sides(table)
    assert not s["train"]["groups"] & s["test"]["groups"]
    burst_side = {}
    for r in table.to_pylist():
        if r["split"] != "unlabeled":
            assert burst_side.setdefault(bursts[r["image_id"]], r["split"]) == r["split"], "a burst straddles"


@pytest.mark.parametrize("kind", ["identity", "open", "closed", "time"])
def test_every_kind_keeps_groups_whole_and_unlabeled_apart(survey, kind):
    table, bursts = survey
    result = splits.make_split(table, kind, cutoff="2023", seed=1)
    assert result.schema == splits.SPLIT_SCHEMA
    assert result.column("image_id").to_pylist() == table.column("image_id").to_pylist()
    assert_no_leaks(result, bursts)
    for r in result.to_pylist():
        assert (r["split"] == "unlabeled") == (r["individual_id"] is None)
        assert (r["known"] is not None) == (r["split"] == "test")
    counts = splits.split_counts(result)
    labeled = counts["train_images"] + counts["test_images"]
    if kind != "time":
        assert 0.12 < counts["test_images"] / labeled < 0.3


def test_same_day_sightings_share_a_group():
    t = pa.Table.from_pylist(
        [
            {
                "image_id": "a",
                "individual_id": "x",
                "camera_id": "c1",
                "survey": "2021",
                "captured_at": pa.scalar(1_600_000_000_000_000, pa.timestamp("us", tz="UTC")).as_py(),
            },
            {
                "image_id": "b",
                "individual_id": "x",
                "camera_id": "c1",
                "survey": "2021",
                "captured_at": pa.scalar(
                    1_600_000_000_000_000 + 3_600_000_000, pa.timestamp("us", tz="UTC")
                ).as_py(),
            },
            {
                "image_id": "c",
                "individual_id": "x",
                "camera_id": "c2",
                "survey": "2021",
                "captured_at": pa.scalar(1_600_000_000_000_000, pa.timestamp("us", tz="UTC")).as_py(),
            },
            {"image_id": "d", "individual_id": "x", "camera_id": "c1", "survey": "2021", "captured_at": None},
        ]
    )
    groups = [
        splits.group_key(r["individual_id"], r["camera_id"], r["captured_at"], r["survey"])
        for r in t.to_pylist()
    ]
    assert groups[0] == groups[1] and len(set(groups)) == 3


def test_identity_split_has_no_individual_on_both_sides(survey):
    result = splits.make_split(survey[0], "identity", test_fraction=0.25, seed=3)
    s = sides(result)
    assert s["test"]["individuals"] and not s["train"]["individuals"] & s["test"]["individuals"]
    assert not any(r["known"] for r in result.to_pylist() if r["split"] == "test")


def test_closed_split_tests_only_known_individuals(survey):
    result = splits.make_split(survey[0], "closed", seed=3)
    s = sides(result)
    assert s["test"]["individuals"] and s["test"]["individuals"] <= s["train"]["individuals"]
    assert all(r["known"] for r in result.to_pylist() if r["split"] == "test")


def test_closed_photo_split_puts_every_individual_on_both_sides(survey):
    """The published by-photo protocol: ~20% of each individual's photos (>= 1, never all) in test."""
    table = survey[0]
    result = splits.make_split(table, "closed-photo", test_fraction=0.2, seed=3)
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in result.to_pylist():
        if r["individual_id"] is not None:
            per[r["individual_id"]][r["split"]] += 1
    for ind, n in per.items():
        total = n["train"] + n["test"]
        if total >= 2:
            assert n["train"] >= 1 and n["test"] >= 1, ind
            assert n["test"] == min(total - 1, max(1, round(0.2 * total))), ind
        else:
            assert n["test"] == 0, ind
    assert all(r["known"] for r in result.to_pylist() if r["split"] == "test")
    assert (
        result.column("split").to_pylist()
        == splits.make_split(table, "closed-photo", seed=3).column("split").to_pylist()
    )


def test_open_split_mixes_known_and_unknown_individuals(survey):
    result = splits.make_split(survey[0], "open", unknown_fraction=0.5, seed=3)
    test = [r for r in result.to_pylist() if r["split"] == "test"]
    train = sides(result)["train"]["individuals"]
    known = {r["individual_id"] for r in test if r["known"]}
    unknown = {r["individual_id"] for r in test if not r["known"]}
    assert known and unknown and known <= train and not unknown & train
    share = sum(not r["known"] for r in test) / len(test)
    assert 0.25 < share < 0.75


def test_time_split_respects_the_cutoff(survey):
    result = splits.make_split(survey[0], "time", cutoff=2022)
    for r in result.to_pylist():
        if r["split"] == "train":
            assert r["survey"] == "2021"
        elif r["split"] == "test":
            assert r["survey"] in ("2022", "2023")
    s = sides(result)
    for r in result.to_pylist():
        if r["split"] == "test":
            assert r["known"] == (r["individual_id"] in s["train"]["individuals"])
    assert any(r["known"] for r in result.to_pylist()) and any(
        r["known"] is False for r in result.to_pylist()
    )


def test_same_seed_same_split(survey):
    a = splits.make_split(survey[0], "open", seed=4)
    assert a.equals(splits.make_split(survey[0], "open", seed=4))
    assert not a.equals(splits.make_split(survey[0], "open", seed=5))


def test_bad_inputs_are_named(survey):
    table = survey[0]
    first = next(i for i in table.column("individual_id").to_pylist() if i is not None)
    one = table.filter(pa.compute.equal(table.column("individual_id"), first))
    with pytest.raises(ReidError, match="1 labeled individual"):
        splits.make_split(one, "identity")
    with pytest.raises(ReidError, match="cutoff 2030 lies after the last survey"):
        splits.make_split(table, "time", cutoff="2030")
    with pytest.raises(ReidError, match="cutoff 1999 lies before the first survey"):
        splits.make_split(table, "time", cutoff="1999")
    with pytest.raises(ConfigError, match="needs --cutoff"):
        splits.make_split(table, "time")
    with pytest.raises(ConfigError, match="unknown split kind"):
        splits.make_split(table, "random")
    with pytest.raises(ConfigError, match="test fraction"):
        splits.make_split(table, "identity", test_fraction=1.5)
    singles = table.filter(pa.compute.equal(table.column("camera_id"), "never"))  # empty
    with pytest.raises(ReidError, match="0 labeled"):
        splits.make_split(singles, "closed")


def test_job_writes_table_with_its_manifest(small_archive, tmp_path):
    out = str(tmp_path / "split.parquet")
    summary = run_split(SplitConfig(archive=small_archive, out=out, kind="open", test_fraction=0.3))
    table, m = splits.read_split(out)
    assert m["job"] == "split" and m["config"]["kind"] == "open" and m["inputs"][0]["job"] == "synth"
    assert (
        m["counts"]["test_images"]
        == summary["test_images"]
        == table.column("split").to_pylist().count("test")
    )
    truth = {t["image_id"]: t["burst_id"] for t in read_truth(small_archive).to_pylist()}
    assert_no_leaks(table, truth)
    with pytest.raises(ReidError, match="no split manifest"):
        plain = tmp_path / "plain.parquet"
        pa.parquet.write_table(table, plain)
        splits.read_split(str(plain))


def test_job_refuses_an_archive_without_manifest(small_archive, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_archive, copy)
    (copy / "_manifest.json").unlink()
    with pytest.raises(ReidError, match="_manifest.json"):
        run_split(SplitConfig(archive=str(copy), out=str(tmp_path / "s.parquet")))


def test_cli(small_archive, tmp_path, capsys):
    out = str(tmp_path / "t.parquet")
    args = ["split", small_archive, "--out", out, "--kind", "time", "--cutoff", "2023"]
    ok = subprocess.run([REID, *args], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    table, _ = splits.read_split(out)
    assert set(table.column("split").to_pylist()) >= {"train", "test"}
    from jobs.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args[:-1] + ["2040"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error:") and "2040" in err and "Traceback" not in err


def test_closed_photo_split_carries_its_caveat_into_evaluation(small_archive, tmp_path):
    """`reid evaluate --protocol split` says that a by-photo split may put one sighting on both sides."""
    from reid.data.splits import read_split_table
    from reid.evaluation.protocols import split_caveat

    out = str(tmp_path / "photo.parquet")
    run_split(SplitConfig(archive=small_archive, out=out, kind="closed-photo"))
    table = read_split_table(out)
    assert "may sit on both sides" in split_caveat(table)
    other = str(tmp_path / "closed.parquet")
    run_split(SplitConfig(archive=small_archive, out=other, kind="identity"))
    assert split_caveat(read_split_table(other)) == ""
