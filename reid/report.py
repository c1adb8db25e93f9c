"""A self-contained HTML evaluation report: one file, every plot and thumbnail inlined as a data URI.

Sections: metrics table, accuracy@k curve, 2-D map of the embedding space coloured by individual,
example queries with their top candidates (thumbnails, scores, right/wrong marked), and the
similarity distributions of same vs different individuals with the decision threshold. The PNG
plots are also written beside the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from reid import plots, storage
from reid.evaluation import EvalData, Evaluation, Protocol
from reid.imageio import decode

REPORT = "report.html"
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


def archive_from_lineage(embeddings_manifest: dict | None) -> str | None:
    """The archive an embeddings output was computed from, as its manifest's lineage records it."""
    if not embeddings_manifest:
        return None
    inputs = embeddings_manifest.get("inputs") or []
    for entry in inputs:
        if entry.get("job") == "ingest" or entry.get("job") == "synth":
            return entry.get("uri")
    cfg = embeddings_manifest.get("config") or {}
    if cfg.get("archive"):
        return cfg["archive"]
    return inputs[0].get("uri") if inputs else None


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
        dec = decode(data, bbox, target_size=size)
        if dec.image is None:
            continue
        img = dec.image
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=82)
        out[image_id] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
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


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


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

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
 color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em} .meta code{font-size:.95em}
table{border-collapse:collapse} td,th{padding:4px 10px;text-align:left;vertical-align:top}
table.metrics td.v{font-variant-numeric:tabular-nums;font-weight:600;text-align:right}
table.metrics tr:nth-child(even){background:#f6f6f6} td.d{color:#666;font-size:.88em}
.plots{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start} .plots figure{margin:0}
figcaption{font-size:.85em;color:#555;max-width:560px}
table.examples td{padding:4px;text-align:center;font-size:.78em}
.cand{border:3px solid #bbb;border-radius:4px;padding:2px;width:118px}
.ok{border-color:#2ca02c} .bad{border-color:#d62728} .query{border-color:#1f77b4}
.mark{font-weight:700} .ok .mark{color:#2ca02c} .bad .mark{color:#d62728}
.ph{width:112px;height:84px;background:#eee;color:#999;display:flex;align-items:center;
 justify-content:center;margin:auto}
img.thumb{max-width:112px;max-height:112px;display:block;margin:auto}
.note{color:#a15c00;font-size:.88em}
"""


def _img(uri: str | None, alt: str) -> str:
    if not uri:
        return '<div class="ph">no image</div>'
    return f'<img class="thumb" src="{uri}" alt="{html.escape(alt)}">'


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
) -> str:
    """The report page as one HTML string (no external resources)."""
    m = ev.metrics
    rows = "".join(
        f'<tr><th>{html.escape(k)}</th><td class="v">{_fmt(m[k])}</td><td class="d">{html.escape(d)}</td></tr>'
        for k, d in _METRIC_ROWS
        if k in m
    )
    counts = {
        "queries scored": m.get("n_queries"),
        "queries with no match in the gallery": m.get("n_queries_without_positive"),
        "gallery images": m.get("n_gallery"),
        "unlabelled images left out": data.n_unlabelled,
        "excluded query/gallery pairs": ev.exclusions,
    }
    count_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td class='v'>{_fmt(v)}</td></tr>"
        for k, v in counts.items()
        if v is not None
    )
    g = ev.gallery_rows
    ex_rows = []
    for qpos in examples:
        qrow = ev.query_rows[qpos]
        qid, qlab = str(data.ids[qrow]), str(data.labels[qrow])
        status = (
            "new individual (not in gallery)"
            if not ev.known[qpos]
            else ("top-1 right" if ev.top1_correct[qpos] else "top-1 wrong")
        )
        cells = [
            f'<td><div class="cand query">{_img(thumbs.get(qid), qid)}<div><b>{html.escape(qlab)}</b></div>'
            f'<div class="d">query &middot; {html.escape(status)}</div></div></td>'
        ]
        for rank in range(min(5, ev.neighbours.indices.shape[1])):
            j = int(ev.neighbours.indices[qpos, rank])
            if j < 0:
                cells.append("<td></td>")
                continue
            grow = g[j]
            gid, glab = str(data.ids[grow]), str(data.labels[grow])
            score = float(ev.neighbours.scores[qpos, rank])
            ok = glab == qlab
            below = ev.threshold is not None and score < ev.threshold
            cells.append(
                f'<td><div class="cand {"ok" if ok else "bad"}">{_img(thumbs.get(gid), gid)}'
                f'<div><span class="mark">{"&#10003;" if ok else "&#10007;"}</span> {html.escape(glab)}</div>'
                f"<div>#{rank + 1} &middot; {score:.3f}{' &lt; thr' if below else ''}</div></div></td>"
            )
        ex_rows.append(f"<tr>{''.join(cells)}</tr>")
    header = "<tr><th>query</th>" + "".join(f"<th>#{r}</th>" for r in range(1, 6)) + "</tr>"
    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    thr = (
        f"threshold {ev.threshold:.4f}: {html.escape(ev.threshold_source or '')}"
        if ev.threshold is not None
        else "no threshold"
    )
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_ind = len(set(data.labels[np.concatenate([ev.query_rows, g])]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(inputs.title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(inputs.title)}</h1>
<p class="meta">embeddings <code>{html.escape(inputs.embeddings)}</code> &middot; model
<code>{html.escape(inputs.model_id or "unknown")}</code> &middot; {n_ind} individuals &middot; {made}<br>
protocol: {html.escape(protocol.description)}</p>
{note_html}
<h2>Metrics</h2>
<table class="metrics" id="metrics">{rows}</table>
<table class="metrics" id="counts" style="margin-top:10px">{count_rows}</table>
<h2>Plots</h2>
<div class="plots">
<figure><img id="plot-accuracy" src="{_data_uri_png(plot_pngs["accuracy"])}" alt="accuracy@k curve" width="560">
<figcaption>accuracy@k: share of queries whose individual is among their k best candidates.</figcaption></figure>
<figure><img id="plot-scores" src="{_data_uri_png(plot_pngs["scores"])}" alt="score distributions" width="560">
<figcaption>Similarity of query/gallery pairs of the same vs different individuals; {thr}.</figcaption></figure>
<figure><img id="plot-map" src="{_data_uri_png(plot_pngs["map"])}" alt="2-D map of the embeddings" width="840">
<figcaption>2-D map ({html.escape(map_method.upper())}) of the evaluated embeddings, the largest individuals
in colour; tight, separate clusters mean the model tells individuals apart.</figcaption></figure>
</div>
<h2>Example queries</h2>
<p class="meta">Top-5 candidates per query with cosine similarity; green &#10003; = same individual,
red &#10007; = another individual.</p>
<table class="examples" id="examples">{header}{"".join(ex_rows)}</table>
</body></html>
"""


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
) -> dict[str, str]:
    """Write the PNG plots and ``report.html`` into ``out_dir``; returns their URIs by name."""
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
    page = render_html(inputs, data, protocol, ev, pngs, examples, thumbs, notes, used)
    paths["report"] = storage.join(out_dir, REPORT)
    storage.write_text(paths["report"], page)
    return paths
