"""``reid export``: a match run's results as files people open (no Ray; :mod:`jobs.export` wires it).

Written under OUT::

    sightings.csv / sightings.parquet   one row per annotation (reid.export.sightings)
    individuals/<name>/<image_id>.jpg   crops per individual (``unidentified/`` for the rest)
    individuals/individuals.csv         one row per individual: sightings, first/last seen, ...
    coco.json                           COCO with individual names (``reid ingest`` reads it back)
    camtrapdp/                          Camtrap DP package, observations with individualID
    capture_history.csv / .inp          individual x survey (MARK's .inp too)

The archive and the reviews (reviewers' confirmed labels overrule the matcher) default to those
the match run names: its ``--reviews``, else its index; the archive through the lineage
matches <- index <- embeddings <- archive.
"""

from __future__ import annotations

import pyarrow as pa

from reid import archive, manifest, review, storage
from reid.errors import ReidError
from reid.export import formats, sightings
from reid.export.formats import UNIDENTIFIED
from reid.search import population

__all__ = ["UNIDENTIFIED", "export", "find_inputs", "formats", "sightings"]

ARCHIVE_JOBS = ("ingest", "synth")


def _inputs(uri: str) -> list[dict]:
    m = manifest.read_manifest(uri)
    return [i for i in (m or {}).get("inputs", []) if isinstance(i, dict) and i.get("uri")]


def find_inputs(matches: str) -> tuple[str | None, str | None]:
    """(archive, reviews) named by a match run: the archive through its lineage (the queries'
    archive for a ``--query`` run: its decisions are about those photos), the reviews it applied
    (``--reviews``) or else its index (None where the trail ends)."""
    config = (manifest.read_manifest(matches) or {}).get("config") or {}
    index = next((i["uri"] for i in _inputs(matches) if i.get("job") == "index"), None)
    reviews = config.get("reviews") or index
    roots = [i["uri"] for i in _inputs(matches)]
    if config.get("query"):
        roots = [config["query"]]
    seen, todo, found = set(), roots, None
    while todo and found is None:
        uri = todo.pop(0)
        if uri in seen:
            continue
        seen.add(uri)
        m = manifest.read_manifest(uri) or {}
        if m.get("job") in ARCHIVE_JOBS:
            found = uri
        else:
            todo += [i["uri"] for i in _inputs(uri)]
    return found, reviews


def _table(uri: str) -> pa.Table | None:
    return storage.read_parquet(uri) if storage.exists(uri) else None


def export(
    matches: str | None,
    out: str,
    archive_uri: str | None = None,
    reviews: str | None = None,
    crops: bool = True,
    crop_size: int = 512,
) -> dict:
    """Write every export file; returns counts. ``matches`` None exports the archive's labels."""
    id_format = None  # the match run's scheme for minted ids, so exported names equal its names
    if matches is not None:
        id_format = manifest.require_manifest(matches, job="match").get("config", {}).get("id_format")
        found_archive, found_reviews = find_inputs(matches)
        archive_uri, reviews = archive_uri or found_archive, reviews or found_reviews
    if archive_uri is None:
        raise ReidError(
            f"{matches}: its lineage names no archive (matches <- index <- embeddings <- archive); "
            "give it with --archive"
        )
    meta = archive.read_archive(archive_uri, columns=sightings.ARCHIVE_COLUMNS)
    decisions = _table(storage.join(matches, "decisions.parquet")) if matches else None
    proposed = _table(storage.join(matches, "new_individuals.parquet")) if matches else None
    labels = review.confirmed_labels(reviews, id_format) if reviews else None
    table = sightings.build(meta, decisions, proposed, labels)
    counts = {"sightings": len(table), "reviewed": 0 if labels is None else len(labels)}
    crop_paths: dict[str, str] = {}
    if crops:
        crop_paths, failed = formats.write_crops(
            archive_uri, table, storage.join(out, "individuals"), crop_size
        )
        counts.update(crops=len(crop_paths), crops_failed=len(failed))
        if failed:
            archive.write_rejects(out, failed)
    crop_col = [
        f"individuals/{crop_paths[i]}" if i in crop_paths else None
        for i in table.column("image_id").to_pylist()
    ]
    table = table.append_column("crop", pa.array(crop_col, pa.string()))
    storage.write_parquet(table, storage.join(out, "sightings.parquet"))
    storage.write_text(storage.join(out, "sightings.csv"), formats.to_csv(table))
    sheet = formats.individuals_sheet(table)
    storage.write_text(storage.join(out, "individuals", "individuals.csv"), formats.to_csv(sheet))
    storage.write_json(storage.join(out, "coco.json"), formats.coco_document(table))
    for name, text in formats.camtrapdp_package(table).items():
        storage.write_text(storage.join(out, "camtrapdp", name), text)
    history = formats.capture_history(table)
    storage.write_text(storage.join(out, "capture_history.csv"), population.to_csv(history))
    storage.write_text(storage.join(out, "capture_history.inp"), population.to_mark_inp(history))
    identified = table.column("individual").drop_null()
    counts.update(
        individuals=len(set(identified.to_pylist())),
        unidentified=len(table) - len(identified),
        archive=archive_uri,
        reviews=reviews,
    )
    return counts
