import csv
import json
import subprocess
import sys

import numpy as np
import pyarrow.dataset as pads
import pytest

from jobs.ingest import IngestConfig, run
from reid import archive, manifest
from reid.errors import ReidError
from reid.images import imageio
from tests.support.images import bad_folder, jpeg_bytes, photo


def test_bad_inputs_land_in_rejects_with_reasons(tmp_path):
    expect = bad_folder(tmp_path / "src")
    out = tmp_path / "archive"
    summary = run(IngestConfig(src=str(tmp_path / "src"), out=str(out), species="lion", survey="2024"))
    table = archive.read_archive(str(out))
    rejects = archive.read_rejects(str(out)).to_pylist()
    good = {k for k, v in expect.items() if v is None}
    bad = {k: v for k, v in expect.items() if v is not None}
    assert summary["written"] == len(good) and summary["rejected"] == len(bad)
    sources = {s.split("/src/", 1)[1] for s in table.column("source").to_pylist()}
    assert sources == good
    by_source = {r["source"].split("/src/", 1)[1]: r["reason"] for r in rejects}
    assert set(by_source) == set(bad)
    for rel, prefix in bad.items():
        assert by_source[rel].startswith(prefix), (rel, by_source[rel])
    rows = {r["source"].split("/src/", 1)[1]: r for r in table.to_pylist()}
    rot = rows["ayo/rotated.jpg"]
    assert (rot["width"], rot["height"]) == (64, 96)  # upright dimensions
    assert rot["captured_at"].year == 2023  # EXIF DateTime
    assert imageio.decode(rot["image"]).image.size == (64, 96)
    assert {r["individual_id"] for r in rows.values()} == {"ayo", "bo"}
    assert {r["species"] for r in rows.values()} == {"lion"}
    # the dataset reader sees exactly the archive rows (no rejects, no manifest)
    assert pads.dataset(str(out), format="parquet").count_rows() == len(good)
    m = manifest.read_manifest(str(out))
    assert m["job"] == "ingest" and m["counts"]["rejected"] == len(bad)


def test_rerun_does_not_duplicate_and_adds_new_files(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(3):
        (src / "a" / f"{i}.jpg").write_bytes(jpeg_bytes(photo(seed=i)))
    out = str(tmp_path / "out")
    run(IngestConfig(src=str(src), out=out))
    again = run(IngestConfig(src=str(src), out=out))
    assert again["written"] == 0 and again["archive_rows"] == 3
    assert again["duplicates_of_existing"] == 3 and again["changed"] == 0
    assert again["candidates"] == again["written"] + again["rejected"] + again["duplicates_of_existing"]
    (src / "a" / "new.jpg").write_bytes(jpeg_bytes(photo(seed=9)))
    third = run(IngestConfig(src=str(src), out=out))
    assert third["written"] == 1 and archive.read_archive(out).num_rows == 4


def test_csv_and_json_manifests(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(4):
        (img / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(seed=i)))
        rows.append(
            {
                "path": f"img/p{i}.jpg",
                "individual_id": f"id{i % 2}",
                "camera": "c1",
                "captured_at": f"2022-05-0{i + 1}T10:00:00",
                "bbox": "10,5,40,30",
                "viewpoint": "left",
            }
        )
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run(IngestConfig(src=str(tmp_path / "m.csv"), out=str(tmp_path / "a"), survey="2022"))
    t = archive.read_archive(str(tmp_path / "a")).to_pylist()
    assert len(t) == 4 and {r["camera_id"] for r in t} == {"c1"}
    assert t[0]["bbox"] == {"x": 10.0, "y": 5.0, "w": 40.0, "h": 30.0}
    assert imageio.decode(t[0]["image"], bbox=t[0]["bbox"]).image.size == (40, 30)
    (tmp_path / "m.json").write_text(json.dumps(rows))
    run(IngestConfig(src=str(tmp_path / "m.json"), out=str(tmp_path / "b")))
    assert archive.read_archive(str(tmp_path / "b")).num_rows == 4
    rows[0]["bbox"] = "1,2,3"
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    with pytest.raises(ReidError, match="record 1 .*bbox"):
        run(IngestConfig(src=str(tmp_path / "bad.json"), out=str(tmp_path / "c")))


def test_lions_dataset(lions_dir, tmp_path):
    out = str(tmp_path / "lions")
    summary = run(IngestConfig(src=str(lions_dir), out=out, species="lion"))
    t = archive.read_archive(out, columns=["individual_id", "viewpoint"])
    assert summary["rejected"] == 0
    assert t.num_rows == 740 and summary["individuals"] == 94
    ids = t.column("individual_id").to_pylist()
    assert ids.count("Kinna") == len(list((lions_dir / "train" / "Kinna").iterdir()))
    assert "right" in t.column("viewpoint").to_pylist()


@pytest.mark.s3
def test_ingest_to_s3_and_read_back(tmp_path, s3_bucket):
    expect = bad_folder(tmp_path / "src")
    out = f"{s3_bucket}/archive"
    summary = run(IngestConfig(src=str(tmp_path / "src"), out=out))
    assert summary["written"] == sum(v is None for v in expect.values())
    table = archive.read_archive(out)
    assert table.num_rows == summary["written"]
    assert archive.read_rejects(out).num_rows == summary["rejected"]
    assert manifest.read_manifest(out)["counts"]["archive_rows"] == table.num_rows
    # the same files through boto3 (the AWS code path)
    import os

    import boto3  # noqa: E401

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket[5:])["Contents"]}
    assert "archive/_manifest.json" in keys and "archive/_rejects.parquet" in keys
    again = run(IngestConfig(src=str(tmp_path / "src"), out=out))
    assert again["written"] == 0


def test_cli_user_error_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "ingest", str(tmp_path / "nope"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "not found" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_big_rows_refused(tmp_path):
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (2200, 2200, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(noise).save(src / "huge.png")
    assert (src / "huge.png").stat().st_size > 10 * 1024 * 1024
    s = run(IngestConfig(src=str(tmp_path / "src"), out=str(tmp_path / "o")))
    assert s["rejected"] == 1 and archive.read_rejects(str(tmp_path / "o"))["reason"][0].as_py().startswith(
        "too large"
    )
