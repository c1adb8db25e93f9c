"""A self-contained HTML evaluation report: one file, every plot and thumbnail inlined as a data URI.

Sections: metrics table, accuracy@k curve, 2-D map of the embedding space coloured by individual,
example queries with their top candidates (thumbnails, scores, right/wrong marked), and the
similarity distributions of same vs different individuals with the decision threshold. The PNG
plots are also written beside the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from dataclasses import dataclass
from functools import cache

import jinja2
import numpy as np
import pyarrow.compute as pc

from reid import storage
from reid.errors import ReidError
from reid.evaluation import plots
from reid.evaluation.data import EvalData
from reid.evaluation.protocols import Protocol
from reid.evaluation.scoring import Evaluation
from reid.serving.lookup import thumbnail_jpeg

__all__ = [
    "PLOT_FILES",
    "REPORT",
    "TEMPLATE",
    "THUMB",
    "ReportInputs",
    "pick_examples",
    "render_html",
    "thumbnails",
    "write_report",
]

REPORT = "report.html"
TEMPLATE = "report.html.j2"
PLOT_FILES = {
    "accuracy": "accuracy_at_k.png",
    "map": "embedding_map.png",
    "scores": "score_distributions.png",
}
THUMB = 112  # thumbnail side in pixels


@dataclass
class ReportInputs:
    """Where the evaluated embeddings came from (shown in the page header)."""

    embeddings: str
    model_id: str | None = None
    archive: str | None = None
    title: str = "Re-identification evaluation"


# ---------------------------------------------------------------------------------------------
# Thumbnails


def thumbnails(
    archive_uri: str, image_ids: list[str], size: int = THUMB
) -> tuple[dict[str, str], str | None]:
    """JPEG data URIs of the named archive images (cropped to their bbox), and a note on failure.

    Reads only the rows asked for (a filtered scan of the archive's ``image_id`` column).
    """
    if not image_ids:
        return {}, None
    from reid import archive

    try:
        d = archive.dataset(archive_uri)
        table = d.to_table(columns=["image_id", "image", "bbox"], filter=pc.field("image_id").isin(image_ids))
    except Exception as e:  # noqa: BLE001 - a report without thumbnails is still a report
        return {}, f"thumbnails unavailable: archive {archive_uri}: {e} (pass --archive)"
    out: dict[str, str] = {}
    for image_id, data, bbox in zip(
        table.column("image_id").to_pylist(),
        table.column("image").to_pylist(),
        table.column("bbox").to_pylist(),
        strict=True,
    ):
        try:
            jpeg = thumbnail_jpeg(data, bbox, size, quality=82)
        except ReidError:
            continue  # counted as missing below
        out[image_id] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    missing = len(set(image_ids) - set(out))
    note = f"{missing} thumbnail(s) missing from archive {archive_uri}" if missing else None
    return out, note


def _data_uri_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Example queries


def pick_examples(ev: Evaluation, n: int = 8, seed: int = 0) -> list[int]:
    """Query positions to show: half with a wrong top-1, half right (known queries), then new ones."""
    rng = np.random.default_rng(seed)
    known = np.flatnonzero(ev.known)
    wrong = known[~ev.top1_correct[known]]
    right = known[ev.top1_correct[known]]
    unknown = np.flatnonzero(~ev.known)
    n_new = min(len(unknown), max(0, n // 4))
    n_wrong = min(len(wrong), (n - n_new) // 2)
    n_right = min(len(right), n - n_new - n_wrong)
    n_wrong = min(len(wrong), n - n_new - n_right)
    pick = [
        *rng.permutation(wrong)[:n_wrong].tolist(),
        *rng.permutation(right)[:n_right].tolist(),
        *rng.permutation(unknown)[:n_new].tolist(),
    ]
    return [int(i) for i in pick]


# ---------------------------------------------------------------------------------------------
# The page


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


_METRIC_ROWS = [
    ("accuracy@1", "share of queries whose top candidate is the right individual"),
    ("accuracy@5", "right individual among the top 5"),
    ("accuracy@10", "right individual among the top 10"),
    ("map", "mean average precision over the whole ranking"),
    ("map@r", "MAP@R: precision over the first R ranks, R = images of the individual"),
    ("auroc_new", "AUROC of new-individual detection by low top-1 similarity"),
    ("baks", "balanced accuracy on known individuals (right and above the threshold)"),
    ("baus", "balanced accuracy on unknown individuals (answered 'new')"),
    ("baks_baus_gmean", "geometric mean of BAKS and BAUS"),
    ("threshold", "similarity threshold: below it a query is a new individual"),
]


@cache
def _templates() -> jinja2.Environment:
    """The package's templates, autoescaped: a value reaches the page as markup only if marked safe."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("reid", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _example_rows(data: EvalData, ev: Evaluation, examples: list[int], thumbs: dict[str, str]) -> list[dict]:
    """Each example query with its top-5 candidates (None where the ranking ran out), as plain values."""
    rows = []
    for qpos in examples:
        qrow = ev.query_rows[qpos]
        qid, qlab = str(data.ids[qrow]), str(data.labels[qrow])
        status = (
            "new individual (not in gallery)"
            if not ev.known[qpos]
            else ("top-1 right" if ev.top1_correct[qpos] else "top-1 wrong")
        )
        cands: list[dict | None] = []
        for rank in range(min(5, ev.neighbours.indices.shape[1])):
            j = int(ev.neighbours.indices[qpos, rank])
            if j < 0:
                cands.append(None)
                continue
            grow = ev.gallery_rows[j]
            gid, glab = str(data.ids[grow]), str(data.labels[grow])
            score = float(ev.neighbours.scores[qpos, rank])
            cands.append(
                {
                    "image_id": gid,
                    "thumb": thumbs.get(gid),
                    "label": glab,
                    "ok": glab == qlab,
                    "rank": rank + 1,
                    "score": score,
                    "below": ev.threshold is not None and score < ev.threshold,
                }
            )
        rows.append(
            {"image_id": qid, "thumb": thumbs.get(qid), "label": qlab, "status": status, "candidates": cands}
        )
    return rows


def render_html(
    inputs: ReportInputs,
    data: EvalData,
    protocol: Protocol,
    ev: Evaluation,
    plot_pngs: dict[str, bytes],
    examples: list[int],
    thumbs: dict[str, str],
    notes: list[str],
    map_method: str,
    local_matches: list[dict] | None = None,
) -> str:
    """The report page as one HTML string (no external resources), from ``templates/report.html.j2``."""
    m = ev.metrics
    counts = {
        "queries scored": m.get("n_queries"),
        "queries with no match in the gallery": m.get("n_queries_without_positive"),
        "gallery images": m.get("n_gallery"),
        "unlabelled images left out": data.n_unlabelled,
        "excluded query/gallery pairs": ev.exclusions,
    }
    rows = np.concatenate([ev.query_rows, ev.gallery_rows])
    return (
        _templates()
        .get_template(TEMPLATE)
        .render(
            title=inputs.title,
            embeddings=inputs.embeddings,
            model_id=inputs.model_id or "unknown",
            n_individuals=len(set(data.labels[rows])),
            made=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            protocol=protocol.description,
            notes=notes,
            metric_rows=[(k, _fmt(m[k]), d) for k, d in _METRIC_ROWS if k in m],
            count_rows=[(k, _fmt(v)) for k, v in counts.items() if v is not None],
            plots={name: _data_uri_png(png) for name, png in plot_pngs.items()},
            threshold=ev.threshold,
            threshold_source=ev.threshold_source or "",
            map_method=map_method,
            examples=_example_rows(data, ev, examples, thumbs),
            local_matches=[
                {"caption": f["caption"], "src": _data_uri_png(f["png"])} for f in local_matches or []
            ],
        )
    )


def write_report(
    out_dir: str,
    inputs: ReportInputs,
    data: EvalData,
    protocol: Protocol,
    ev: Evaluation,
    n_examples: int = 8,
    top: int = 20,
    map_method: str = "auto",
    max_map_points: int = 5000,
    seed: int = 0,
    local_matches: list[dict] | None = None,
) -> dict[str, str]:
    """Write the PNG plots and ``report.html`` into ``out_dir``; returns their URIs by name.
    ``local_matches``: figures of verified keypoint matches (:func:`reid.local.pairs.report_figures`)."""
    rows = np.unique(np.concatenate([ev.query_rows, ev.gallery_rows]))
    notes: list[str] = []
    if len(rows) > max_map_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_map_points, replace=False))
        notes.append(f"The 2-D map shows a random sample of {max_map_points} embeddings.")
    xy, used = plots.project_2d(data.emb[rows], method=map_method, seed=seed)
    pngs = {
        "accuracy": plots.accuracy_curve_png(ev.accuracy_at_k),
        "scores": plots.score_histogram_png(ev.same_scores, ev.different_scores, ev.threshold),
        "map": plots.embedding_map_png(data.emb[rows], data.labels[rows], top=top, xy=xy, method=used),
    }
    paths = {}
    for name, png in pngs.items():
        paths[name] = storage.join(out_dir, PLOT_FILES[name])
        storage.write_bytes(paths[name], png)
    examples = pick_examples(ev, n_examples, seed)
    want: list[str] = []
    for qpos in examples:
        want.append(str(data.ids[ev.query_rows[qpos]]))
        for j in ev.neighbours.indices[qpos, :5]:
            if j >= 0:
                want.append(str(data.ids[ev.gallery_rows[j]]))
    thumbs: dict[str, str] = {}
    if inputs.archive:
        thumbs, note = thumbnails(inputs.archive, sorted(set(want)))
        if note:
            notes.append(note)
    else:
        notes.append("No archive known for these embeddings (pass --archive): examples shown without images.")
    page = render_html(inputs, data, protocol, ev, pngs, examples, thumbs, notes, used, local_matches)
    paths["report"] = storage.join(out_dir, REPORT)
    storage.write_text(paths["report"], page)
    return paths
