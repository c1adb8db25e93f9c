"""Small input files of each `reid ingest` format (COCO, MegaDetector, Camtrap DP, ...) over real JPEGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from tests.support.images import jpeg_bytes, photo


def put_photos(folder: Path, names: list[str], w: int = 96, h: int = 64) -> None:
    for i, name in enumerate(names):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg_bytes(photo(w, h, seed=i)))


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


WD_ROWS = [
    {"image_id": 101, "identity": "zara", "path": "images/a.jpg", "bbox": "[10, 5, 40, 30]",
     "date": "2021-06-01", "orientation": "left", "species": "zebra"},
    {"image_id": 102, "identity": "unknown", "path": "images/b.jpg", "bbox": "", "date": "",
     "orientation": "Right", "species": "zebra"},
    {"image_id": 103, "identity": "zara", "path": "images/missing.jpg", "bbox": "", "date": "",
     "orientation": "", "species": "zebra"},
    {"image_id": 104, "identity": "zed", "path": "images/c.jpg", "bbox": "[0, 0, 0, 10]", "date": "",
     "orientation": "", "species": "zebra"},
    {"image_id": 105, "identity": "zed", "path": "", "bbox": "", "date": "", "orientation": "",
     "species": "zebra"},
    {"image_id": 106, "identity": "zed", "path": "images/c.jpg", "bbox": "[1, 2, 3]", "date": "",
     "orientation": "front", "species": "zebra"},
]  # fmt: skip


def write_wildlife_datasets(root: Path, parquet: bool = False) -> Path:
    put_photos(root / "images", ["a.jpg", "b.jpg", "c.jpg"])
    if parquet:
        df = pd.DataFrame(WD_ROWS)
        df["bbox"] = [[10.0, 5.0, 40.0, 30.0], None, None, [0.0, 0.0, 0.0, 10.0], None, [1.0, 2.0, 3.0]]
        df["date"] = df["date"].replace("", None)
        df = df.rename(columns={"orientation": "position"})
        df.to_parquet(root / "metadata.parquet")
        return root / "metadata.parquet"
    write_csv(root / "metadata.csv", WD_ROWS)
    return root / "metadata.csv"


def coco_doc() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "img/a.jpg", "width": 96, "height": 64, "date_captured": "2020-01-02 03:04:05"},
            {"id": 2, "file_name": "img/b.jpg", "width": 96, "height": 64},
            {"id": 3, "file_name": "img/c.jpg", "width": 96, "height": 64},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 5, 40, 30], "name": "ayo", "viewpoint": "left"},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [50, 10, 30, 30], "name": "____"},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "attributes": {"individual_id": "bo"}},
            {"id": 14, "image_id": 99, "category_id": 1, "bbox": [0, 0, 20, 20], "name": "ayo"},
            {"id": 15, "image_id": 2, "category_id": 1, "bbox": [0, 0, -1, 5], "name": "bo"},
        ],
        "categories": [{"id": 1, "name": "lion"}],
    }  # fmt: skip


def write_coco(root: Path) -> Path:
    put_photos(root / "img", ["a.jpg", "b.jpg", "c.jpg"])
    (root / "coco.json").write_text(json.dumps(coco_doc()))
    return root / "coco.json"


def megadetector_doc() -> dict:
    return {
        "info": {"detector": "md_v5a.0.0.pt"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [
            {"file": "a.jpg", "detections": [
                {"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.5, 0.5]},
                {"category": "1", "conf": 0.1, "bbox": [0.6, 0.6, 0.2, 0.2]},
                {"category": "2", "conf": 0.95, "bbox": [0.0, 0.0, 0.25, 0.5]},
            ]},
            {"file": "b.jpg", "detections": []},
            {"file": "c.jpg", "failure": "Failure image access"},
            {"file": "d.jpg", "detections": [{"category": "1", "conf": 0.5, "bbox": [0.5, 0.5, 0.6, 0.2]}]},
        ],
    }  # fmt: skip


def write_megadetector(root: Path) -> Path:
    put_photos(root, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (root / "md.json").write_text(json.dumps(megadetector_doc()))
    return root / "md.json"


def write_camtrapdp(root: Path) -> Path:
    put_photos(root / "media", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (root / "datapackage.json").write_text(json.dumps({"profile": "camtrap-dp/1.0", "resources": []}))
    write_csv(root / "deployments.csv", [{"deploymentID": "dep1"}, {"deploymentID": "dep2"}])
    write_csv(
        root / "media.csv",
        [
            {"mediaID": "m1", "deploymentID": "dep1", "timestamp": "2022-03-01T10:00:00Z", "filePath": "media/a.jpg"},
            {"mediaID": "m2", "deploymentID": "dep2", "timestamp": "2022-03-02T11:00:00+02:00", "filePath": "media/b.jpg"},
            {"mediaID": "m3", "deploymentID": "dep1", "timestamp": "2022-03-03T12:00:00Z", "filePath": "media/c.jpg"},
            {"mediaID": "m4", "deploymentID": "dep2", "timestamp": "2022-03-04T12:00:00Z", "filePath": "media/d.jpg"},
        ],
    )  # fmt: skip
    obs = [
        {"observationID": "o1", "deploymentID": "dep1", "mediaID": "m1", "observationLevel": "media",
         "observationType": "animal", "scientificName": "Panthera leo", "individualID": "ayo",
         "bboxX": 0.1, "bboxY": 0.2, "bboxWidth": 0.5, "bboxHeight": 0.5, "observationTags": "viewpoint:left"},
        {"observationID": "o2", "deploymentID": "dep1", "mediaID": "m1", "observationLevel": "media",
         "observationType": "animal", "scientificName": "Panthera leo", "individualID": "",
         "bboxX": 0.5, "bboxY": 0.25, "bboxWidth": 0.25, "bboxHeight": 0.5},
        {"observationID": "o3", "deploymentID": "dep2", "mediaID": "m2", "observationLevel": "media",
         "observationType": "animal", "scientificName": "Panthera leo", "individualID": "bo"},
        {"observationID": "o4", "deploymentID": "dep1", "mediaID": "m3", "observationLevel": "media",
         "observationType": "blank"},
        {"observationID": "o5", "deploymentID": "dep1", "mediaID": "", "observationLevel": "event",
         "observationType": "animal", "individualID": "ayo"},
        {"observationID": "o6", "deploymentID": "dep1", "mediaID": "m9", "observationLevel": "media",
         "observationType": "animal"},
    ]  # fmt: skip
    write_csv(root / "observations.csv", obs)
    return root
