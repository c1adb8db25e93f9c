"""Evaluation protocols over an embeddings table: who queries, who is the gallery, what is excluded.

Three protocols (DESIGN.md, step 6):

* ``loo``: leave-one-out within the set; each labelled image queries all the others. Individuals
  with a single image have nothing to be found, so they serve only as gallery distractors for the
  closed-set metrics (and as "new individual" queries for the open-set ones).
* ``split``: query and gallery images named by a split table (``image_id`` + a role column).
* ``time``: gallery = surveys (or capture times) before a cutoff, queries = from the cutoff on;
  queries whose individual never appears before the cutoff are the new individuals.

Optional exclusions remove near-duplicates of a query from its ranking: the same burst (same
camera, within ``burst_seconds``) or the same day, by the rules of :mod:`reid.sightings` (training
validation uses them too, through :func:`validation_exclusion`). The numbers themselves come from
:mod:`reid.metrics`, the module training validation uses too.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid import manifest, metrics, sightings, storage
from reid.errors import ReidError
from reid.schema import check_unique, validate_embeddings

PROTOCOLS = ("loo", "split", "time")
CURVE_K = 20  # accuracy@k is computed for k = 1..CURVE_K (the report's curve)
MAX_PAIRS = 200_000  # different-individual pair scores kept for the histogram (sampled)
TARGET_FALSE_NEW = 0.05  # default calibration: 5% of known queries called new, as in `reid match`


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class EvalData:
    """The labelled rows of an embeddings table, as arrays (row i is the same image everywhere)."""

    ids: np.ndarray  # object [N]
    labels: np.ndarray  # object [N]
    emb: np.ndarray  # float32 [N, d]
    survey: np.ndarray  # object [N], None where unknown
    captured_at: np.ndarray  # datetime64[us] [N], NaT where unknown
    camera_id: np.ndarray  # object [N]
    viewpoint: np.ndarray | None = None  # object [N], None where unknown
    model_id: str | None = None
    n_unlabelled: int = 0  # rows dropped for having no individual_id

    def __len__(self) -> int:
        return len(self.ids)


def read_embeddings(uri: str, require_committed: bool = True) -> tuple[pa.Table, dict | None]:
    """Read an embeddings output (part files + ``_manifest.json``) validated; returns it and its manifest."""
    m = manifest.require_manifest(uri, job="embed") if require_committed else manifest.read_manifest(uri)
    files = storage.list_files(uri, suffix=".parquet")
    if not files:
        raise ReidError(f"{uri}: no embeddings Parquet files found; run `reid embed` to create them")
    tables = []
    for f in files:
        t = storage.read_parquet(f)
        validate_embeddings(t.schema, f)
        tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive")
    validate_embeddings(table, uri)
    check_unique(table, "image_id", uri)
    models = pc.unique(table.column("model_id")).to_pylist()
    if len(models) > 1:
        raise ReidError(
            f"{uri}: embeddings of {len(models)} different models ({', '.join(models[:3])}); "
            "evaluate one model's embeddings at a time"
        )
    return table, m


def eval_data(table: pa.Table) -> EvalData:
    """Arrays of the labelled rows (unlabelled rows can be neither right nor wrong: dropped, counted)."""
    labelled = pc.is_valid(table.column("individual_id"))
    n_unlabelled = len(table) - int(pc.sum(labelled).as_py() or 0)
    t = table.filter(labelled)
    dim = t.schema.field("embedding").type.list_size
    flat = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    emb = np.asarray(flat, dtype=np.float32).reshape(len(t), dim)
    col = t.column("captured_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    times = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid_t = col.is_valid().to_numpy(zero_copy_only=False)
    captured = np.where(valid_t, times, np.iinfo(np.int64).min)  # int64 min is NaT
    models = pc.unique(t.column("model_id")).to_pylist() if len(t) else []
    return EvalData(
        ids=np.array(t.column("image_id").to_pylist(), dtype=object),
        labels=np.array(t.column("individual_id").to_pylist(), dtype=object),
        emb=emb,
        survey=np.array(t.column("survey").to_pylist(), dtype=object),
        captured_at=captured.astype("datetime64[us]"),
        camera_id=np.array(t.column("camera_id").to_pylist(), dtype=object),
        viewpoint=np.array(
            t.column("viewpoint").to_pylist() if "viewpoint" in t.column_names else [None] * len(t),
            dtype=object,
        ),
        model_id=models[0] if models else None,
        n_unlabelled=n_unlabelled,
    )


# ---------------------------------------------------------------------------------------------
# Protocols


@dataclass
class Protocol:
    """Row numbers (into :class:`EvalData`) of the queries and gallery; gallery None = leave-one-out."""

    name: str
    query: np.ndarray
    gallery: np.ndarray | None
    description: str
    info: dict = field(default_factory=dict)

    @property
    def gallery_rows(self) -> np.ndarray:
        return self.query if self.gallery is None else self.gallery


def leave_one_out(data: EvalData) -> Protocol:
    n_ind = len(set(data.labels))
    singles = _singletons(data.labels)
    return Protocol(
        "loo",
        np.arange(len(data)),
        None,
        f"leave-one-out: each of {len(data)} labelled images queries the other {max(0, len(data) - 1)} "
        f"({n_ind} individuals; {len(singles)} with one image serve as gallery only)",
        {"individuals": n_ind, "single_image_individuals": len(singles)},
    )


def _singletons(labels: np.ndarray) -> set:
    vals, counts = np.unique(labels.astype(str), return_counts=True)
    return set(vals[counts == 1])


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


def from_split(
    data: EvalData,
    split: pa.Table,
    column: str = "split",
    query_values: tuple[str, ...] = ("query",),
    gallery_values: tuple[str, ...] = ("gallery",),
    source: str = "split table",
) -> Protocol:
    """Queries and gallery named by a split table's ``column`` (images it does not name are left out)."""
    if column not in split.column_names:
        raise ReidError(
            f"{source}: no column {column!r} (found: {', '.join(split.column_names)}); pass --split-column"
        )
    role = dict(
        zip(
            split.column("image_id").cast(pa.string()).to_pylist(),
            split.column(column).cast(pa.string()).to_pylist(),
            strict=True,
        )
    )
    roles = np.array([role.get(i) for i in data.ids], dtype=object)
    q = np.flatnonzero(np.isin(roles, list(query_values)))
    g = np.flatnonzero(np.isin(roles, list(gallery_values)))
    found = sorted({r for r in role.values() if r is not None})
    return _protocol(
        "split",
        q,
        g,
        f"split table: {len(q)} queries ({column} in {list(query_values)}) against {len(g)} gallery images "
        f"({column} in {list(gallery_values)}){split_caveat(split)}",
        {"column": column, "not_in_split": int(sum(r is None for r in roles))},
        empty=f"{source}: {len(q)} query and {len(g)} gallery images among the labelled embeddings; "
        f"column {column!r} has values {found[:10]}: pass --query-value / --gallery-value",
    )


def split_caveat(split: pa.Table) -> str:
    """What a reader of the figures must know about how the split was made (from its manifest)."""
    import json

    from reid.split import MANIFEST_KEY

    raw = (split.schema.metadata or {}).get(MANIFEST_KEY)
    kind = ((json.loads(raw).get("config") or {}).get("kind") if raw else None) or ""
    if kind == "closed-photo":
        return (
            "; closed-photo split (the published by-photo protocol): photos of one sighting (burst, day) "
            "may sit on both sides, so figures read higher than on new sightings"
        )
    return ""


def _protocol(
    name: str, q: np.ndarray, g: np.ndarray, description: str, details: dict, empty: str
) -> Protocol:
    """A protocol with queries and a gallery, or the ``empty`` message when either side has none."""
    if len(q) == 0 or len(g) == 0:
        raise ReidError(empty)
    return Protocol(name, q, g, description, details)


def _survey_key(value: str):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def time_aware(data: EvalData, cutoff: str, by: str = "survey") -> Protocol:
    """Gallery = images before ``cutoff``, queries = from it on; by ``survey`` or ``captured_at``.

    Surveys compare numerically when both look like numbers (``"2023"``), else as text.
    """
    if by == "survey":
        known = np.array([s is not None for s in data.survey])
        key = _survey_key(cutoff)
        before = np.array([s is not None and _survey_key(s) < key for s in data.survey])
    elif by == "captured_at":
        try:
            ts = dt.datetime.fromisoformat(cutoff)
        except ValueError as e:
            raise ReidError(f"--cutoff {cutoff!r}: expected an ISO date/time such as 2023-06-01") from e
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        stamp = np.datetime64(ts.astimezone(dt.timezone.utc).replace(tzinfo=None), "us")
        known = ~np.isnat(data.captured_at)
        before = known & (data.captured_at < stamp)
    else:
        raise ReidError(f"time protocol by {by!r}: choose 'survey' or 'captured_at'")
    g = np.flatnonzero(known & before)
    q = np.flatnonzero(known & ~before)
    return _protocol(
        "time",
        q,
        g,
        f"time-aware: {len(g)} gallery images with {by} before {cutoff}, {len(q)} queries from {cutoff} on",
        {"cutoff": cutoff, "by": by, f"without_{by}": int((~known).sum())},
        empty=f"time protocol: cutoff {cutoff!r} on {by} leaves {len(g)} gallery and {len(q)} query images "
        f"({int((~known).sum())} without {by}); choose a cutoff inside the data",
    )


# ---------------------------------------------------------------------------------------------
# Exclusions


def exclusion_mask(
    data: EvalData,
    protocol: Protocol,
    same_burst: bool = False,
    same_day: bool = False,
    burst_seconds: float = 60.0,
    same_viewpoint: bool = False,
):
    """Query/gallery pairs to drop from the ranking: a sparse [Q, G] mask, a
    :class:`reid.metrics.KeyMismatch`, or None.

    Same burst: same camera (missing ids compare equal) and captured within ``burst_seconds``.
    Same day: same UTC calendar day. Pairs where either capture time is unknown are kept.
    Same viewpoint: only like flanks are compared (pairs of two known, different viewpoints are
    dropped; a photo of unknown viewpoint is compared with every other).
    """
    mask = _time_mask(data, protocol, same_burst, same_day, burst_seconds)
    if not same_viewpoint or data.viewpoint is None:
        return mask
    vp = data.viewpoint
    return metrics.KeyMismatch(vp[protocol.query], vp[protocol.gallery_rows], also=mask)


def n_excluded(exclude) -> int:
    """How many query/gallery pairs an exclusion drops (counted without building a [Q, G] mask;
    a pair dropped for two reasons counts once)."""
    if exclude is None:
        return 0
    if isinstance(exclude, metrics.KeyMismatch):
        cq = Counter(k for k in exclude.query_keys if k is not None)
        cg = Counter(k for k in exclude.gallery_keys if k is not None)
        known_pairs = sum(cq.values()) * sum(cg.values())
        mismatched = known_pairs - sum(n * cg.get(k, 0) for k, n in cq.items())
        also = exclude.also
        if also is None:
            return mismatched
        if hasattr(also, "tocoo"):
            coo = also.tocoo()
            rows, cols = coo.row, coo.col
        else:
            rows, cols = np.nonzero(np.asarray(also, dtype=bool))
        return mismatched + int((~exclude.at(rows, cols)).sum())
    return int(exclude.nnz) if hasattr(exclude, "nnz") else int(np.sum(exclude))


def _time_mask(data: EvalData, protocol: Protocol, same_burst: bool, same_day: bool, burst_seconds: float):
    """The same-burst and same-day pairs of :mod:`reid.sightings` as a sparse [Q, G] mask."""
    if not (same_burst or same_day):
        return None
    from scipy import sparse

    q, g = protocol.query, protocol.gallery_rows
    queries, gallery = sighting_table(data, q), sighting_table(data, g)
    pairs = []
    if same_day:
        pairs.append(sightings.same_day(queries, gallery))
    if same_burst:
        pairs.append(sightings.same_burst(queries, gallery, burst_seconds))
    r = np.concatenate([p[0] for p in pairs])
    c = np.concatenate([p[1] for p in pairs])
    other = data.ids[q][r] != data.ids[g][c]  # an image and itself: never a candidate anyway
    r, c = r[other], c[other]
    mask = sparse.csr_matrix((np.ones(len(r), bool), (r, c)), shape=(len(q), len(g)), dtype=bool)
    mask.sum_duplicates()
    return mask


def sighting_table(data: EvalData, rows: np.ndarray) -> pa.Table:
    """The camera and capture time of some rows, as the :mod:`reid.sightings` rules read them."""
    return pa.table(
        {
            "camera_id": pa.array(data.camera_id[rows], pa.string()),
            "captured_at": pa.array(data.captured_at[rows], pa.timestamp("us", tz="UTC")),
        }
    )


DENSE_EXCLUDE_MAX = 20_000  # validation sets up to this size get a dense [N, N] mask; larger, id pairs


def validation_exclusion(
    meta: pa.Table,
    image_ids: list[str],
    rule: str = "burst",
    burst_seconds: float = 60.0,
    same_viewpoint: bool = False,
    dense_max: int = DENSE_EXCLUDE_MAX,
):
    """Pairs of training-validation images (leave-one-out over ``image_ids``) to ignore: one
    sighting's near-duplicates by ``rule`` ("burst", "day" or "none", see :mod:`reid.sightings`),
    which would make retrieval look easier than it is, and (``same_viewpoint``) opposite flanks.

    ``meta`` holds the images' ``image_id``, ``camera_id``, ``captured_at`` and ``viewpoint`` in
    any order. Returns a boolean [N, N] mask (N <= ``dense_max``), a list of (image_id, image_id)
    pairs for larger sets, a :class:`reid.metrics.KeyMismatch` wrapping either, or None.
    """
    if not image_ids:
        return None
    meta = meta.select(["image_id", "camera_id", "captured_at", "viewpoint"])
    meta = meta.take(pc.index_in(pa.array(image_ids, pa.string()), meta.column("image_id")))
    near = None
    if rule != "none":
        r, c = sightings.same_day(meta) if rule == "day" else sightings.same_burst(meta, None, burst_seconds)
        if len(r) and len(image_ids) > dense_max:
            near = [(image_ids[i], image_ids[j]) for i, j in zip(r.tolist(), c.tolist(), strict=True)]
        elif len(r):
            near = np.zeros((len(image_ids), len(image_ids)), dtype=bool)
            near[r, c] = True
    views = np.array(meta.column("viewpoint").to_pylist(), dtype=object)
    if same_viewpoint and any(v is not None for v in views):
        return metrics.KeyMismatch(views, None, also=near)
    return near


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Evaluation:
    """Everything the metrics file and the report need."""

    metrics: dict  # flat: accuracy@k, map, map@r, open-set keys when computable, counts
    accuracy_at_k: dict[int, float]
    neighbours: metrics.Neighbours  # indices are positions in ``gallery_rows``
    query_rows: np.ndarray
    gallery_rows: np.ndarray
    known: np.ndarray  # [Q] the query's individual has a usable image in the gallery
    top1_correct: np.ndarray  # [Q]
    same_scores: np.ndarray
    different_scores: np.ndarray
    threshold: float | None
    threshold_source: str | None
    exclusions: int = 0


def evaluate(
    data: EvalData,
    protocol: Protocol,
    exclude=None,
    ks: tuple[int, ...] = (1, 5, 10),
    curve_k: int = CURVE_K,
    threshold: float | None = None,
    target_false_new: float = TARGET_FALSE_NEW,
    candidates_k: int = 10,
    seed: int = 0,
) -> Evaluation:
    """Closed-set metrics (via :func:`reid.metrics.retrieval_metrics`), top candidates, open-set metrics.

    The new-individual threshold is ``threshold`` when given, else calibrated as ``reid match``
    calibrates it: the score under which ``target_false_new`` of the known queries fall (no
    knowledge of the newcomers used). Open-set metrics need queries whose individual is absent
    from the gallery; then ``threshold_best`` / ``baks_baus_gmean_best`` also report the best
    threshold in hindsight (an upper bound: tuned on the very queries it scores).
    """
    q_rows, g_rows = protocol.query, protocol.gallery_rows
    loo = protocol.gallery is None
    qe, ql, qi = data.emb[q_rows], data.labels[q_rows], data.ids[q_rows]
    ge, gl, gi = (None, None, None) if loo else (data.emb[g_rows], data.labels[g_rows], data.ids[g_rows])
    all_ks = sorted({*ks, *range(1, curve_k + 1)})
    m = metrics.retrieval_metrics(qe, ql, ge, gl, ks=all_ks, query_ids=qi, gallery_ids=gi, exclude=exclude)
    curve = {k: m[f"accuracy@{k}"] for k in all_ks if k <= curve_k}
    out = {k: v for k, v in m.items() if not k.startswith("accuracy@") or int(k.split("@")[1]) in ks}
    nb = metrics.nearest(
        qe,
        ge,
        k=candidates_k,
        query_ids=qi,
        gallery_ids=gi,
        exclude=exclude,
        query_labels=ql,
        gallery_labels=gl,
    )
    glabels = data.labels[g_rows]
    top1 = nb.indices[:, 0] if nb.indices.shape[1] else np.full(len(q_rows), -1)
    top1_correct = (top1 >= 0) & (glabels[np.maximum(top1, 0)] == ql)
    known = nb.n_positives > 0
    same, diff = pair_scores(qe, ql, ge, gl, qi, gi, exclude, seed=seed)
    source = "given"
    if threshold is None and known.any():
        threshold = match_threshold(data, q_rows[known], g_rows, nb, known, target_false_new)
        source = f"calibrated as `reid match` does: {target_false_new:.0%} of known queries fall below it"
    if threshold is None:
        source = None
    elif known.any() and (~known).any():
        out.update(metrics.open_set_metrics(nb.top1, top1_correct, known, ql, threshold))
        best = metrics.calibrate_threshold(nb.top1, top1_correct, known, ql)
        out["threshold_best"] = best
        out["baks_baus_gmean_best"] = metrics.open_set_metrics(nb.top1, top1_correct, known, ql, best)[
            "baks_baus_gmean"
        ]
    if threshold is not None:
        out["threshold"] = float(threshold)
    n_excl = n_excluded(exclude)
    return Evaluation(
        out,
        curve,
        nb,
        q_rows,
        g_rows,
        known,
        top1_correct,
        same,
        diff,
        None if threshold is None else float(threshold),
        source,
        n_excl,
    )


def match_threshold(
    data: EvalData,
    known_rows: np.ndarray,
    g_rows: np.ndarray,
    nb: metrics.Neighbours,
    known: np.ndarray,
    target_false_new: float,
) -> float | None:
    """The threshold :func:`reid.matching.calibrate` derives from the known queries' candidates."""
    from reid.matching import calibrate

    idx, sc = nb.indices[known], nb.scores[known]
    qpos, rank = np.nonzero(idx >= 0)
    grow = g_rows[idx[qpos, rank]]
    matches = pa.table(
        {
            "query_id": pa.array(data.ids[known_rows][qpos].tolist(), pa.string()),
            "neighbor_id": pa.array(data.ids[grow].tolist(), pa.string()),
            "rank": pa.array(rank + 1, pa.int32()),
            "score": pa.array(sc[qpos, rank], pa.float32()),
            "neighbor_individual_id": pa.array(data.labels[grow].tolist(), pa.string()),
        }
    )
    queries = pa.table(
        {
            "image_id": pa.array(data.ids[known_rows].tolist(), pa.string()),
            "individual_id": pa.array(data.labels[known_rows].tolist(), pa.string()),
        }
    )
    return calibrate(queries, matches, target_false_new)["threshold"]


def pair_scores(
    qe, ql, ge=None, gl=None, qi=None, gi=None, exclude=None, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of usable query/gallery pairs: all same-individual ones, sampled different ones."""
    loo = ge is None
    ge, gl = (qe, ql) if loo else (ge, gl)
    if loo:
        gi = qi
    rng = np.random.default_rng(seed)
    gindex = {g: j for j, g in enumerate(gi)} if gi is not None and qi is not None else None
    same, diff = [], []
    total = len(qe) * len(ge)
    keep = min(1.0, max_pairs / max(1, total))
    block = max(1, min(1024, (1 << 24) // max(1, len(ge))))
    qids = list(qi) if qi is not None and gindex is not None else None
    for q0, q1, sim, ignore in metrics.masked_blocks(qe, ge, "cosine", loo, qids, gindex, exclude, block):
        pos = (ql[q0:q1, None] == gl[None, :]) & ~ignore
        neg = ~pos & ~ignore
        same.append(sim[pos])
        if keep < 1.0:
            neg &= rng.random(sim.shape) < keep
        diff.append(sim[neg])
    cat = np.concatenate
    return (cat(same) if same else np.zeros(0, np.float32)), (cat(diff) if diff else np.zeros(0, np.float32))
