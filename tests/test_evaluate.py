"""`reid evaluate`: protocols, exclusions, open-set metrics, metrics.json, plots and the HTML report."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.evaluate import EvaluateConfig, run
from reid import manifest
from reid.embeddings import read_embeddings
from reid.errors import ReidError
from reid.evaluation import metrics, plots, report
from reid.evaluation.data import eval_data
from reid.evaluation.exclusions import exclusion_mask
from reid.evaluation.protocols import leave_one_out
from reid.evaluation.scoring import CURVE_K
from tests.support.evalset import MODEL_ID, PLAN, UNLABELLED, make_eval_inputs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_eval_inputs(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(scope="module")
def data(inputs):
    table, _ = read_embeddings(inputs["embeddings"])
    return eval_data(table)


def _run(inputs, out, **kw) -> dict:
    kw.setdefault("map_method", "pca")
    summary = run(EvaluateConfig(embeddings=inputs["embeddings"], out=str(out), **kw))
    summary["doc"] = json.loads((out / "metrics.json").read_text())
    return summary


def test_loo_gives_the_numbers_training_validation_computes(inputs, data, tmp_path):
    out = tmp_path / "loo"
    s = _run(inputs, out)
    doc = s["doc"]
    for key in ("accuracy@1", "accuracy@5", "accuracy@10", "map", "map@r"):
        assert 0.0 <= doc[key] <= 1.0, key
    # the same call training validation makes on its labelled validation embeddings
    direct = metrics.retrieval_metrics(data.emb, data.labels)
    for key in ("accuracy@1", "accuracy@5", "accuracy@10", "map", "map@r"):
        assert doc[key] == pytest.approx(direct[key], abs=1e-12), key
    n_labelled = sum(sum(v.values()) for v in PLAN.values())
    assert len(data) == n_labelled and data.n_unlabelled == UNLABELLED
    singles = [k for k, v in PLAN.items() if sum(v.values()) == 1]
    # single-image individuals are gallery only for the closed-set numbers, "new" for the open-set ones
    assert doc["n_queries"] == n_labelled - len(singles) and doc["n_gallery"] == n_labelled
    assert doc["n_unknown_queries"] == len(singles) and doc["model_id"] == MODEL_ID
    assert doc["accuracy_at_k"]["1"] == doc["accuracy@1"] and len(doc["accuracy_at_k"]) == CURVE_K
    assert list(doc)[:4] == ["accuracy@1", "accuracy@5", "accuracy@10", "map"]

    for name in report.PLOT_FILES.values():
        assert (out / name).read_bytes().startswith(PNG), name
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page), "report must be self-contained"
    assert page.count("data:image/png;base64,") == 3
    assert page.count("data:image/jpeg;base64,") >= 8  # thumbnails, found through the manifest lineage
    queries = pq.read_table(out / "queries.parquet")
    assert queries.num_rows == n_labelled
    m = manifest.require_manifest(str(out), job="evaluate")
    assert m["metrics"]["accuracy@1"] == doc["accuracy@1"]
    assert m["inputs"][0]["uri"] == inputs["embeddings"] and m["inputs"][0]["job"] == "embed"


def test_time_protocol_scores_new_individuals(inputs, tmp_path):
    doc = _run(inputs, tmp_path / "t", protocol="time", cutoff="2023")["doc"]
    new = [k for k, v in PLAN.items() if "2022" not in v and "2023" in v]
    assert doc["n_unknown_queries"] == 3 * len(new)
    assert (
        doc["n_known_queries"]
        == doc["n_queries"]
        == sum(v.get("2023", 0) for k, v in PLAN.items() if k not in new)
    )
    for key in ("auroc_new", "baks", "baus", "baks_baus_gmean", "baks_baus_gmean_best"):
        assert 0.0 <= doc[key] <= 1.0, key
    assert doc["baks_baus_gmean"] == pytest.approx(np.sqrt(doc["baks"] * doc["baus"]))
    assert doc["baks_baus_gmean_best"] >= doc["baks_baus_gmean"] - 1e-12
    assert doc["auroc_new"] > 0.7  # newcomers score lower than known individuals
    assert "reid match" in doc["threshold_source"]
    # the same cut by capture time gives the same partition
    by_time = _run(inputs, tmp_path / "t2", protocol="time", cutoff="2023-01-01", cutoff_by="captured_at")[
        "doc"
    ]
    assert by_time["accuracy@1"] == doc["accuracy@1"] and by_time["baks"] == doc["baks"]
    # a given threshold is used as is
    fixed = _run(inputs, tmp_path / "t3", protocol="time", cutoff="2023", threshold=2.0, report=False)["doc"]
    assert fixed["threshold"] == 2.0 and fixed["baks"] == 0.0 and fixed["baus"] == 1.0
    assert fixed["threshold_source"] == "given"


def test_split_table_protocol_equals_the_time_cut(inputs, data, tmp_path):
    split = tmp_path / "split.csv"
    with split.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "split"])
        for i, survey in zip(data.ids, data.survey, strict=True):
            w.writerow([i, "test" if survey == "2023" else "train"])
    by_split = _run(inputs, tmp_path / "s", protocol="split", split=str(split), report=False)["doc"]
    by_time = _run(inputs, tmp_path / "t", protocol="time", cutoff="2023", report=False)["doc"]
    for key in ("accuracy@1", "accuracy@5", "map", "map@r", "auroc_new", "baks", "baus"):
        assert by_split[key] == by_time[key], key


def test_same_burst_and_same_day_exclusions(inputs, data, tmp_path):
    loo = leave_one_out(data)
    burst = exclusion_mask(data, loo, same_burst=True, burst_seconds=60).toarray()
    day = exclusion_mask(data, loo, same_day=True).toarray()
    t = data.captured_at
    ok = ~np.isnat(t)
    dt_s = np.abs((t[:, None] - t[None, :]).astype("timedelta64[s]").astype(np.int64))
    same_cam = data.camera_id[:, None] == data.camera_id[None, :]
    both = ok[:, None] & ok[None, :] & ~np.eye(len(t), dtype=bool)  # an image is not its own near-duplicate
    assert np.array_equal(burst, both & same_cam & (dt_s <= 60))
    days = t.astype("datetime64[D]")
    assert np.array_equal(day, both & (days[:, None] == days[None, :]))

    plain = _run(inputs, tmp_path / "p", report=False)
    excl = _run(inputs, tmp_path / "e", exclude_same_burst=True, report=False)
    assert excl["excluded_pairs"] == int(burst.sum()) > 0
    # bursts are near-duplicates here: excluding them makes the task harder, never easier
    assert excl["doc"]["accuracy@1"] < plain["doc"]["accuracy@1"]
    q = pq.read_table(tmp_path / "e" / "queries.parquet").to_pylist()
    index = {i: n for n, i in enumerate(data.ids)}
    for row in q:
        for cand in row["candidate_ids"]:
            assert not burst[index[row["query_id"]], index[cand]]


def test_nearest_ranks_like_retrieval_metrics(data):
    loo = leave_one_out(data)
    mask = exclusion_mask(data, loo, same_day=True)
    m = metrics.retrieval_metrics(data.emb, data.labels, query_ids=data.ids, exclude=mask)
    nb = metrics.nearest(data.emb, k=10, query_ids=data.ids, exclude=mask, query_labels=data.labels)
    has_pos = nb.n_positives > 0
    assert has_pos.sum() == m["n_queries"]
    hit1 = data.labels[nb.indices[:, 0]] == data.labels
    assert hit1[has_pos].mean() == pytest.approx(m["accuracy@1"])
    lab = np.where(nb.indices >= 0, data.labels[np.maximum(nb.indices, 0)], None)
    hit5 = (lab[:, :5] == data.labels[:, None]).any(1)
    assert hit5[has_pos].mean() == pytest.approx(m["accuracy@5"])
    assert np.all(np.diff(nb.scores, axis=1)[np.isfinite(nb.scores[:, 1:])] <= 0)


def test_open_set_metrics_by_hand():
    # known queries: a (right, 0.9), a (right, 0.4), b (wrong, 0.8); unknown: x (0.3), y (0.7), y (0.2)
    scores = [0.9, 0.4, 0.8, 0.3, 0.7, 0.2]
    correct = [True, True, False, False, False, False]
    known = [True, True, True, False, False, False]
    labels = ["a", "a", "b", "x", "y", "y"]
    m = metrics.open_set_metrics(scores, correct, known, labels, threshold=0.5)
    assert m["baks"] == pytest.approx((0.5 + 0.0) / 2)  # a: 1 of 2 accepted and right; b: wrong
    assert m["baus"] == pytest.approx((1.0 + 0.5) / 2)  # x: new; y: one of two new
    assert m["baks_baus_gmean"] == pytest.approx(np.sqrt(0.25 * 0.75))
    # AUROC of "new" by low score: pairs (unknown, known) ranked right: 0.3<0.9,0.4,0.8; 0.7<0.9,0.8; 0.2<all
    assert m["auroc_new"] == pytest.approx(8 / 9)
    best = metrics.calibrate_threshold(scores, correct, known, labels)
    assert (
        metrics.open_set_metrics(scores, correct, known, labels, best)["baks_baus_gmean"]
        >= m["baks_baus_gmean"]
    )


def test_user_errors_are_one_line_and_actionable(inputs, tmp_path):
    uncommitted = tmp_path / "emb"
    uncommitted.mkdir()
    (uncommitted / "part-0.parquet").write_bytes(b"")
    with pytest.raises(ReidError, match="_manifest.json"):
        run(EvaluateConfig(embeddings=str(uncommitted), out=str(tmp_path / "o")))
    with pytest.raises(ReidError, match="choose a cutoff inside the data"):
        run(
            EvaluateConfig(
                embeddings=inputs["embeddings"], out=str(tmp_path / "o"), protocol="time", cutoff="1990"
            )
        )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "evaluate",
            inputs["embeddings"],
            "--out",
            str(tmp_path / "o"),
            "--protocol",
            "split",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "needs --split" in r.stderr and "Traceback" not in r.stderr


def test_plots_take_tensors_and_fall_back(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    emb = torch.tensor(rng.normal(size=(40, 8)), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(rng.integers(0, 25, 40))
    png = plots.embedding_map_png(emb, labels, str(tmp_path / "map.png"), top=20, method="pca")
    assert png.startswith(PNG) and (tmp_path / "map.png").read_bytes() == png
    assert plots.project_2d(np.zeros((3, 8)), method="umap")[1] == "pca"  # too few points for UMAP
    xy, used = plots.project_2d(rng.normal(size=(30, 8)), method="tsne")
    assert used == "tsne" and xy.shape == (30, 2)
    assert plots.top_labels(["b", "a", "b", None, "a", "c"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="choose one of"):
        plots.project_2d(np.zeros((10, 2)), method="mds")


@pytest.mark.slow
def test_umap_map(tmp_path):
    rng = np.random.default_rng(0)
    xy, used = plots.project_2d(rng.normal(size=(60, 8)), method="umap")
    assert used == "umap" and xy.shape == (60, 2) and np.isfinite(xy).all()


def test_report_without_archive_still_renders(inputs, tmp_path):
    out = tmp_path / "r"
    run(
        EvaluateConfig(
            embeddings=inputs["embeddings"],
            out=str(out),
            map_method="pca",
            archive=str(tmp_path / "no-such-archive"),
        )
    )
    page = (out / "report.html").read_text()
    assert "thumbnails unavailable" in page and page.count("data:image/png;base64,") == 3
    ids = [inputs["archive"]]
    thumbs, note = report.thumbnails(ids[0], ["ind00-2022-0", "nope"])
    assert list(thumbs) == ["ind00-2022-0"] and thumbs["ind00-2022-0"].startswith("data:image/jpeg;base64,")
    assert note and "1 thumbnail(s) missing" in note
