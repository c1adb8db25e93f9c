"""Train/test splits of an archive that do not leak: identity-disjoint, open-set, closed-set, time-aware.

A split is a small Parquet table, one row per archive image (:data:`SPLIT_SCHEMA`):
``image_id``, ``split`` ("train", "test" or "unlabeled"), ``individual_id``, ``known`` (test rows
only: is the individual also in train; null elsewhere), ``survey`` and ``group_id``.

Leakage: frames of one camera burst, and any sightings of one individual at one camera on one
calendar day (UTC), are near-duplicates. They form one *sighting group*
(individual, camera, day of ``captured_at``; the survey stands in for the day when the time is
unknown) and a group always lands on one side. Unlabeled images get the split "unlabeled".

Kinds (``test_fraction`` is the approximate share of labeled images that go to test):

- ``identity``: whole individuals go to test; no test individual appears in train.
- ``closed``: each individual with two or more sighting groups sends some groups to test and
  keeps at least one in train; every test individual is known.
- ``closed-photo``: the closed-set protocol of the wildlife-datasets baselines (and the published
  figures made with it, e.g. MegaDescriptor's): each individual with two or more photos sends about
  ``test_fraction`` of them to test, picked photo by photo, keeping at least one in train. Photos
  of one burst or one day may sit on both sides, so its figures read higher than ``closed``'s;
  use it to compare with published numbers, not to estimate field accuracy.
- ``open``: about ``unknown_fraction`` of the test images come from individuals unseen in train,
  the rest are held-out sighting groups of individuals in train (``known`` tells which).
- ``time``: train = surveys before ``cutoff``, test = surveys from ``cutoff`` on (compared as
  numbers when both are numeric); ``known`` marks test individuals already seen before.

The split's manifest (job, config, code version, input lineage, counts, times) is stored in the
Parquet file's own metadata under ``reid.manifest``, so table and manifest are written in one
atomic step; :func:`read_split` refuses a file without it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reid import storage
from reid.data import sightings
from reid.errors import ConfigError, ReidError

KINDS = ("identity", "open", "closed", "closed-photo", "time")
SPLITS = ("train", "test", "unlabeled")
MANIFEST_KEY = b"reid.manifest"
INPUT_COLUMNS = ["image_id", "individual_id", "camera_id", "captured_at", "survey"]

SPLIT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("individual_id", pa.string()),
        pa.field("known", pa.bool_()),
        pa.field("survey", pa.string()),
        pa.field("group_id", pa.string()),
    ]
)


group_key = sightings.sighting_group  # the sighting group of an image (individual, camera, UTC day)


def _survey_order(values: list[str], cutoff: str) -> tuple[list[str], Callable[[str], bool]]:
    def numeric(v: str) -> bool:
        try:
            float(v)
            return True
        except ValueError:
            return False

    if numeric(cutoff) and all(numeric(v) for v in values):
        return sorted(values, key=float), lambda v: float(v) < float(cutoff)
    return sorted(values), lambda v: v < cutoff


def _greedy(items: list[tuple[str, int]], target: float) -> list[str]:
    """Pick items (name, size) in the given order while that brings the total closer to target."""
    chosen, total = [], 0
    for name, size in items:
        if abs(total + size - target) < abs(total - target) or not chosen:
            chosen.append(name)
            total += size
    return chosen


def _hold_out_groups(
    groups_of: dict[str, list[str]], sizes: dict[str, int], fraction: float, rng: np.random.Generator
) -> set[str]:
    """From each individual with two or more groups, send about ``fraction`` of its images to test
    (whole groups, always keeping one group in train)."""
    test: set[str] = set()
    for ind in sorted(groups_of):
        groups = sorted(groups_of[ind])
        if len(groups) < 2:
            continue
        order = [groups[i] for i in rng.permutation(len(groups))]
        total = sum(sizes[g] for g in groups)
        taken = 0
        for g in order[:-1]:  # the last group stays in train
            if taken + sizes[g] / 2 > fraction * total:
                break
            test.add(g)
            taken += sizes[g]
    if not test:  # a small fraction rounded to nothing: hold out one group of the richest individual
        ind = max(sorted(groups_of), key=lambda i: (len(groups_of[i]), sum(sizes[g] for g in groups_of[i])))
        if len(groups_of[ind]) >= 2:
            test.add(min(groups_of[ind], key=lambda g: (sizes[g], g)))
    return test


def _hold_out_photos(
    labeled: list[int], inds: list[str | None], fraction: float, rng: np.random.Generator
) -> set[int]:
    """Row positions sent to test: about ``fraction`` of each individual's photos (at least one,
    at most all but one), chosen at random photo by photo."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for k in labeled:
        rows_of[inds[k]].append(k)
    test: set[int] = set()
    for ind in sorted(rows_of):
        rows = rows_of[ind]
        if len(rows) < 2:
            continue
        n = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        test.update(rows[i] for i in rng.permutation(len(rows))[:n])
    return test


def make_split(
    table: pa.Table,
    kind: str,
    test_fraction: float = 0.2,
    unknown_fraction: float = 0.5,
    cutoff: str | int | None = None,
    seed: int = 0,
    source: str = "archive",
) -> pa.Table:
    """Assign every image of ``table`` (archive columns :data:`INPUT_COLUMNS`) to train/test/unlabeled."""
    if kind not in KINDS:
        raise ConfigError(f"unknown split kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "time" and not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if kind == "open" and not 0 < unknown_fraction < 1:
        raise ConfigError(
            f"unknown fraction must be between 0 and 1 (exclusive) for an open split, got {unknown_fraction}"
        )
    if kind == "time" and (cutoff is None or str(cutoff).strip() == ""):
        raise ConfigError("a time split needs --cutoff, the first survey that goes to test (e.g. 2023)")
    missing = [c for c in INPUT_COLUMNS if c not in table.column_names]
    if missing:
        raise ReidError(f"{source}: column(s) {', '.join(missing)} missing; is this an image archive?")

    ids = table.column("image_id").to_pylist()
    inds = table.column("individual_id").to_pylist()
    cams = table.column("camera_id").to_pylist()
    times = table.column("captured_at").to_pylist()
    surveys = table.column("survey").to_pylist()
    groups = [group_key(i, c, t, s) for i, c, t, s in zip(inds, cams, times, surveys, strict=True)]

    labeled = [k for k, i in enumerate(inds) if i is not None]
    individuals = sorted({inds[k] for k in labeled})
    if len(individuals) < 2:
        found = f" ({individuals[0]})" if individuals else ""
        raise ReidError(
            f"{source}: {len(individuals)} labeled individual(s){found} among {len(ids)} images; "
            f"the {kind} split needs at least 2 labeled individuals"
        )
    rng = np.random.default_rng(seed)
    img_count: dict[str, int] = defaultdict(int)
    grp_count: dict[str, int] = defaultdict(int)
    groups_of: dict[str, set[str]] = defaultdict(set)
    for k in labeled:
        img_count[inds[k]] += 1
        grp_count[groups[k]] += 1
        groups_of[inds[k]].add(groups[k])
    n_labeled = len(labeled)
    order = [individuals[i] for i in rng.permutation(len(individuals))]

    test_inds: set[str] = set()
    test_groups: set[str] = set()
    test_images: set[int] = set()
    if kind == "identity":
        test_inds = set(_greedy([(i, img_count[i]) for i in order], test_fraction * n_labeled))
        if len(test_inds) == len(individuals):
            test_inds.discard(order[-1])
    elif kind == "closed":
        if not any(len(g) >= 2 for g in groups_of.values()):
            raise ReidError(
                f"{source}: no individual was seen in two separate sightings (camera/day), so a closed-set "
                "split cannot put an individual on both sides; use --kind identity"
            )
        test_groups = _hold_out_groups(groups_of, grp_count, test_fraction, rng)
    elif kind == "closed-photo":
        test_images = _hold_out_photos(labeled, inds, test_fraction, rng)
        if not test_images:
            raise ReidError(f"{source}: no individual has two photos, so no photo can go to test")
    elif kind == "open":
        multi = [i for i in order if len(groups_of[i]) >= 2]
        if not multi:
            raise ReidError(
                f"{source}: no individual was seen in two separate sightings (camera/day), so an open-set "
                "split has no known test individual; use --kind identity"
            )
        target = test_fraction * n_labeled
        keep_known = multi[0]  # guarantees a known test individual
        candidates = [(i, img_count[i]) for i in order if i != keep_known]
        test_inds = set(_greedy(candidates, unknown_fraction * target))
        rest = {i: groups_of[i] for i in individuals if i not in test_inds}
        rest_images = sum(img_count[i] for i in rest)
        known_share = target - sum(img_count[i] for i in test_inds)
        fraction = min(0.9, max(0.0, known_share / max(1, rest_images)))
        test_groups = _hold_out_groups(rest, grp_count, max(fraction, 1e-9), rng)

    is_train_survey = None
    if kind == "time":
        cut = str(cutoff).strip()
        sv = []
        for k in labeled:
            s = (
                surveys[k]
                if surveys[k] is not None
                else (str(times[k].year) if times[k] is not None else None)
            )
            if s is None:
                raise ReidError(
                    f"{source}: image {ids[k]} has neither survey nor captured_at; a time split "
                    "needs one of them on every labeled image"
                )
            sv.append(s)
        eff = dict(zip(labeled, sv, strict=True))
        values, is_train_survey = _survey_order(sorted(set(sv)), cut)
        before = [v for v in values if is_train_survey(v)]
        if not before or len(before) == len(values):
            where = "before the first" if not before else "after the last"
            raise ReidError(
                f"{source}: cutoff {cut} lies {where} survey ({', '.join(values)}), leaving "
                f"{'train' if not before else 'test'} empty; choose a cutoff between {values[0]} and {values[-1]} "
                f"(e.g. {values[-1]})"
            )

    split, known = [], []
    train_inds: set[str] = set()
    for k in range(len(ids)):
        if inds[k] is None:
            split.append("unlabeled")
        elif kind == "time":
            split.append("train" if is_train_survey(eff[k]) else "test")
        elif kind == "closed-photo":
            split.append("test" if k in test_images else "train")
        else:
            split.append("test" if inds[k] in test_inds or groups[k] in test_groups else "train")
        if split[-1] == "train":
            train_inds.add(inds[k])
    for k in range(len(ids)):
        known.append(inds[k] in train_inds if split[k] == "test" else None)
    out = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "split": pa.array(split, pa.string()),
            "individual_id": pa.array(inds, pa.string()),
            "known": pa.array(known, pa.bool_()),
            "survey": pa.array(surveys, pa.string()),
            "group_id": pa.array(groups, pa.string()),
        },
        schema=SPLIT_SCHEMA,
    )
    if "test" not in split or "train" not in split:
        raise ReidError(
            f"{source}: the {kind} split left {'test' if 'test' not in split else 'train'} empty; "
            "the archive has too few labeled sightings for it"
        )
    return out


def split_counts(split: pa.Table) -> dict:
    """Images and individuals per side, and known/unknown test individuals."""
    rows = split.select(["split", "individual_id", "known"]).to_pylist()
    counts: dict = {}
    for name in SPLITS:
        part = [r for r in rows if r["split"] == name]
        counts[f"{name}_images"] = len(part)
        if name != "unlabeled":
            counts[f"{name}_individuals"] = len({r["individual_id"] for r in part})
    test = [r for r in rows if r["split"] == "test"]
    counts["test_known_individuals"] = len({r["individual_id"] for r in test if r["known"]})
    counts["test_unknown_individuals"] = len({r["individual_id"] for r in test if r["known"] is False})
    return counts


def write_split(split: pa.Table, uri: str, manifest: dict) -> None:
    """Write the split with its manifest in the file metadata (one atomic write)."""
    meta = {MANIFEST_KEY: json.dumps(manifest, default=str).encode("utf-8")}
    storage.write_parquet(split.replace_schema_metadata(meta), uri)


def read_split(uri: str) -> tuple[pa.Table, dict]:
    """A split table and its manifest; refuses files that are not complete split tables."""
    if not storage.exists(uri):
        raise ReidError(f"{uri}: split table not found (make one with `reid split`)")
    if storage.is_dir(uri):
        raise ReidError(f"{uri}: is a folder; a split is one Parquet file made by `reid split`")
    fs, path = storage.resolve(uri)
    try:
        table = pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise ReidError(f"{uri}: not a readable Parquet file ({e})") from e
    meta = table.schema.metadata or {}
    if MANIFEST_KEY not in meta:
        raise ReidError(f"{uri}: no split manifest in its metadata; make split tables with `reid split`")
    for field in SPLIT_SCHEMA:
        if field.name not in table.column_names:
            raise ReidError(f"{uri}: split column {field.name!r} is missing")
    return table.replace_schema_metadata(None), json.loads(meta[MANIFEST_KEY])


def split_assignment(uri: str) -> dict[str, str]:
    """``image_id -> train|test|unlabeled`` from a `reid split` table (checked by :func:`read_split`)."""
    table, _ = read_split(uri)
    return dict(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(), strict=True))


def read_split_table(uri: str) -> pa.Table:
    """A split table: Parquet file/folder or CSV with an ``image_id`` column and a role column."""
    if str(uri).lower().endswith((".csv", ".csv.gz")):
        import pyarrow.csv as pcsv

        fs, path = storage.resolve(uri)
        try:
            with fs.open_input_stream(path) as f:
                table = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
        except FileNotFoundError as e:
            raise ReidError(f"split table {uri}: not found") from e
    else:
        files = storage.list_files(uri, suffix=".parquet")
        if not files:
            raise ReidError(f"split table {uri}: not found (give a Parquet file/folder or a .csv)")
        table = pa.concat_tables([storage.read_parquet(f) for f in files], promote_options="permissive")
    if "image_id" not in table.column_names:
        raise ReidError(f"split table {uri}: no 'image_id' column (found: {', '.join(table.column_names)})")
    return table


__all__ = [
    "INPUT_COLUMNS",
    "KINDS",
    "SPLIT_SCHEMA",
    "group_key",
    "make_split",
    "read_split",
    "read_split_table",
    "split_assignment",
    "split_counts",
    "write_split",
]
