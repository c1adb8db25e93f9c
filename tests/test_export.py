"""`reid export`: the sightings table, crops per individual, COCO and Camtrap DP that ingest reads
back, capture histories, reviews applied. The match output is built from real decisions
(reid.matching.decide over a small neighbour table) next to a real archive."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json

import pyarrow as pa
import pytest

from jobs.export import ExportConfig, run
from jobs.ingest import IngestConfig
from jobs.ingest import run as ingest_run
from reid import archive, manifest, matching, review, storage
from reid.images import imageio
from tests.support.formats import write_camtrapdp, write_coco

COMPARED = (
    "image_id",
    "annotation_id",
    "photo_ref",
    "viewpoint",
    "species",
    "captured_at",
    "survey",
    "camera_id",
)


def _by_annotation(uri: str) -> dict[str, dict]:
    rows = archive.read_archive(uri).to_pylist()
    return {r["annotation_id"]: r for r in rows}


def _match_output(arch: str, out: str, edges: list[tuple[str, str, float]], threshold: float) -> None:
    """decisions/new_individuals of a match run over ``arch`` whose k-NN gave ``edges``
    (query annotation, neighbour annotation, score), committed with a match manifest."""
    meta = archive.read_archive(arch, columns=["image_id", "annotation_id", "individual_id", "survey"])
    ids = dict(
        zip(meta.column("annotation_id").to_pylist(), meta.column("image_id").to_pylist(), strict=True)
    )
    label = dict(
        zip(meta.column("image_id").to_pylist(), meta.column("individual_id").to_pylist(), strict=True)
    )
    matches = pa.table(
        {
            "query_id": [ids[q] for q, _, _ in edges],
            "neighbor_id": [ids[n] for _, n, _ in edges],
            "rank": pa.array([1] * len(edges), pa.int32()),
            "score": pa.array([s for _, _, s in edges], pa.float32()),
            "neighbor_individual_id": [label[ids[n]] for _, n, _ in edges],
        }
    )
    decisions = matching.decide(meta, matches, threshold)
    storage.write_parquet(decisions, storage.join(out, "decisions.parquet"))
    proposed = pa.table(
        {"image_id": pa.array([], pa.string()), "proposed_individual": pa.array([], pa.string())}
    )
    storage.write_parquet(proposed, storage.join(out, "new_individuals.parquet"))
    manifest.write_manifest(
        out, "match", {"threshold": threshold}, [arch], {"queries": len(decisions)}, manifest.now()
    )


@pytest.fixture
def exported(tmp_path):
    src = write_coco(tmp_path / "c")
    arch = str(tmp_path / "arch")
    ingest_run(IngestConfig(src=str(src), out=arch, survey="2020"))
    # 12 (unlabelled) is nearest to 11 (ayo) and known; 11 and 13 are under the threshold
    _match_output(arch, str(tmp_path / "m"), [("11", "13", 0.3), ("12", "11", 0.9), ("13", "11", 0.2)], 0.5)
    out = tmp_path / "results"
    summary = run(ExportConfig(matches=str(tmp_path / "m"), out=str(out)))
    return arch, out, summary


def test_sightings_table_and_crops(exported):
    arch, out, summary = exported
    assert summary["archive"] == arch and summary["sightings"] == 3 and summary["crops"] == 3
    with open(out / "sightings.csv", newline="") as f:
        rows = {r["annotation_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"11", "12", "13"}
    pick = {k: (r["individual"], r["basis"], r["decision"]) for k, r in rows.items()}
    assert pick == {
        "11": ("ayo", "label", "new"),
        "12": ("ayo", "match", "known"),
        "13": ("bo", "label", "new"),
    }
    assert float(rows["12"]["score"]) == pytest.approx(0.9) and rows["12"]["predicted_individual"] == "ayo"
    r11 = rows["11"]
    assert (r11["survey"], r11["date"], r11["file_name"], r11["viewpoint"]) == (
        "2020",
        "2020-01-02",
        "a.jpg",
        "left",
    )
    assert [float(r11[f"bbox_{k}"]) for k in "xywh"] == [10, 5, 40, 30]
    assert r11["source"].endswith("/c/img/a.jpg") and rows["11"]["photo_id"] == rows["12"]["photo_id"]
    parquet = storage.read_parquet(str(out / "sightings.parquet"))
    assert parquet.num_rows == 3 and parquet.column("captured_at").type == pa.timestamp("us", tz="UTC")
    # crops per individual, the animal's box
    ayo = sorted(p.name for p in (out / "individuals" / "ayo").iterdir())
    assert len(ayo) == 2 and len(list((out / "individuals" / "bo").iterdir())) == 1
    crop = imageio.decode((out / r11["crop"]).read_bytes())
    assert crop.image.size == (40, 30) and r11["crop"].startswith("individuals/ayo/")
    with open(out / "individuals" / "individuals.csv", newline="") as f:
        sheet = {r["individual"]: r for r in csv.DictReader(f)}
    assert (sheet["ayo"]["sightings"], sheet["ayo"]["photos"], sheet["bo"]["sightings"]) == ("2", "1", "1")
    assert sheet["ayo"]["folder"] == "ayo" and sheet["ayo"]["surveys"] == "2020"
    history = (out / "capture_history.csv").read_text().splitlines()
    assert history[0].split(",")[:3] == ['"individual"', '"2020"', '"ch"'] and len(history) == 3
    assert manifest.read_manifest(str(out))["job"] == "export"


def test_coco_round_trip(exported, tmp_path):
    arch, out, _ = exported
    doc = json.loads((out / "coco.json").read_text())
    assert {a["name"] for a in doc["annotations"]} == {"ayo", "bo"}
    again = str(tmp_path / "again")
    summary = ingest_run(IngestConfig(src=str(out / "coco.json"), out=again))
    assert summary["rejected"] == 0 and summary["written"] == 3
    before, after = _by_annotation(arch), _by_annotation(again)
    assert set(before) == set(after) == {"11", "12", "13"}
    for key in before:
        for col in (*COMPARED, "bbox", "source", "width", "height"):
            assert after[key][col] == before[key][col], (key, col)
    # the labels as they were, plus the individual the matcher found for 12
    assert {k: r["individual_id"] for k, r in after.items()} == {"11": "ayo", "12": "ayo", "13": "bo"}
    # an archive exported without matches comes back exactly, labels included
    run(ExportConfig(archive=arch, out=str(tmp_path / "plain"), crops=False))
    ingest_run(IngestConfig(src=str(tmp_path / "plain" / "coco.json"), out=str(tmp_path / "plain-again")))
    plain = _by_annotation(str(tmp_path / "plain-again"))
    for key in before:
        for col in (*COMPARED, "bbox", "individual_id"):
            assert plain[key][col] == before[key][col], (key, col)


def test_camtrapdp_export_reads_back(tmp_path):
    pkg = write_camtrapdp(tmp_path / "pkg")
    arch = str(tmp_path / "arch")
    ingest_run(IngestConfig(src=str(pkg), out=arch))
    run(ExportConfig(archive=arch, out=str(tmp_path / "out"), crops=False))
    with open(tmp_path / "out" / "camtrapdp" / "observations.csv", newline="") as f:
        obs = {r["observationID"]: r for r in csv.DictReader(f)}
    assert {k: r["individualID"] for k, r in obs.items()} == {"o1": "ayo", "o2": "", "o3": "bo"}
    assert obs["o1"]["observationTags"] == "viewpoint:left" and obs["o1"]["deploymentID"] == "dep1"
    assert {k: r["mediaID"] for k, r in obs.items()} == {"o1": "m1", "o2": "m1", "o3": "m2"}  # the user's ids
    assert float(obs["o1"]["bboxX"]) == pytest.approx(0.1) and float(obs["o1"]["bboxWidth"]) == pytest.approx(
        0.5
    )
    again = str(tmp_path / "again")
    summary = ingest_run(IngestConfig(src=str(tmp_path / "out" / "camtrapdp"), out=again))
    assert summary["rejected"] == 0
    before, after = _by_annotation(arch), _by_annotation(again)
    assert set(after) == {"o1", "o2", "o3"}
    for key in before:
        for col in (*COMPARED, "individual_id", "source"):
            assert after[key][col] == before[key][col], (key, col)
        if before[key]["bbox"] is not None:
            assert after[key]["bbox"] == pytest.approx(before[key]["bbox"], abs=1e-3)
    # the same archive through COCO: a whole photo (o3 has no box) stays a whole photo
    ingest_run(IngestConfig(src=str(tmp_path / "out" / "coco.json"), out=str(tmp_path / "coco")))
    coco = _by_annotation(str(tmp_path / "coco"))
    assert set(coco) == {"o1", "o2", "o3"} and coco["o3"]["bbox"] is None
    for key in before:
        for col in (*COMPARED, "individual_id", "source", "bbox"):
            assert coco[key][col] == before[key][col], (key, col)


def test_reviews_overrule_the_matcher(exported, tmp_path):
    arch, _, _ = exported
    rows = archive.read_archive(arch, columns=["image_id", "annotation_id", "image"]).to_pylist()
    r13 = next(r for r in rows if r["annotation_id"] == "13")
    sha = hashlib.sha256(r13["image"]).hexdigest()
    reviews = str(tmp_path / "reviews")
    review.record(reviews, "new", sha, individual_id="cleo", query_image_id=r13["image_id"], reviewer="ana")
    out = tmp_path / "reviewed"
    summary = run(ExportConfig(matches=str(tmp_path / "m"), out=str(out), reviews=reviews, crops=False))
    assert summary["reviewed"] == 1 and summary["individuals"] == 2
    table = storage.read_parquet(str(out / "sightings.parquet")).to_pylist()
    r = next(r for r in table if r["annotation_id"] == "13")
    assert (r["individual"], r["basis"], r["reviewed"], r["reviewer"], r["label"]) == (
        "cleo",
        "review",
        "new",
        "ana",
        "bo",
    )
    assert r["captured_at"] is None or isinstance(r["captured_at"], dt.datetime)


@pytest.mark.ray
@pytest.mark.slow
def test_export_of_a_real_match_run(served, tmp_path):
    """synth -> embed -> index (tests/servedata.py) -> match -> export: the archive is found
    through the lineage and every archive row is one sightings row with its crop."""
    from cluster.runtime import shutdown
    from jobs.match import MatchConfig
    from jobs.match import run as match

    matches = str(tmp_path / "m")
    try:
        match(MatchConfig(index=served["index"], out=matches, num_cpus=2))
    finally:
        shutdown()
    out = tmp_path / "out"
    summary = run(ExportConfig(matches=matches, out=str(out), crop_size=64))
    assert summary["archive"] == served["archive"]
    meta = archive.read_archive(served["archive"], columns=["image_id", "individual_id"]).to_pylist()
    table = {r["image_id"]: r for r in storage.read_parquet(str(out / "sightings.parquet")).to_pylist()}
    assert set(table) == {r["image_id"] for r in meta} and summary["crops"] == len(meta)
    decided = storage.read_parquet(str(out.parent / "m" / "decisions.parquet")).num_rows
    assert sum(r["decision"] is not None for r in table.values()) == decided
    for r in meta:
        row = table[r["image_id"]]
        if r["individual_id"] is not None:
            assert (row["individual"], row["basis"]) == (r["individual_id"], "label")
        assert (out / row["crop"]).is_file() and row["crop"].endswith(f"/{r['image_id']}.jpg")
    history = (out / "capture_history.csv").read_text().splitlines()
    assert len(history) - 1 == summary["individuals"]


def test_lineage_finds_the_archive_the_decisions_are_about(tmp_path):
    """matches <- index <- embeddings <- archive; a --query run's decisions are about the query
    photos, so their archive is the one exported."""
    from reid import export

    def out(name: str, job: str, inputs: list[str], config: dict | None = None) -> str:
        uri = str(tmp_path / name)
        manifest.write_manifest(uri, job, config or {}, inputs, {}, manifest.now())
        return uri

    a, q = out("survey", "ingest", []), out("new-photos", "ingest", [])
    emb_a, emb_q = out("emb", "embed", [a]), out("emb-new", "embed", [q])
    index = out("index", "index", [emb_a])
    assert export.find_inputs(out("m", "match", [index])) == (a, index)
    assert export.find_inputs(out("mq", "match", [index, emb_q], {"query": emb_q})) == (q, index)
    reviewed = out("mr", "match", [index], {"reviews": str(tmp_path / "desk")})
    assert export.find_inputs(reviewed) == (a, str(tmp_path / "desk"))


def test_wildlife_datasets_archive_round_trips_through_coco(tmp_path):
    """A table without photo ids: the COCO export numbers its images but reads back with none."""
    from tests.support.formats import write_wildlife_datasets

    arch = str(tmp_path / "arch")
    ingest_run(IngestConfig(src=str(write_wildlife_datasets(tmp_path / "wd")), out=arch, survey="2021"))
    run(ExportConfig(archive=arch, out=str(tmp_path / "out"), crops=False))
    ingest_run(IngestConfig(src=str(tmp_path / "out" / "coco.json"), out=str(tmp_path / "again")))
    before, after = _by_annotation(arch), _by_annotation(str(tmp_path / "again"))
    assert set(after) == {"101", "102"}
    for key in before:
        for col in (*COMPARED, "individual_id", "bbox", "source"):
            assert after[key][col] == before[key][col], (key, col)
    assert after["102"]["bbox"] is None and after["101"]["photo_ref"] is None
