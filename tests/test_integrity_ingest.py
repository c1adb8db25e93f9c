"""Issue 14, ingest side: nothing lost, nothing duplicated, every skip counted with a reason.

One test per defect, each asserting the exact outcome (rows, rejects and their reasons, counts)
on real image files and, for what a user sees, the real ``reid`` CLI in a subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.ingest import IngestConfig, run
from reid import archive, ingest, manifest
from reid.images import imageio, jpegroi
from reid.schema import UNLABELLED_NAMES, individual_or_none
from tests.support.images import jpeg_bytes, photo

REID = str(Path(sys.executable).parent / "reid")


def _jpg(path: Path, seed: int = 0, w: int = 96, h: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(photo(w, h, seed=seed)))
    return path


def _csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _accounted(s: dict) -> None:
    """The invariant: every candidate is written, rejected or already in the archive."""
    assert s["candidates"] == s["written"] + s["rejected"] + s["duplicates_of_existing"], s


def _reasons(out: Path) -> list[str]:
    return sorted(archive.read_rejects(str(out)).column("reason").to_pylist())


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([REID, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _stderr_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


# -- item 2: a second animal in the same photo -------------------------------------------------


def test_two_animals_in_one_photo_are_two_rows_sharing_a_photo_id(tmp_path):
    _jpg(tmp_path / "img" / "pride.jpg", seed=1)
    _jpg(tmp_path / "img" / "solo.jpg", seed=2)
    rows = [
        {"path": "img/pride.jpg", "individual_id": "kinna", "bbox": "0,0,40,30"},
        {"path": "img/pride.jpg", "individual_id": "ayo", "bbox": "50,20,40,40"},
        {"path": "img/solo.jpg", "individual_id": "bo", "bbox": ""},
        {"path": "img/pride.jpg", "individual_id": "kinna", "bbox": "0,0,40,30"},  # the same row again
    ]
    out = tmp_path / "arch"
    s = run(IngestConfig(src=str(_csv(tmp_path / "m.csv", rows)), out=str(out), survey="2024"))
    assert (s["candidates"], s["written"], s["rejected"], s["duplicates_of_existing"]) == (4, 3, 1, 0)
    _accounted(s)
    t = {r["individual_id"]: r for r in archive.read_archive(str(out)).to_pylist()}
    assert set(t) == {"kinna", "ayo", "bo"}
    assert t["kinna"]["photo_id"] == t["ayo"]["photo_id"] != t["bo"]["photo_id"]
    assert len({r["image_id"] for r in t.values()}) == 3
    assert t["bo"]["image_id"] == t["bo"]["photo_id"]  # a whole photo: one annotation, the same id
    assert imageio.decode(t["ayo"]["image"], bbox=t["ayo"]["bbox"]).image.size == (40, 40)
    [reason] = _reasons(out)
    assert reason.startswith("duplicate: the same annotation as img/pride.jpg")
    again = run(IngestConfig(src=str(tmp_path / "m.csv"), out=str(out), survey="2024"))
    assert (again["written"], again["rejected"], again["duplicates_of_existing"]) == (0, 1, 3)
    _accounted(again)
    assert archive.read_archive(str(out)).num_rows == 3


def test_user_annotation_ids_are_kept_and_name_the_rows(tmp_path):
    _jpg(tmp_path / "pride.jpg", seed=1)
    rows = [
        {"path": "pride.jpg", "annotation_id": "ann-1", "individual_id": "kinna", "bbox": [0, 0, 40, 30]},
        {"path": "pride.jpg", "annotation_id": "ann-2", "individual_id": "ayo", "bbox": [0, 0, 40, 30]},
    ]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    s = run(IngestConfig(src=str(tmp_path / "m.json"), out=str(tmp_path / "a")))
    assert (s["written"], s["rejected"]) == (2, 0)
    t = archive.read_archive(str(tmp_path / "a"), columns=["annotation_id", "photo_id"]).to_pylist()
    assert sorted(r["annotation_id"] for r in t) == ["ann-1", "ann-2"]
    assert len({r["photo_id"] for r in t}) == 1 and len({r["image_id"] for r in t}) == 2
    assert {r["image_id"] for r in t} == {archive.stable_id("", "annotation", a) for a in ("ann-1", "ann-2")}


def test_archive_without_photo_id_still_reads(tmp_path):
    """An archive written before photo_id existed: photo_id reads as image_id, annotation_id null."""
    out = tmp_path / "old"
    out.mkdir()
    old = {"image_id": "x1", "image": jpeg_bytes(photo()), "individual_id": "kinna", "source": "/p/x1.jpg"}
    cols = [c for c in archive.ARCHIVE_SCHEMA.names if c not in ("photo_id", "annotation_id")]
    schema = pa.schema([archive.ARCHIVE_SCHEMA.field(c) for c in cols])
    pq.write_table(pa.Table.from_pylist([old], schema=schema), out / "part-old.parquet")
    [row] = archive.read_archive(str(out)).to_pylist()
    assert row["photo_id"] == "x1" and row["annotation_id"] is None
    assert archive.read_archive(str(out), columns=["photo_id"]).column("photo_id").to_pylist() == ["x1"]
    assert [r["photo_id"] for r in archive.iter_rows(str(out), columns=["photo_id"])] == ["x1"]


# -- item 3: a symlink loop ---------------------------------------------------------------------


def test_symlink_loop_and_linked_file_count_once(tmp_path):
    src = tmp_path / "S"
    _jpg(src / "kinna" / "a.jpg", seed=1)
    (src / "loopdir").mkdir()
    os.symlink("..", src / "loopdir" / "up")  # S/loopdir/up -> S: a loop
    (src / "ayo").mkdir()
    os.symlink("../kinna/a.jpg", src / "ayo" / "same.jpg")  # the same file under another individual
    _jpg(tmp_path / "elsewhere" / "bo" / "b.jpg", seed=2)
    os.symlink(tmp_path / "elsewhere" / "bo", src / "bo")  # a folder kept on another disk: walked
    s = run(IngestConfig(src=str(src), out=str(tmp_path / "arch")))
    assert (s["candidates"], s["written"], s["rejected"]) == (3, 2, 1)
    _accounted(s)
    t = archive.read_archive(str(tmp_path / "arch")).to_pylist()
    assert sorted((r["individual_id"], Path(r["source"]).name) for r in t) == [
        ("bo", "b.jpg"),
        ("kinna", "a.jpg"),
    ]
    [reason] = _reasons(tmp_path / "arch")
    assert reason.startswith(f"duplicate: the same file as {src / 'kinna' / 'a.jpg'}")


# -- item 5: one file under several spellings ---------------------------------------------------


def test_one_file_under_several_spellings_is_one_row(tmp_path):
    _jpg(tmp_path / "img" / "b.jpg")
    rows = [{"path": p, "individual_id": "bo"} for p in ("img/b.jpg", "./img/b.jpg", "img/../img/b.jpg")]
    s = run(IngestConfig(src=str(_csv(tmp_path / "m.csv", rows)), out=str(tmp_path / "a")))
    assert (s["candidates"], s["written"], s["rejected"]) == (3, 1, 2)
    _accounted(s)
    [row] = archive.read_archive(str(tmp_path / "a")).to_pylist()
    assert row["source"] == str(tmp_path / "img" / "b.jpg")
    assert _reasons(tmp_path / "a") == ["duplicate: the same annotation as img/b.jpg; ingested once"] * 2


# -- item 6: unknown identities -----------------------------------------------------------------


def test_unlabelled_names_are_one_rule_in_every_format(tmp_path):
    names = ["unknown", "Unknown", " UNIDENTIFIED ", "", "-", "NA", "nan", "None", "n/a", "kinna"]
    rows = []
    for i, name in enumerate(names):
        _jpg(tmp_path / f"p{i}.jpg", seed=i)
        rows.append({"path": f"p{i}.jpg", "individual_id": name})
    s = run(IngestConfig(src=str(_csv(tmp_path / "m.csv", rows)), out=str(tmp_path / "a")))
    assert (s["written"], s["individuals"]) == (len(names), 1)
    labels = archive.read_archive(str(tmp_path / "a"), columns=["individual_id"]).column("individual_id")
    assert sorted(v for v in labels.to_pylist() if v) == ["kinna"]
    (tmp_path / "m.jsonl").write_text(
        "\n".join(json.dumps({"path": r["path"], "identity": r["individual_id"]}) for r in rows)
    )
    s = run(IngestConfig(src=str(tmp_path / "m.jsonl"), out=str(tmp_path / "b")))
    assert s["individuals"] == 1
    for folder in ("Unknown", "unidentified", "NA", "kinna"):
        _jpg(tmp_path / "F" / folder / "x.jpg")
    s = run(IngestConfig(src=str(tmp_path / "F"), out=str(tmp_path / "c")))
    assert (s["written"], s["individuals"]) == (4, 1)
    assert all(individual_or_none(n.upper()) is None for n in UNLABELLED_NAMES)
    assert individual_or_none(" Kinna ") == "Kinna" and individual_or_none(None) is None


# -- item 8 (bbox): non-finite and impossible boxes ---------------------------------------------


def test_non_finite_and_impossible_bboxes_are_rejects(tmp_path):
    _jpg(tmp_path / "p.jpg")  # 96 x 64
    boxes = {
        "good": "1,1,20,20",
        "nan": "nan,1,20,20",
        "inf": "1,1,inf,20",
        "neg": "1,1,-5,20",
        "out": "500,500,10,10",
    }
    rows = [{"path": "p.jpg", "individual_id": k, "bbox": v} for k, v in boxes.items()]
    out = tmp_path / "a"
    s = run(IngestConfig(src=str(_csv(tmp_path / "m.csv", rows)), out=str(out)))
    assert (s["candidates"], s["written"], s["rejected"]) == (5, 1, 4)
    _accounted(s)
    [row] = archive.read_archive(str(out)).to_pylist()
    assert row["individual_id"] == "good"
    reasons = _reasons(out)
    assert all(r.startswith("bad bbox:") for r in reasons), reasons
    assert sum("non-finite" in r for r in reasons) == 2
    assert sum("width or height <= 0" in r for r in reasons) == 1
    assert sum("outside the 96x64 image" in r for r in reasons) == 1


# -- item 9: a corrected label on re-ingest -----------------------------------------------------


def test_corrected_label_is_reported_then_applied_with_update(tmp_path):
    for i in range(3):
        _jpg(tmp_path / f"p{i}.jpg", seed=i)
    rows = [{"path": f"p{i}.jpg", "individual_id": "kinna"} for i in range(3)]
    out = tmp_path / "a"
    run(IngestConfig(src=str(_csv(tmp_path / "m.csv", rows)), out=str(out)))
    rows[1]["individual_id"] = "ayo"  # the correction
    rows[2]["individual_id"] = "unknown"  # and a label withdrawn
    _csv(tmp_path / "m.csv", rows)
    s = run(IngestConfig(src=str(tmp_path / "m.csv"), out=str(out)))
    assert (s["written"], s["duplicates_of_existing"], s["changed"], s["updated"]) == (0, 3, 2, 0)
    _accounted(s)
    assert set(
        archive.read_archive(str(out), columns=["individual_id"]).column("individual_id").to_pylist()
    ) == {"kinna"}
    r = _cli("ingest", str(tmp_path / "m.csv"), str(out))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    lines = _stderr_lines(r)  # the summary table (stderr), then the one-line message
    assert [x for x in lines if "--update" in x] == lines[-1:]
    assert lines[-1].startswith("2 row(s) already in") and lines[-1].endswith(
        "re-run with --update to write them"
    )
    r = _cli("ingest", str(tmp_path / "m.csv"), str(out), "--update")
    assert r.returncode == 0 and "--update" not in r.stderr, r.stderr
    t = archive.read_archive(str(out))  # validated: no image_id twice
    assert t.num_rows == 3
    by_source = {Path(x["source"]).name: x["individual_id"] for x in t.to_pylist()}
    assert by_source == {"p0.jpg": "kinna", "p1.jpg": "ayo", "p2.jpg": None}
    m = manifest.read_manifest(str(out))
    assert (m["counts"]["changed"], m["counts"]["updated"], m["counts"]["written"]) == (2, 2, 0)
    final = run(IngestConfig(src=str(tmp_path / "m.csv"), out=str(out)))
    assert (final["changed"], final["written"], final["archive_rows"]) == (0, 0, 3)


# -- item 11: the smaller ones ------------------------------------------------------------------


def _scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


@pytest.mark.skipif(jpegroi.check(b"")[0] == jpegroi.UNSUPPORTED, reason="reid/_jpegroi not built")
def test_jpeg_with_noise_or_damage_in_its_scan_is_rejected(tmp_path):
    good = jpeg_bytes(photo(320, 240, seed=1))
    start = _scan_start(good)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, len(good) - start - 2, dtype=np.uint8).tobytes()  # no 0xFF: no marker
    mid = len(good) // 2
    files = {
        "good.jpg": good,
        "noise.jpg": good[:start] + noise + b"\xff\xd9",
        "zeroed.jpg": good[:mid] + b"\x00" * 200 + good[mid + 200 :],
        "cut.jpg": good[: start + (len(good) - start) // 2] + b"\xff\xd9",  # premature end of data
    }
    for name, data in files.items():
        (tmp_path / "S" / "kinna").mkdir(parents=True, exist_ok=True)
        (tmp_path / "S" / "kinna" / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # Pillow alone accepts every one of them
    out = tmp_path / "a"
    s = run(IngestConfig(src=str(tmp_path / "S"), out=str(out)))
    assert (s["written"], s["rejected"]) == (1, 3)
    rejects = {Path(r["source"]).name: r["reason"] for r in archive.read_rejects(str(out)).to_pylist()}
    assert set(rejects) == {"noise.jpg", "zeroed.jpg", "cut.jpg"}
    assert all(r.startswith("corrupt: Corrupt JPEG data") for r in rejects.values()), rejects
    assert "premature end of data segment" in rejects["cut.jpg"]


def test_csv_with_byte_order_mark_reads(tmp_path):
    _jpg(tmp_path / "p.jpg")
    path = _csv(tmp_path / "excel.csv", [{"path": "p.jpg", "individual_id": "kinna"}], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    s = run(IngestConfig(src=str(path), out=str(tmp_path / "a")))
    assert (s["written"], s["individuals"]) == (1, 1)


def test_manifest_not_utf8_is_one_line_exit_2(tmp_path):
    _jpg(tmp_path / "p.jpg")
    _csv(tmp_path / "latin.csv", [{"path": "p.jpg", "individual_id": "Zoë"}], encoding="cp1252")
    r = _cli("ingest", str(tmp_path / "latin.csv"), str(tmp_path / "a"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = _stderr_lines(r)
    assert "latin.csv: not UTF-8 text" in line and "save the manifest as UTF-8" in line


def test_malformed_bbox_in_manifest_is_one_line_exit_2(tmp_path):
    _jpg(tmp_path / "p.jpg")
    _csv(tmp_path / "m.csv", [{"path": "p.jpg", "bbox": "1,2,3"}])
    r = _cli("ingest", str(tmp_path / "m.csv"), str(tmp_path / "a"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = _stderr_lines(r)
    assert "record 2 (p.jpg): bbox must be x,y,w,h" in line


def test_concurrent_decodes_are_bounded_by_pixels(tmp_path):
    for i in range(4):  # 6 megapixels each, flat (small files); PNG decodes every pixel
        (tmp_path / "S" / "kinna").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (3000, 2000), (i * 40, 90, 30)).save(tmp_path / "S" / "kinna" / f"{i}.png")
    s = run(IngestConfig(src=str(tmp_path / "S"), out=str(tmp_path / "a"), threads=4, decode_megapixels=8))
    assert s["written"] == 4 and 6_000_000 <= s["peak_decode_pixels"] <= 8_000_000


def test_pixel_budget_lets_an_oversized_decode_run_alone():
    budget = ingest.PixelBudget(10)
    log: list[tuple[str, int]] = []

    def job(name: str, pixels: int) -> None:
        with budget.hold(pixels):
            log.append((name, budget.used))
            time.sleep(0.05)

    threads = [threading.Thread(target=job, args=(f"t{i}", p)) for i, p in enumerate((4, 4, 100, 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.peak <= 10 and budget.used == 0 and len(log) == 4


def test_source_is_absolute_from_a_relative_src(tmp_path):
    _jpg(tmp_path / "S" / "kinna" / "a.jpg")
    r = _cli("ingest", "S", "arch", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [row] = archive.read_archive(str(tmp_path / "arch"), columns=["source"]).to_pylist()
    assert row["source"] == str(tmp_path / "S" / "kinna" / "a.jpg")
    assert manifest.read_manifest(str(tmp_path / "arch"))["config"]["src"] == str(tmp_path / "S")


def test_manifest_records_every_source(tmp_path):
    _jpg(tmp_path / "S1" / "kinna" / "a.jpg", seed=1)
    _jpg(tmp_path / "S2" / "ayo" / "b.jpg", seed=2)
    out = str(tmp_path / "a")
    run(IngestConfig(src=str(tmp_path / "S1"), out=out))
    s = run(IngestConfig(src=str(tmp_path / "S2"), out=out))
    assert s["archive_rows"] == 2
    run(IngestConfig(src=str(tmp_path / "S1"), out=out))  # again: listed once, moved last
    uris = [i["uri"] for i in manifest.read_manifest(out)["inputs"]]
    assert uris == [str(tmp_path / "S2"), str(tmp_path / "S1")]
