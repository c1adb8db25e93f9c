"""How much an hour of review buys: wrong identities in the capture history before and after a
reviewer works through the first N items of the review queue (N = 0, 10, 25, 50, 100).

    python benchmarks/review_value.py [--work DIR] [--train | --model MODEL] [--figure docs/images/review_value.png]

On a synthetic survey (ground truth known; `reid synth`, most photos unlabelled) the real jobs run
once: embed (an untrained resnet10t by default, as the tests use; ``--train``: the demo's briefly
trained reid_cnn_s, trained here on the survey's labelled photos; ``--model``: any), index,
all-vs-all match. The review queue of that match output
(:mod:`reid.review.queue`, in its order) is then answered by a reviewer simulated from the truth:
``same`` when the query shows the candidate or one of the item's other nearest individuals (the
page offers up to five, keys 1-5; with ``--search`` any known animal, as the page's search box
allows), ``new`` (its true group members only) when it shows an
animal no label names (the id minted the first time when it comes back), ``different``
otherwise. For each N, `reid match --reviews` re-decides over the committed kNN and the capture
history is scored against the truth:

* wrong identities: capture-history rows that mix two animals, or repeat an animal another
  (larger) row already stands for, over all rows;
* wrong photos: photos whose row is not their animal's own, or that have no row (a rejected match
  the model would call new is left unresolved, out of the capture history);
* wrong cells: capture-history cells that differ from the truth (an animal's own row against its
  true surveys, every cell of the other rows, every true cell of an animal without a row), over
  the true cells.

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.runtime import connect, shutdown  # noqa: E402
from jobs import embed, index, match, synth  # noqa: E402
from reid import review, storage  # noqa: E402
from reid.review.queue import PROPOSAL, load_queue  # noqa: E402
from reid.review.resolve import resolve  # noqa: E402
from reid.synthetic.truth import read_truth  # noqa: E402

SURVEY = dict(individuals=40, years=3, images_per_individual=6, image_size=96, seed=7, unlabeled_fraction=0.6)
STEPS = (0, 10, 25, 50, 100)
TRAIN = ["--epochs", "6", "--steps-per-epoch", "20"]  # as scripts/demo.sh
ID_FORMAT = "REV-{year}-{n:04d}"


def build(work: Path, model: str | None, train: bool) -> dict[str, str]:
    """synth -> (untrained or demo-trained model) -> embed -> index -> match, each skipped when committed."""
    p = {k: str(work / k) for k in ("archive", "model", "embeddings", "index", "matches")}
    if not (work / "archive" / "_manifest.json").exists():
        synth.run(synth.SynthJobConfig(out=p["archive"], **SURVEY))
    if model:
        p["model"] = model
    elif train:  # the demo's recipe (scripts/demo.sh): a few minutes of CPU on the labelled photos
        if not (work / "model" / "_manifest.json").exists():
            cmd = [str(REPO / ".venv" / "bin" / "reid"), "train", p["archive"], "--out", p["model"], "--config",
                   str(REPO / "configs" / "synth-cnn.toml"), *TRAIN]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    elif not (work / "model" / "model.json").exists():
        import torch

        from reid.model.network import create_model
        from reid.model.package import save_package
        from reid.model.spec import ModelSpec

        torch.manual_seed(0)
        spec = ModelSpec(backbone="resnet10t", embedding_dim=32, input_size=64)
        save_package(create_model(spec, load_pretrained=False), spec, p["model"])
    embed.run(
        embed.EmbedConfig(archive=p["archive"], model=p["model"], out=p["embeddings"], num_cpus=2, threads=1)
    )
    index.run(index.IndexConfig(embeddings=[p["embeddings"]], out=p["index"], num_cpus=2))
    match.run(match.MatchConfig(index=p["index"], out=p["matches"], k=10, num_cpus=2))
    return p


def score(matches: str, truth: dict[str, str], survey_of: dict[str, str]) -> dict:
    """Wrong identities (mixed or repeated rows), wrong photos and wrong capture-history cells."""
    rows = storage.read_parquet(storage.join(matches, "identities.parquet")).to_pylist()
    members: dict[str, list[str]] = collections.defaultdict(list)
    seen: dict[str, set[str]] = collections.defaultdict(set)  # identity -> surveys
    for r in rows:
        if r["identity"] is not None and r["survey"] is not None:
            members[r["identity"]].append(truth[r["image_id"]])
            seen[r["identity"]].add(r["survey"])
    majority = {ident: collections.Counter(t).most_common(1)[0] for ident, t in members.items()}
    owner: dict[str, str] = {}  # animal -> the row that stands for it (its largest)
    for ident, (animal, _) in sorted(majority.items(), key=lambda kv: (-kv[1][1], kv[0])):
        owner.setdefault(animal, ident)
    wrong_rows = sum(n < len(members[i]) or owner[a] != i for i, (a, n) in majority.items())
    right_photos = sum(majority[i][1] for i in members if owner[majority[i][0]] == i)
    photos = sum(r["survey"] is not None for r in rows)  # unresolved photos (no identity) count as not right
    # capture history: an animal's row against its true sightings; other rows' cells are all spurious
    true_cells: dict[str, set[str]] = collections.defaultdict(set)
    for r in rows:
        true_cells[truth[r["image_id"]]].add(survey_of[r["image_id"]])
    row_of = {i: a for a, i in owner.items()}
    wrong_cells = sum(len(seen[i] ^ true_cells[row_of[i]]) if i in row_of else len(seen[i]) for i in seen)
    wrong_cells += sum(len(c) for a, c in true_cells.items() if a not in owner)
    confirmed = sum(r["basis"] == "confirmed" for r in rows)
    unresolved = sum(r["basis"] == "unresolved" for r in rows)
    return {
        "rows": len(members), "animals": len(true_cells),
        "wrong_identities": round(wrong_rows / max(1, len(members)), 4),
        "wrong_photos": round(1 - right_photos / max(1, photos), 4),
        "wrong_cells": round(wrong_cells / max(1, sum(len(c) for c in true_cells.values())), 4),
        "confirmed_photos": confirmed, "unresolved_photos": unresolved,
    }  # fmt: skip


def simulate(
    queue, n: int, truth: dict[str, str], labelled: set[str], folder: str, search: bool = False
) -> collections.Counter:
    """Answer the queue's first ``n`` items as a reviewer who knows the truth would, each the
    question its kind asks (``new``/``uncertain``: who is this? ``batch``: are these two one
    animal? ``disagreement``: is the label wrong?)."""
    minted: dict[str, str] = {}  # animal -> the id its first "new" decision minted
    answers: collections.Counter[str] = collections.Counter()

    def record(answer: str, decision: str, **fields) -> None:
        rec = review.record(folder, decision, None, reviewer="simulated", name_new=False, **fields)
        answers[answer] += 1
        if decision == "new" and not fields.get("individual_id"):  # the id it got, typed again later
            log = review.read_reviews("", folder=review.reviews_uri(folder))
            minted[truth[fields["query_image_id"]]] = resolve(log, ID_FORMAT).minted[rec["review_id"]]

    for it in queue.items[:n]:
        q, ind, img, kind = it["query"], it["candidate_individual"], it["candidate_image"], it["kind"]
        animal = truth[q]
        base = dict(query_image_id=q, item_id=it["item_id"])
        shown = dict(candidate_image_id=img, score=it["score"])
        known = ind if ind and not ind.startswith(PROPOSAL) else None
        alt = next((x for x in queue.alternatives.get(q, []) if x["individual_id"] == animal), None)
        if kind == "batch":
            if truth.get(img) != animal:
                record("different", "different", individual_id=None, **base, **shown)
            elif known == animal:
                record("same", "same", individual_id=known, **base, **shown)
            elif known is None and animal not in labelled:
                record(
                    "new", "new", individual_id=minted.get(animal), members=[img], year=queue.year(q), **base
                )
            else:
                answers["skip"] += 1  # one animal, but the pair's identity is not the one to confirm
        elif kind == "disagreement":
            record(
                "different", "different", individual_id=known, **base, **shown
            )  # synthetic labels are right
        elif known == animal:
            record("same", "same", individual_id=known, **base, **shown)
        elif alt is not None:  # the right one is another of the item's nearest individuals (keys 1-5)
            record("same (another candidate)", "same", individual_id=animal, candidate_image_id=alt["image_id"],
                   score=alt["score"], **base)  # fmt: skip
        elif search and animal in labelled:  # named through the page's search box (key f)
            record("same (searched)", "same", individual_id=animal, **base)
        elif animal not in labelled:  # an animal no label names: its photos in view, one name
            group = [m for m in it["members"] if m != q and truth[m] == animal]
            record("new", "new", individual_id=minted.get(animal), members=group, year=queue.year(q), **base)
        elif known:
            record("different", "different", individual_id=known, **base, **shown)
        else:
            answers["skip"] += 1  # nothing to compare with
    return answers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/reid-review-value"))
    ap.add_argument("--model", help="a model package (default: an untrained resnet10t)")
    ap.add_argument(
        "--train", action="store_true", help="train the demo's model first (reid_cnn_s, 6 x 20 steps)"
    )
    ap.add_argument(
        "--search", action="store_true", help="the reviewer also names animals the page does not offer"
    )
    ap.add_argument("--figure", type=Path, help="write the figure (PNG) here")
    ap.add_argument(
        "--compare", action="append", help="another run's WORK/result.json, drawn on the same figure"
    )
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    a.work.mkdir(parents=True, exist_ok=True)
    connect(None, num_cpus=2)
    try:
        p = build(a.work, a.model, a.train)
        truth_t = read_truth(p["archive"])
        truth = dict(zip(truth_t["image_id"].to_pylist(), truth_t["individual_id"].to_pylist(), strict=True))
        survey_of = dict(zip(truth_t["image_id"].to_pylist(), truth_t["survey"].to_pylist(), strict=True))
        labelled = {t for t, lab in zip(truth.values(), truth_t["labeled"].to_pylist(), strict=True) if lab}
        queue = load_queue(p["matches"])
        results = []
        for n in STEPS:
            tag = f"{n}-search" if a.search else str(n)
            out, folder = str(a.work / f"matches-{tag}"), str(a.work / f"reviews-{tag}")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(p["matches"], out)
            answers = simulate(queue, n, truth, labelled, folder, a.search)
            if n:
                match.run(match.MatchConfig(index=p["index"], out=out, k=10, num_cpus=2, reviews=folder,
                                            id_format=ID_FORMAT))  # fmt: skip
            results.append({"reviewed": n, **score(out, truth, survey_of), "answers": dict(answers)})
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        shutdown()
    kinds = dict(collections.Counter(it["kind"] for it in queue.items))
    label = "demo-trained model" if a.train else (f"model {a.model}" if a.model else "untrained model")
    out = {"survey": SURVEY, "model": label, "queue_items": len(queue.items), "queue_kinds": kinds,
           "results": results, "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    label += ", reviewer searches" if a.search else ""
    out["model"] = label
    (a.work / ("result-search.json" if a.search else "result.json")).write_text(json.dumps(out))
    if a.figure:
        runs = [out] + [json.loads(Path(c).read_text()) for c in a.compare or []]
        a.figure.parent.mkdir(parents=True, exist_ok=True)
        a.figure.write_bytes(figure(runs))
    print(json.dumps(out))


def figure(runs: list[dict]) -> bytes:
    """Wrong photos, cells and identities against the queue items reviewed, one line per run (PNG)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = [("wrong_photos", "photos in the wrong identity"), ("wrong_cells", "capture-history cells wrong"),
              ("wrong_identities", "identities mixed or repeated")]  # fmt: skip
    for run, colour in zip(runs, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        n = [r["reviewed"] for r in run["results"]]
        label = f"{run['model']} ({run['queue_items']} in queue)"
        for ax, (key, _) in zip(axes, panels, strict=True):
            ax.plot(n, [100 * r[key] for r in run["results"]], "o-", color=colour, label=label)
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_xlabel("queue items reviewed")
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(runs), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.suptitle("How much review buys: capture history of a 3-year synthetic survey", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


if __name__ == "__main__":
    main()
