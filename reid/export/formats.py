"""Export files built from the sightings table: per-individual crops and spreadsheet, COCO with
individual names, a Camtrap DP package with ``individualID`` filled, capture histories.

COCO and Camtrap DP are written so that ``reid ingest`` reads them back to the same annotations
(the same ``annotation_id``, individual, box, viewpoint, camera, time and survey).
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from reid import archive, storage
from reid.images import imageio
from reid.search import population

__all__ = [
    "UNIDENTIFIED",
    "camtrapdp_package",
    "capture_history",
    "coco_document",
    "folder_names",
    "numeric_ids",
    "unique_or",
    "individuals_sheet",
    "to_csv",
    "write_crops",
]

UNIDENTIFIED = "unidentified"  # the crops folder of annotations with no individual
_UNSAFE = re.compile(r"[^A-Za-z0-9._ \-]+")


def to_csv(table: pa.Table) -> str:
    """A table as CSV text (timestamps in ISO 8601)."""
    return population.to_csv(table)


def folder_names(individuals: list[str | None]) -> dict[str | None, str]:
    """A safe, distinct folder name per individual (None -> ``unidentified``)."""
    out: dict[str | None, str] = {None: UNIDENTIFIED}
    used = {UNIDENTIFIED}
    for name in sorted({i for i in individuals if i is not None}):
        safe = _UNSAFE.sub("_", name).strip(" .") or "_"
        if safe in used:
            safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        used.add(safe)
        out[name] = safe
    return out


def write_crops(
    archive_uri: str, sightings: pa.Table, out: str, max_side: int = 512
) -> tuple[dict, list[dict]]:
    """``out/<individual>/<image_id>.jpg`` for every sightings row (the animal's box, upright,
    longest side at most ``max_side``). Returns (image_id -> crop path relative to ``out``,
    rows that could not be cropped with the reason)."""
    folders = folder_names(sightings.column("individual").to_pylist())
    who = dict(
        zip(sightings.column("image_id").to_pylist(), sightings.column("individual").to_pylist(), strict=True)
    )
    written: dict[str, str] = {}
    failed: list[dict] = []
    for row in archive.iter_rows(archive_uri, columns=["image_id", "image", "bbox", "source"]):
        if row["image_id"] not in who:
            continue
        dec = imageio.decode(row["image"], bbox=row["bbox"], target_size=max_side)
        if not dec.ok:
            failed.append({"image_id": row["image_id"], "source": row["source"], "reason": dec.reason})
            continue
        img = dec.image
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        rel = f"{folders[who[row['image_id']]]}/{row['image_id']}.jpg"
        storage.write_bytes(storage.join(out, rel), imageio.encode_jpeg(img))
        written[row["image_id"]] = rel
    return written, failed


def individuals_sheet(sightings: pa.Table) -> pa.Table:
    """One row per individual (and one for the unidentified): sightings, photos, first and last
    seen, surveys, cameras, how it was identified, and its crops folder."""
    folders = folder_names(sightings.column("individual").to_pylist())
    groups: dict[str | None, list[dict]] = {}
    for r in sightings.select(
        ["individual", "photo_id", "captured_at", "survey", "camera_id", "basis"]
    ).to_pylist():
        groups.setdefault(r["individual"], []).append(r)

    def joined(rows: list[dict], key: str) -> str:
        return ";".join(sorted({str(r[key]) for r in rows if r[key] is not None}))

    out = []
    for name in sorted(groups, key=lambda n: (n is None, n or "")):
        rows = groups[name]
        times = [r["captured_at"] for r in rows if r["captured_at"] is not None]
        out.append(
            {
                "individual": name,
                "sightings": len(rows),
                "photos": len({r["photo_id"] for r in rows}),
                "first_seen": min(times) if times else None,
                "last_seen": max(times) if times else None,
                "surveys": joined(rows, "survey"),
                "cameras": joined(rows, "camera_id"),
                "basis": joined(rows, "basis"),
                "folder": folders[name],
            }
        )
    schema = pa.schema(
        [
            ("individual", pa.string()),
            ("sightings", pa.int64()),
            ("photos", pa.int64()),
            ("first_seen", pa.timestamp("us", tz="UTC")),
            ("last_seen", pa.timestamp("us", tz="UTC")),
            ("surveys", pa.string()),
            ("cameras", pa.string()),
            ("basis", pa.string()),
            ("folder", pa.string()),
        ]
    )
    return pa.Table.from_pylist(out, schema=schema)


def _box(r: dict) -> list[float]:
    if r["bbox_x"] is None:
        return [0.0, 0.0, float(r["width"] or 0), float(r["height"] or 0)]
    return [float(r[f"bbox_{k}"]) for k in "xywh"]


def numeric_ids(keys: list[str | None]) -> list[int]:
    """COCO's integer ids for ``keys``: a key that is a number and not taken keeps its value,
    the rest are numbered after the largest."""
    taken: set[int] = set()
    want = [int(k) if (k or "").isdigit() else None for k in keys]
    for w in want:
        if w is not None:
            taken.add(w)
    seen: set[int] = set()
    nxt = max(taken, default=0) + 1
    out = []
    for w in want:
        if w is None or w in seen:
            w, nxt = nxt, nxt + 1
        seen.add(w)
        out.append(w)
    return out


def unique_or(keys: list[str | None], fallback: list[str]) -> list[str]:
    """Each key where it names one thing only, else its fallback (a hash id)."""
    counts: dict[str, int] = {}
    for k in keys:
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    return [k if k is not None and counts[k] == 1 else f for k, f in zip(keys, fallback, strict=True)]


def coco_document(sightings: pa.Table) -> dict:
    """COCO with one image per photo and one annotation per sighting, the individual as ``name``
    (as WBIA/Wildbook write it), ``viewpoint``, the user's ``annotation_id`` as the ``id`` when it
    is a number (also kept as a string attribute), the user's photo id likewise, and the match's
    basis and score."""
    rows = sightings.to_pylist()
    species = sorted({r["species"] or "animal" for r in rows})
    categories = [{"id": i, "name": s} for i, s in enumerate(species, start=1)]
    cat = {c["name"]: c["id"] for c in categories}
    photos = list({r["photo_id"]: r["photo_ref"] for r in rows}.items())
    image_ids = dict(zip([p for p, _ in photos], numeric_ids([ref for _, ref in photos]), strict=True))
    ann_ids = numeric_ids([r["annotation_id"] for r in rows])
    images: dict[str, dict] = {}
    annotations = []
    for r, ann_id in zip(rows, ann_ids, strict=True):
        if r["photo_id"] not in images:
            images[r["photo_id"]] = {
                "id": image_ids[r["photo_id"]],
                "photo_ref": r["photo_ref"],
                "file_name": r["source"],
                "width": r["width"],
                "height": r["height"],
                "date_captured": r["captured_at"].isoformat() if r["captured_at"] else None,
                "camera_id": r["camera_id"],
                "survey": r["survey"],
            }
        x, y, w, h = _box(r)
        annotations.append(
            {
                "id": ann_id,
                "image_id": images[r["photo_id"]]["id"],
                "category_id": cat[r["species"] or "animal"],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "name": r["individual"],
                "viewpoint": r["viewpoint"],
                "annotation_id": r["annotation_id"],
                "reid_image_id": r["image_id"],
                "basis": r["basis"],
                "score": r["score"],
            }
        )
    return {
        "info": {"description": "reid export: annotations with individual names", "version": "1.0"},
        "images": list(images.values()),
        "annotations": annotations,
        "categories": categories,
    }


def camtrapdp_package(sightings: pa.Table) -> dict[str, str]:
    """A Camtrap DP package as file name -> text: deployments (cameras), media (photos) and
    media-level observations with ``individualID``, normalised boxes and the viewpoint tag."""
    rows = sightings.to_pylist()
    deployments = sorted({r["camera_id"] for r in rows if r["camera_id"]})
    photos = list({r["photo_id"]: r["photo_ref"] for r in rows}.items())
    media_ids = dict(
        zip([p for p, _ in photos], unique_or([m for _, m in photos], [p for p, _ in photos]), strict=True)
    )
    obs_ids = unique_or([r["annotation_id"] for r in rows], [r["image_id"] for r in rows])
    media: dict[str, dict] = {}
    observations = []
    for r, obs_id in zip(rows, obs_ids, strict=True):
        ts = r["captured_at"].isoformat() if r["captured_at"] else None
        media.setdefault(
            r["photo_id"],
            {
                "mediaID": media_ids[r["photo_id"]],
                "deploymentID": r["camera_id"],
                "captureMethod": None,
                "timestamp": ts,
                "filePath": r["source"],
                "filePublic": "false",
                "fileName": r["file_name"],
                "fileMediatype": "image/jpeg"
                if (r["file_name"] or "").lower().endswith((".jpg", ".jpeg"))
                else None,
            },
        )
        box = None
        if r["bbox_x"] is not None and r["width"] and r["height"]:
            box = [
                r["bbox_x"] / r["width"],
                r["bbox_y"] / r["height"],
                r["bbox_w"] / r["width"],
                r["bbox_h"] / r["height"],
            ]
        human = r["basis"] in ("label", "review")
        observations.append(
            {
                "observationID": obs_id,
                "deploymentID": r["camera_id"],
                "mediaID": media_ids[r["photo_id"]],
                "eventStart": ts,
                "eventEnd": ts,
                "observationLevel": "media",
                "observationType": "animal",
                "scientificName": r["species"],
                "count": 1,
                "individualID": r["individual"],
                **dict(zip(("bboxX", "bboxY", "bboxWidth", "bboxHeight"), box or [None] * 4, strict=True)),
                "classificationMethod": ("human" if human else "machine") if r["individual"] else None,
                "classifiedBy": None if human or not r["individual"] else "reid",
                "classificationProbability": None if human else r["score"],
                "observationTags": f"viewpoint:{r['viewpoint']}" if r["viewpoint"] else None,
            }
        )
    files = {
        "deployments.csv": to_csv(
            pa.Table.from_pylist(
                [{"deploymentID": d} for d in deployments], schema=pa.schema([("deploymentID", pa.string())])
            )
        ),
        "media.csv": to_csv(pa.Table.from_pylist(list(media.values()))) if media else "mediaID\n",
        "observations.csv": to_csv(pa.Table.from_pylist(observations)) if observations else "observationID\n",
    }
    descriptor = {
        "profile": "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json",
        "name": "reid-export",
        "created": None,
        "resources": [
            {"name": n.removesuffix(".csv"), "path": n, "profile": "tabular-data-resource"} for n in files
        ],
    }
    files["datapackage.json"] = json.dumps(descriptor, indent=2)
    return files


def capture_history(sightings: pa.Table) -> pa.Table:
    """Individual x survey 0/1 table (:func:`reid.search.population.capture_history`) of identified sightings."""
    ident = pa.table(
        {
            "image_id": sightings.column("image_id"),
            "survey": sightings.column("survey"),
            "identity": sightings.column("individual"),
            "basis": sightings.column("basis"),
        },
        schema=population.IDENTITIES_SCHEMA,
    )
    return population.capture_history(ident.filter(pc.is_valid(ident.column("identity"))))
