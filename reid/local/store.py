"""Local features on storage: the Parquet contract, units of work, reading features by image id.

One row per image (``FEATURES_SCHEMA``): ``image_id``, ``features_id`` (the extractor settings'
hash, as ``model_id`` is for embeddings), the resized crop's size and scale, the keypoint count,
and two binary columns: positions (float16 little-endian, [n, 2]) and descriptors (uint8 or
float16, [n, d]). A SIFT image of 1,000 keypoints takes ~132 KB before compression.

Units are the archive's row groups, keyed as ``reid embed`` keys them (``part-<unit>.parquet``
beside rejects in ``_rejects/``, ``_manifest.json`` last), so the features of an archive sit in
one folder per extractor setting and a re-run skips committed units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reid import archive, manifest, storage
from reid.errors import ReidError
from reid.local.extract import Features

__all__ = [
    "FEATURES_SCHEMA",
    "IDS",
    "JOB",
    "FeatureSet",
    "FeatureStore",
    "Unit",
    "decode_row",
    "extract_unit",
    "write_ids",
    "features_rows",
    "plan_units",
    "read_features",
    "unit_uri",
]

JOB = "keypoints"
REJECTS_DIR = "_rejects"
IDS = "_ids.parquet"  # image_id -> part file, row group: written with the manifest (one read finds any image)
ROW_GROUP = 8  # images per Parquet row group in a part: a reader by id reads ~8 images per image it needs
FEATURES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("features_id", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),  # of the resized crop
        pa.field("height", pa.int32(), nullable=False),
        pa.field("scale", pa.float32(), nullable=False),  # resized / original crop pixels
        pa.field("n", pa.int32(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("desc_dtype", pa.string(), nullable=False),  # "uint8" | "float16"
        pa.field("xy", pa.large_binary(), nullable=False),
        pa.field("desc", pa.large_binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Unit:
    """One archive row group: the features part it becomes is ``part-<key>.parquet``."""

    file: str
    row_group: int
    rows: int
    key: str


def plan_units(archive_uri: str) -> list[Unit]:
    """One unit per (archive file, row group), keyed as ``reid embed`` keys its units."""
    units = []
    for f in archive.archive_files(archive_uri):
        fs, path = storage.resolve(f)
        with fs.open_input_file(path) as fh:
            md = pq.ParquetFile(fh)
            archive.validate_projection(md.schema_arrow, ["image_id", "image", "bbox", "source"], f)
            rel = f[len(archive_uri.rstrip("/")) :].lstrip("/")
            for rg in range(md.metadata.num_row_groups):
                rows = md.metadata.row_group(rg).num_rows
                units.append(Unit(f, rg, rows, archive.stable_id(rel, str(rg))[:16]))
    return units


def unit_uri(out: str, key: str) -> str:
    return storage.join(out, f"part-{key}.parquet")


def _row_groups(uri: str) -> tuple[list[str], list[int]]:
    """A part's image ids and the row group each sits in."""
    fs, path = storage.resolve(uri)
    ids, groups = [], []
    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        for rg in range(pf.metadata.num_row_groups):
            got = pf.read_row_group(rg, columns=["image_id"]).column("image_id").to_pylist()
            ids += got
            groups += [rg] * len(got)
    return ids, groups


def write_ids(out: str, keys: list[str]) -> int:
    """The id table of a complete output (``_ids.parquet``: image_id, part, row_group); returns its rows."""
    cols: dict[str, list] = {"image_id": [], "part": [], "row_group": []}
    for key in keys:
        ids, groups = _row_groups(unit_uri(out, key))
        cols["image_id"] += ids
        cols["part"] += [f"part-{key}.parquet"] * len(ids)
        cols["row_group"] += groups
    table = pa.table(
        {
            "image_id": pa.array(cols["image_id"], pa.string()),
            "part": pa.array(cols["part"], pa.string()),
            "row_group": pa.array(cols["row_group"], pa.int32()),
        }
    )
    storage.write_parquet(table, storage.join(out, IDS))
    return table.num_rows


def features_rows(image_ids: list[str], feats: list[Features], features_id: str) -> pa.Table:
    """The Parquet rows of some images' features."""
    return pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "features_id": pa.array([features_id] * len(feats), pa.string()),
            "width": pa.array([f.size[0] for f in feats], pa.int32()),
            "height": pa.array([f.size[1] for f in feats], pa.int32()),
            "scale": pa.array([f.scale for f in feats], pa.float32()),
            "n": pa.array([len(f) for f in feats], pa.int32()),
            "dim": pa.array([f.desc.shape[1] if f.desc.ndim == 2 else 0 for f in feats], pa.int32()),
            "desc_dtype": pa.array([str(f.desc.dtype) for f in feats], pa.string()),
            "xy": pa.array([np.ascontiguousarray(f.xy, "<f2").tobytes() for f in feats], pa.large_binary()),
            "desc": pa.array([np.ascontiguousarray(f.desc).tobytes() for f in feats], pa.large_binary()),
        },
        schema=FEATURES_SCHEMA,
    )


def decode_row(row: dict) -> Features:
    """One stored row (as a dict) back to :class:`Features`."""
    n, dim = int(row["n"]), int(row["dim"])
    dtype = np.dtype(row["desc_dtype"])
    return Features(
        xy=np.frombuffer(row["xy"], "<f2").reshape(n, 2),
        desc=np.frombuffer(row["desc"], dtype).reshape(n, dim),
        size=(int(row["width"]), int(row["height"])),
        scale=float(row["scale"]),
    )


def read_features(uri: str, image_ids: list[str] | None = None) -> dict[str, Features]:
    """Features of a committed output (refuses one without a manifest), all or only ``image_ids``."""
    return FeatureStore(uri).get(image_ids)


class FeatureStore:
    """A committed features output, read by image id (each part file read only for the ids it holds)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.manifest = manifest.require_manifest(uri, job=JOB)
        self.features_id = self.manifest.get("features_id")
        self.files = storage.list_files(uri, suffix=".parquet", recursive=False)
        self.files = [f for f in self.files if f.rsplit("/", 1)[-1].startswith("part-")]
        if not self.files:
            raise ReidError(f"{uri}: no features part files; run `reid keypoints` first")
        self._where: dict[str, int] | None = None

    def where(self) -> dict[str, tuple[int, int]]:
        """image_id -> (part file number, row group) (read once: the id table, else every part's ids)."""
        if self._where is None:
            self._where = {}
            ids_uri = storage.join(self.uri, IDS)
            if storage.exists(ids_uri):
                t = storage.read_parquet(ids_uri)
                number = {f.rsplit("/", 1)[-1]: i for i, f in enumerate(self.files)}
                groups = t.column("row_group").to_pylist() if "row_group" in t.column_names else [-1] * len(t)
                for image_id, part, rg in zip(
                    t.column("image_id").to_pylist(), t.column("part").to_pylist(), groups
                ):
                    if part in number:
                        self._where[image_id] = (number[part], rg)
                return self._where
            for i, f in enumerate(self.files):
                ids, groups = _row_groups(f)
                self._where.update({image_id: (i, rg) for image_id, rg in zip(ids, groups)})
        return self._where

    def _read(self, i: int, groups: set[int] | None) -> pa.Table:
        """Part ``i``, whole or only some row groups (-1 in ``groups``: an old id table, whole)."""
        if groups is None or -1 in groups:
            return storage.read_parquet(self.files[i])
        fs, path = storage.resolve(self.files[i])
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(fh).read_row_groups(sorted(groups))

    def get(self, image_ids: list[str] | None = None) -> dict[str, Features]:
        """Features by image id (ids without features are absent from the result); only the row
        groups holding them are read."""
        need: dict[int, set[int] | None]
        if image_ids is None:
            need = dict.fromkeys(range(len(self.files)))
            wanted = None
        else:
            where = self.where()
            need = {}
            for image_id in image_ids:
                if image_id in where:
                    i, rg = where[image_id]
                    need.setdefault(i, set()).add(rg)
            wanted = pa.array(sorted(set(image_ids)), pa.string())
        out: dict[str, Features] = {}
        for i in sorted(need):
            t = self._read(i, need[i])
            if wanted is not None:
                t = t.filter(pc.is_in(t.column("image_id"), value_set=wanted))
            for row in t.to_pylist():
                out[row["image_id"]] = decode_row(row)
        return out


def extract_unit(unit: Unit, settings, out: str) -> dict:
    """Extract one unit's features and commit it: rejects first (``_rejects/<key>.parquet``), then
    the part (atomic write: the commit). Returns counts; safe to re-run (same names, same bytes)."""
    from reid.local.extract import create_extractor
    from reid.schema import REJECTS_SCHEMA

    extractor = create_extractor(settings)
    fs, path = storage.resolve(unit.file)
    with fs.open_input_file(path) as fh:
        t = pq.ParquetFile(fh).read_row_group(unit.row_group, columns=["image_id", "image", "bbox", "source"])
    ids, feats, rejects = [], [], []
    for image_id, data, bbox, source in zip(
        t.column("image_id").to_pylist(),
        t.column("image").to_pylist(),
        t.column("bbox").to_pylist(),
        t.column("source").to_pylist(),
    ):
        f, reason = extractor.extract(data, bbox)
        if f is None:
            rejects.append({"image_id": image_id, "source": source, "reason": reason})
        else:
            ids.append(image_id)
            feats.append(f)
    if rejects:
        rej = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
        storage.write_parquet(rej, storage.join(out, REJECTS_DIR, f"{unit.key}.parquet"))
    storage.write_parquet(
        features_rows(ids, feats, settings.features_id()), unit_uri(out, unit.key), row_group_size=ROW_GROUP
    )
    return {
        "unit": unit.key,
        "extracted": len(ids),
        "rejected": len(rejects),
        "keypoints": sum(map(len, feats)),
    }


class FeatureSet:
    """Several committed features outputs read as one (an archive's and new photos', say); they must
    share one extractor setting, or their inlier counts would not mean the same."""

    def __init__(self, uris: str | list[str]):
        self.uris = [uris] if isinstance(uris, str) else list(uris)
        self.stores = [FeatureStore(u) for u in self.uris]
        ids = {s.features_id for s in self.stores}
        if len(ids) > 1:
            raise ReidError(
                f"features {', '.join(self.uris)} come from different extractor settings "
                f"({', '.join(sorted(map(str, ids)))}); extract them all with the same `reid keypoints` options"
            )
        self.features_id = ids.pop()

    def get(self, image_ids: list[str] | None = None) -> dict[str, Features]:
        """Features by image id, from whichever output holds them (the first one wins)."""
        out: dict[str, Features] = {}
        for s in self.stores:
            want = None if image_ids is None else [i for i in image_ids if i not in out]
            if want == []:
                break
            out.update({k: v for k, v in s.get(want).items() if k not in out})
        return out
