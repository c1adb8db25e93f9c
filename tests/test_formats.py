"""Each input format of `reid ingest`, from small files written here onto real JPEGs: the archive
rows (individuals, viewpoints, boxes, user ids) and the rejects with their reasons, exactly."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from jobs.ingest import IngestConfig, run
from reid import archive, formats, storage
from reid.errors import ReidError
from tests.support.formats import (
    WD_ROWS,
    put_photos,
    write_camtrapdp,
    write_coco,
    write_csv,
    write_megadetector,
    write_wildlife_datasets,
)
from tests.support.images import jpeg_bytes, photo

UTC = dt.timezone.utc


def ingest(src: Path | str, out: Path, **kw) -> tuple[dict, dict, dict]:
    """Run the ingest; returns (summary, rows by annotation_id or source, rejects by reason start)."""
    summary = run(IngestConfig(src=str(src), out=str(out), **kw))
    rows = archive.read_archive(str(out)).to_pylist() if summary["archive_rows"] else []
    rejects = archive.read_rejects(str(out)).to_pylist()
    assert (
        summary["candidates"] == summary["written"] + summary["rejected"] + summary["duplicates_of_existing"]
    )
    return summary, rows, rejects


def box(x: float, y: float, w: float, h: float) -> dict:
    return {"x": x, "y": y, "w": w, "h": h}


# ------------------------------------------------------------------------------ wildlife-datasets

WD_REJECTS = {
    "103": "unreadable:",
    "104": "bad bbox:",
    "105": "row 5: no path",
    "106": "bad bbox:",
}


@pytest.mark.parametrize("parquet", [False, True], ids=["csv", "parquet"])
def test_wildlife_datasets_table(tmp_path, parquet):
    src = write_wildlife_datasets(tmp_path / "wd", parquet)
    assert formats.detect(str(src)) == "wildlife-datasets"
    summary, rows, rejects = ingest(src, tmp_path / "arch", survey="2021")
    assert (summary["written"], summary["rejected"], summary["individuals"]) == (2, 4, 1)
    by_id = {r["annotation_id"]: r for r in rows}
    assert set(by_id) == {"101", "102"}  # the user's own image_id kept
    a, b = by_id["101"], by_id["102"]
    assert (a["individual_id"], a["viewpoint"], a["species"]) == ("zara", "left", "zebra")
    assert a["bbox"] == box(10, 5, 40, 30) and a["source"].endswith("/wd/images/a.jpg")
    assert a["captured_at"] == dt.datetime(2021, 6, 1, tzinfo=UTC)
    assert b["individual_id"] is None  # "unknown" = unlabelled, not an individual called unknown
    assert (b["viewpoint"], b["bbox"]) == ("right", None)
    got = {}
    ids = {archive.stable_id("2021", "annotation", str(r["image_id"])): str(r["image_id"]) for r in WD_ROWS}
    for r in rejects:
        got[ids[r["image_id"]]] = r["reason"]
    assert set(got) == set(WD_REJECTS)
    for key, prefix in WD_REJECTS.items():
        assert got[key].startswith(prefix), (key, got[key])


# ------------------------------------------------------------------------------------------ COCO


def test_coco(tmp_path):
    src = write_coco(tmp_path / "c")
    assert formats.detect(str(src)) == "coco"
    summary, rows, rejects = ingest(src, tmp_path / "arch")
    by_id = {r["annotation_id"]: r for r in rows}
    assert set(by_id) == {"11", "12", "13"}
    assert {k: r["individual_id"] for k, r in by_id.items()} == {"11": "ayo", "12": None, "13": "bo"}
    assert {k: r["viewpoint"] for k, r in by_id.items()} == {"11": "left", "12": None, "13": None}
    assert {k: r["bbox"] for k, r in by_id.items()} == {
        "11": box(10, 5, 40, 30),
        "12": box(50, 10, 30, 30),
        "13": box(0, 0, 20, 20),
    }
    assert {r["species"] for r in rows} == {"lion"}
    assert {k: r["photo_ref"] for k, r in by_id.items()} == {
        "11": "1",
        "12": "1",
        "13": "2",
    }  # COCO image ids
    assert by_id["11"]["captured_at"] == dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (
        by_id["11"]["photo_id"] == by_id["12"]["photo_id"] != by_id["13"]["photo_id"]
    )  # two animals, one photo
    reasons = sorted(r["reason"] for r in rejects)
    assert len(reasons) == 3 and summary["rejected"] == 3
    assert reasons[0].startswith("annotation 14 names image_id 99")
    assert reasons[1].startswith("bad bbox:") and "<= 0" in reasons[1]
    assert reasons[2].startswith("no annotation") and any(r["source"].endswith("img/c.jpg") for r in rejects)


# ---------------------------------------------------------------------------------- MegaDetector


def test_megadetector_boxes_threshold_and_categories(tmp_path):
    src = write_megadetector(tmp_path / "md")
    assert formats.detect(str(src)) == "megadetector"
    summary, rows, rejects = ingest(src, tmp_path / "a1")
    assert summary["written"] == 1 and summary["individuals"] == 0
    (row,) = rows
    assert row["source"].endswith("md/a.jpg") and row["individual_id"] is None
    assert row["bbox"] == pytest.approx(box(9.6, 12.8, 48.0, 32.0))  # normalised -> pixels of 96x64
    reasons = sorted(r["reason"].split(":")[0] for r in rejects)
    assert reasons == [
        "MegaDetector failed on it",
        "bad bbox",
        "category 'person' filtered out (kept",
        "low confidence",
        "no detection",
    ]
    # a lower threshold and people kept: two more annotations
    summary, rows, _ = ingest(src, tmp_path / "a2", min_confidence=0.05, categories=["animal", "person"])
    assert summary["written"] == 3 and summary["rejected"] == 3
    assert sorted(r["bbox"]["w"] for r in rows) == pytest.approx([19.2, 24.0, 48.0])


# ------------------------------------------------------------------------------------ Camtrap DP


def test_camtrapdp_package(tmp_path):
    src = write_camtrapdp(tmp_path / "pkg")
    assert formats.detect(str(src)) == "camtrapdp"
    assert formats.detect(str(src / "datapackage.json")) == "camtrapdp"
    summary, rows, rejects = ingest(src, tmp_path / "arch")
    by_id = {r["annotation_id"]: r for r in rows}
    assert set(by_id) == {"o1", "o2", "o3"}
    assert {k: r["individual_id"] for k, r in by_id.items()} == {"o1": "ayo", "o2": None, "o3": "bo"}
    assert {k: r["camera_id"] for k, r in by_id.items()} == {"o1": "dep1", "o2": "dep1", "o3": "dep2"}
    assert by_id["o1"]["viewpoint"] == "left" and by_id["o1"]["species"] == "Panthera leo"
    assert {k: r["photo_ref"] for k, r in by_id.items()} == {"o1": "m1", "o2": "m1", "o3": "m2"}  # mediaIDs
    assert by_id["o1"]["bbox"] == pytest.approx(box(9.6, 12.8, 48.0, 32.0))
    assert by_id["o2"]["bbox"] == pytest.approx(box(48.0, 16.0, 24.0, 32.0))
    assert by_id["o3"]["bbox"] is None
    assert by_id["o1"]["captured_at"] == dt.datetime(2022, 3, 1, 10, tzinfo=UTC)
    assert by_id["o3"]["captured_at"] == dt.datetime(2022, 3, 2, 9, tzinfo=UTC)  # +02:00 -> UTC
    reasons = sorted(r["reason"] for r in rejects)
    assert summary["rejected"] == 4
    assert reasons[0].startswith("event-level observation")
    assert reasons[1].startswith("mediaID 'm9' is not in media.csv")
    assert reasons[2] == "no observation of this media"
    assert reasons[3] == "observationType 'blank': not an animal"


def test_format_override_and_unknown(tmp_path):
    src = write_coco(tmp_path / "c")
    summary, rows, _ = ingest(src, tmp_path / "a", format="coco")
    assert summary["written"] == 3
    with pytest.raises(ReidError, match="COCO"):
        formats.read(str(write_megadetector(tmp_path / "md")), "coco")
    with pytest.raises(ValueError, match="unknown format"):
        IngestConfig(src=str(src), out=str(tmp_path / "b"), format="yolo")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ReidError, match="--format"):
        formats.detect(str(tmp_path / "x.txt"))


# ------------------------------------------------------------------- storage: any pyarrow scheme


def test_ingest_through_a_registered_pyarrow_scheme(tmp_path):
    """A made-up scheme backed by a pyarrow filesystem: the archive is written and read through it,
    as gs://, abfs:// or hdfs:// would be through pyarrow's own filesystems."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    storage.register_filesystem("zoo", pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem()))
    try:
        src = write_coco(tmp_path / "c")
        summary = run(IngestConfig(src=str(src), out="zoo://surveys/arch"))
        assert summary["written"] == 3
        assert (bucket / "surveys" / "arch" / "_manifest.json").exists()
        table = archive.read_archive("zoo://surveys/arch")
        assert sorted(table.column("annotation_id").to_pylist()) == ["11", "12", "13"]
        assert storage.list_files("zoo://surveys/arch", suffix=".parquet")[0].startswith(
            "zoo://surveys/arch/part-"
        )
        # the source photos can live there too: a COCO file read from the scheme
        storage.write_bytes("zoo://in/coco.json", src.read_bytes())
        for name in ("a", "b", "c"):
            storage.write_bytes(f"zoo://in/img/{name}.jpg", (src.parent / "img" / f"{name}.jpg").read_bytes())
        _, rows, _ = ingest("zoo://in/coco.json", tmp_path / "local")
        assert {r["source"] for r in rows} == {"zoo://in/img/a.jpg", "zoo://in/img/b.jpg"}
    finally:
        storage.register_filesystem("zoo", None)
    with pytest.raises(ReidError, match="unsupported URI scheme 'zoo'"):
        storage.resolve("zoo://surveys/arch")


def test_other_schemes_resolve_through_pyarrow_and_fsspec(tmp_path):
    """gs:// maps to pyarrow's own GCS filesystem (no emulator runs here, so nothing is read from
    it); memory:// (a scheme only fsspec knows) carries a whole ingest and read-back."""
    fs, path = storage.resolve("gs://bucket/surveys/2024")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/surveys/2024"
    assert storage.join("gs://bucket/a", "part-1.parquet") == "gs://bucket/a/part-1.parquet"
    src = write_coco(tmp_path / "c")
    summary = run(IngestConfig(src=str(src), out="memory://reid-test/arch"))
    try:
        assert summary["written"] == 3
        assert archive.read_archive("memory://reid-test/arch").num_rows == 3
        assert storage.exists("memory://reid-test/arch/_manifest.json")
    finally:
        storage.delete("memory://reid-test/arch")


def test_cli_format_options_and_export(tmp_path):
    """The command line: MegaDetector options, a bad --format as one line, then `reid export`."""
    import subprocess
    import sys

    def reid(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=300
        )

    md = write_megadetector(tmp_path / "md")
    arch = str(tmp_path / "arch")
    r = reid(
        "ingest", str(md), arch, "--min-confidence", "0.05", "--category", "animal", "--category", "person"
    )
    assert r.returncode == 0, r.stderr
    assert archive.read_archive(arch).num_rows == 3 and archive.read_rejects(arch).num_rows == 3
    r = reid("ingest", str(md), str(tmp_path / "b"), "--format", "yolo")
    assert r.returncode == 2 and "unknown format 'yolo'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = reid("export", "--archive", arch, "--out", str(tmp_path / "res"), "--no-crops")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "res" / "sightings.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    r = reid("export", "--out", str(tmp_path / "res2"))
    assert r.returncode == 2 and "give a match output" in r.stderr


def test_normalised_boxes_follow_exif_orientation():
    """MegaDetector and Camtrap DP boxes are fractions of the upright photo: a JPEG stored 96x64
    with EXIF orientation 6 is shown 64x96, and the box is in those pixels."""
    from reid.ingest import pixel_box

    upright = pixel_box(jpeg_bytes(photo(96, 64), exif_orientation=6), box(0.0, 0.0, 0.5, 0.5))
    assert upright == box(0.0, 0.0, 32.0, 48.0)
    assert pixel_box(jpeg_bytes(photo(96, 64)), box(0.25, 0.5, 0.5, 0.5)) == box(24.0, 32.0, 48.0, 32.0)
    assert pixel_box(b"not an image", box(0.1, 0.1, 0.1, 0.1)) == box(0.1, 0.1, 0.1, 0.1)  # decode names it


def test_camtrapdp_event_level_observations(tmp_path):
    """Event-level identifications (as Agouti records them) reach the event's photos: a lone
    unlabelled box takes the individual, a photo without boxes becomes a whole-photo annotation."""
    root = tmp_path / "pkg"
    put_photos(root / "media", ["e1.jpg", "e2.jpg", "e3.jpg", "e4.jpg", "e5.jpg"])
    (root / "datapackage.json").write_text(json.dumps({"profile": "camtrap-dp/1.0", "resources": []}))
    times = {"e1": ("dep1", "10:00:00"), "e2": ("dep1", "10:00:05"), "e3": ("dep1", "10:00:10"),
             "e4": ("dep2", "10:00:05"), "e5": ("dep1", "12:00:00")}  # fmt: skip
    write_csv(
        root / "media.csv",
        [
            {"mediaID": k, "deploymentID": d, "timestamp": f"2022-05-01T{t}Z", "filePath": f"media/{k}.jpg"}
            for k, (d, t) in times.items()
        ],
    )
    ev = {
        "observationLevel": "event",
        "observationType": "animal",
        "scientificName": "Lynx lynx",
        "mediaID": "",
    }
    write_csv(
        root / "observations.csv",
        [
            {
                **ev,
                "observationID": "ev1",
                "deploymentID": "dep1",
                "eventStart": "2022-05-01T10:00:00Z",
                "eventEnd": "2022-05-01T10:00:10Z",
                "individualID": "kiki",
                "count": 1,
            },
            {
                "observationID": "mb1",
                "deploymentID": "dep1",
                "mediaID": "e2",
                "observationLevel": "media",
                "observationType": "animal",
                "scientificName": "Lynx lynx",
                "bboxX": 0.25,
                "bboxY": 0.25,
                "bboxWidth": 0.5,
                "bboxHeight": 0.5,
            },
            {
                **ev,
                "observationID": "ev2",
                "deploymentID": "dep1",
                "eventStart": "2022-05-01T12:00:00Z",
                "eventEnd": "2022-05-01T12:00:00Z",
                "count": 2,
            },
            {
                **ev,
                "observationID": "ev3",
                "deploymentID": "dep2",
                "eventStart": "2022-05-01T09:00:00Z",
                "eventEnd": "2022-05-01T09:01:00Z",
                "individualID": "kiki",
                "count": 1,
            },
        ],  # fmt: skip
    )
    summary, rows, rejects = ingest(root, tmp_path / "arch")
    by_id = {r["annotation_id"]: r for r in rows}
    assert set(by_id) == {"ev1/e1", "mb1", "ev1/e3"}
    assert {r["individual_id"] for r in rows} == {"kiki"} and summary["individuals"] == 1
    assert by_id["mb1"]["bbox"] == box(24.0, 16.0, 48.0, 32.0) and by_id["ev1/e1"]["bbox"] is None
    assert {k: r["photo_ref"] for k, r in by_id.items()} == {"ev1/e1": "e1", "mb1": "e2", "ev1/e3": "e3"}
    reasons = sorted(r["reason"] for r in rejects)
    assert len(reasons) == 3
    assert reasons[0].startswith("event-level observation of 2 animals")
    assert reasons[1].startswith("event-level observation: no media of deployment 'dep2'")
    assert reasons[2] == "no observation of this media" and any(
        r["source"].endswith("e4.jpg") for r in rejects
    )
