"""Re-ranking by local features through the jobs: `reid evaluate --keypoints` and `reid match --keypoints`.

A synthetic survey (textured coats), its SIFT features from `reid keypoints`, and a weak global
embedding (the individual's direction buried in noise, so the global ranking is often wrong):
verified matches must lift the fused ranking above it, and every fused score must be a probability.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs.evaluate import EvaluateConfig
from jobs.evaluate import run as evaluate
from jobs.index import IndexConfig
from jobs.index import run as build_index
from jobs.keypoints import KeypointsConfig
from jobs.keypoints import run as keypoints
from jobs.match import MatchConfig, read_matches
from jobs.match import run as match
from jobs.synth import SynthJobConfig
from jobs.synth import run as synth
from reid import archive, manifest, storage
from reid.schema import CARRIED_COLUMNS, OPTIONAL_CARRIED_COLUMNS, conform, embeddings_schema

pytestmark = [pytest.mark.ray, pytest.mark.slow]
DIM = 32


@pytest.fixture(scope="module")
def survey(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("rerank")
    arch = str(root / "arch")
    synth(SynthJobConfig(out=arch, individuals=8, years=1, images_per_individual=7, image_size=160, seed=5,
                         unlabeled_fraction=0.0))  # fmt: skip
    feats = str(root / "feat")
    keypoints(KeypointsConfig(archive=arch, out=feats, long_side=256, max_keypoints=500))
    # a weak global model: each individual's own direction, buried in noise
    table = archive.read_archive(arch, columns=["image_id", *CARRIED_COLUMNS, *OPTIONAL_CARRIED_COLUMNS])
    labels = table.column("individual_id").to_pylist()
    rng = np.random.default_rng(0)
    centres = {lab: rng.normal(size=DIM) for lab in sorted(set(labels))}
    emb = np.stack([centres[lab] * 0.35 + rng.normal(size=DIM) for lab in labels]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cols = {c: table.column(c) for c in table.column_names}
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM)
    cols["model_id"] = pa.array(["noisy-test"] * len(labels))
    out = str(root / "emb")
    storage.write_parquet(
        conform(pa.table(cols), embeddings_schema(DIM)), storage.join(out, "part-0.parquet")
    )
    manifest.write_manifest(out, "embed", {"archive": arch}, [arch], {"embeddings": len(labels)}, manifest.now(),
                            model_id="noisy-test", dim=DIM)  # fmt: skip
    return root, arch, feats, out


def test_evaluate_reports_global_local_fused_and_fused_beats_global(survey):
    root, arch, feats, emb = survey
    out = str(root / "eval")
    summary = evaluate(EvaluateConfig(embeddings=emb, out=out, keypoints=feats, rerank=[10, 20], archive=arch,
                                      exclude_same_burst=True, map_method="pca"))  # fmt: skip
    doc = json.loads(storage.read_text(storage.join(out, "metrics.json")))["local_features"]
    for b in ("10", "20"):
        for ranking in ("global", "local", "fused"):
            row = doc[b][ranking]
            assert set(row) >= {"accuracy@1", "accuracy@5", "map", "auroc_new"}
            assert all(0 <= v <= 1 for v in row.values() if v is not None)
        assert doc[b]["global"]["accuracy@1"] == pytest.approx(summary["accuracy@1"])  # same global ranking
        assert doc[b]["fused"]["accuracy@1"] >= doc[b]["global"]["accuracy@1"] + 0.05, doc[b]
    page = storage.read_text(summary["report"])
    assert "Verified local matches" in page and page.count("verified keypoint matches") >= 1


def test_match_reranks_and_decisions_carry_all_three_scores(survey):
    root, _, feats, emb = survey
    index = str(root / "index")
    build_index(IndexConfig(embeddings=[emb], out=index))
    out = str(root / "match")
    summary = match(MatchConfig(index=index, out=out, k=5, keypoints=[feats], rerank=15, rerank_block=16))
    assert summary["pairs"] > 0 and summary["rerank_tasks"] >= 2  # several Ray tasks
    m = read_matches(out)
    assert set(m.column_names) >= {"global_score", "inliers", "p_global", "p_local", "score", "rank"}
    fused = m.column("score").to_numpy()
    assert ((fused >= 0) & (fused <= 1)).all()
    assert pc.max(m.column("rank")).as_py() == 5  # top k by fused, from a shortlist of 15
    for q in m.column("query_id").unique().to_pylist()[:10]:  # ranked by the fused score
        s = m.filter(pc.equal(m.column("query_id"), q)).sort_by("rank").column("score").to_numpy()
        assert (np.diff(s) <= 1e-7).all()
    dec = storage.read_parquet(storage.join(out, "decisions.parquet"))
    assert {"global_score", "inliers", "score"} <= set(dec.column_names)
    cal = json.loads(storage.read_text(storage.join(out, "calibration.json")))
    assert cal["pairs"] > 0 and 0 < cal["same_pairs"] < cal["pairs"]
    assert summary["threshold"] is not None and 0 < summary["threshold"] < 1  # on the fused score
    again = match(MatchConfig(index=index, out=out, k=5, keypoints=[feats], rerank=15, rerank_block=16))
    assert again.get("up_to_date")
    # a run killed during re-ranking: committed sub-blocks are kept, only the missing one is redone
    before = read_matches(out).sort_by([("query_id", "ascending"), ("rank", "ascending")])
    local_parts = storage.list_files(storage.join(out, "local"), suffix=".parquet")
    storage.delete(local_parts[0])
    storage.delete(storage.join(out, manifest.MANIFEST))
    resumed = match(MatchConfig(index=index, out=out, k=5, keypoints=[feats], rerank=15, rerank_block=16))
    assert resumed["rerank_tasks"] == 1 and resumed["blocks_skipped"] == resumed["blocks"]
    after = read_matches(out).sort_by([("query_id", "ascending"), ("rank", "ascending")])
    assert after.select(["query_id", "neighbor_id", "inliers"]).equals(
        before.select(["query_id", "neighbor_id", "inliers"])
    )
