"""Local features (reid.local): extraction, matching, calibration and fusion, on real images."""

from __future__ import annotations

import io

import numpy as np
import pytest

from reid.errors import ConfigError
from reid.local import ExtractorSettings, Matcher, MatcherSettings, create_extractor
from reid.local.calibration import Calibration, fit
from reid.local.store import decode_row, features_rows
from reid.synthetic.scenes import render
from reid.synthetic.survey import SynthConfig, plan
from tests.support.images import jpeg_bytes, photo


@pytest.fixture(scope="module")
def survey():
    """Sightings of a small synthetic survey (textured coats, pose/light/blur per sighting)."""
    cfg = SynthConfig(individuals=6, years=1, images_per_individual=8, image_size=192, seed=3)
    return cfg, plan(cfg).sightings


def _features(cfg, sightings, extractor):
    out = {}
    for s in sightings:
        data, bbox, _, _ = render(cfg, s)
        f, reason = extractor.extract(data, bbox)
        assert reason is None
        out[s.image_id] = f
    return out


def test_same_individual_gets_more_inliers_than_two_individuals(survey):
    cfg, sightings = survey
    # pairs across bursts only (frames of one burst are near-duplicates), like flanks
    by_ind: dict[tuple[int, str], list] = {}
    for s in sightings:
        by_ind.setdefault((s.individual, s.viewpoint), []).append(s)
    same_pairs, diff_pairs = [], []
    keys = sorted(by_ind)
    for key in keys:
        group = by_ind[key]
        other = [s for s in group if s.burst != group[0].burst]
        if other:
            same_pairs.append((group[0], other[0]))
    for view in ("left", "right"):
        same_view = [k for k in keys if k[1] == view]
        for a, b in zip(same_view, same_view[1:]):
            diff_pairs.append((by_ind[a][0], by_ind[b][-1]))
    assert len(same_pairs) >= 3 and len(diff_pairs) >= 3
    extractor = create_extractor(ExtractorSettings(long_side=256, max_keypoints=600))
    used = {s.image_id: s for p in same_pairs + diff_pairs for s in p}
    feats = _features(cfg, used.values(), extractor)
    matcher = Matcher(MatcherSettings(geometry="affine"))
    same = [matcher.match(feats[a.image_id], feats[b.image_id]).inliers for a, b in same_pairs]
    diff = [matcher.match(feats[a.image_id], feats[b.image_id]).inliers for a, b in diff_pairs]
    assert np.mean(same) > np.mean(diff) + 3, (same, diff)
    assert np.median(same) > np.median(diff)


def test_an_image_matches_itself_with_many_inliers_and_pairs_point_at_keypoints():
    extractor = create_extractor()
    f, _ = extractor.extract(jpeg_bytes(photo(320, 240, seed=4)))
    g, _ = extractor.extract(jpeg_bytes(photo(320, 240, seed=5)))
    m = Matcher(MatcherSettings(geometry="homography"))
    self_match = m.match(f, f, pairs=True)
    assert self_match.inliers > 50 and len(self_match.pairs) == self_match.inliers
    assert (self_match.pairs[:, 0] == self_match.pairs[:, 1]).all()  # each keypoint with itself
    assert m.match(f, g).inliers < self_match.inliers / 4
    # the same pair gives the same inliers, whatever was matched before (OpenCV's RNG is global)
    assert m.match(f, g).inliers == m.match(f, g).inliers


def test_features_are_compact_and_round_trip():
    extractor = create_extractor(ExtractorSettings(long_side=256, max_keypoints=300))
    f, _ = extractor.extract(jpeg_bytes(photo(400, 300, seed=1)), {"x": 50, "y": 40, "w": 200, "h": 150})
    assert 0 < len(f) <= 300 and f.xy.dtype == np.float16 and f.desc.dtype == np.uint8
    assert max(f.size) == 256 and f.scale == pytest.approx(256 / 200)
    assert (f.xy[:, 0] <= f.size[0]).all() and (f.xy[:, 1] <= f.size[1]).all()
    row = features_rows(["a"], [f], extractor.settings.features_id()).to_pylist()[0]
    assert len(row["desc"]) == len(f) * 128  # one byte per descriptor value
    back = decode_row(row)
    assert np.array_equal(back.desc, f.desc) and np.array_equal(back.xy, f.xy)


def test_bad_images_and_settings_are_refused_with_reasons():
    extractor = create_extractor()
    f, reason = extractor.extract(b"not an image")
    assert f is None and reason.startswith("corrupt")
    f, reason = extractor.extract(jpeg_bytes(photo(100, 80)), {"x": 500, "y": 500, "w": 10, "h": 10})
    assert f is None and "bbox" in reason
    with pytest.raises(ConfigError, match="registered: sift"):
        create_extractor(ExtractorSettings(name="aliked"))
    with pytest.raises(ConfigError, match="geometry"):
        MatcherSettings(geometry="projective")
    assert ExtractorSettings().features_id() != ExtractorSettings(max_keypoints=500).features_id()


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_fused_scores_are_probabilities_increasing_in_each_score(method):
    rng = np.random.default_rng(0)
    n = 4000
    same = rng.random(n) < 0.2
    cosine = np.where(same, rng.normal(0.6, 0.12, n), rng.normal(0.35, 0.12, n))
    inliers = np.where(same, rng.poisson(25, n), rng.poisson(6, n)).astype(float)
    cal = fit(cosine, inliers, same, method)
    # never decreasing anywhere (far out, float64 saturates: equal, not lower) ...
    for c0 in (-1.0, 0.3, 1.0):
        f = cal.fuse(np.full(401, c0), np.linspace(0, 400, 401))
        assert ((0 <= f) & (f <= 1)).all() and (np.diff(f) >= 0).all() and f[-1] > f[0]
    for i0 in (0.0, 10.0, 400.0):
        f = cal.fuse(np.linspace(-1, 1, 401), np.full(401, i0))
        assert ((0 <= f) & (f <= 1)).all() and (np.diff(f) >= 0).all() and f[-1] > f[0]
    # ... and strictly increasing over the scores the pairs have (isotonic steps included)
    c_lo, c_hi = np.quantile(cosine, [0.05, 0.95])
    i_lo, i_hi = np.quantile(inliers, [0.05, 0.95])
    for c0, i0 in ((c_lo, i_lo), (np.median(cosine), np.median(inliers)), (c_hi, i_hi)):
        assert (np.diff(cal.fuse(np.full(50, c0), np.linspace(i_lo, i_hi, 50))) > 0).all()
        assert (np.diff(cal.fuse(np.linspace(c_lo, c_hi, 50), np.full(50, i0))) > 0).all()
    # calibrated: among pairs called ~0.9 likely, most are the same individual
    fused = cal.fuse(cosine, inliers)
    assert same[fused > 0.8].mean() > 0.7 and same[fused < 0.2].mean() < 0.1
    again = Calibration.from_dict(cal.to_dict())  # stored as JSON with the match output
    assert np.allclose(again.fuse(cosine, inliers), fused)
    # a pair without features keeps its global probability
    assert cal.fuse(np.array([0.5]), np.array([-1]))[0] == pytest.approx(cal.p_global(np.array([0.5]))[0])


def test_calibration_needs_both_kinds_of_pair():
    with pytest.raises(Exception, match="same"):
        fit(np.array([0.1, 0.2]), np.array([1.0, 2.0]), np.array([False, False]))


def test_matched_keypoints_json_for_the_review_page_points_into_each_photo():
    import json

    from PIL import Image

    from reid.local.pairs import draw_matches, matched_keypoints

    big = photo(480, 360, seed=9)
    a = jpeg_bytes(big)
    box_b = {"x": 100.0, "y": 80.0, "w": 300.0, "h": 220.0}  # B: the same scene, asked through a bbox
    out = matched_keypoints(a, a, None, box_b)
    json.dumps(out)  # plain JSON
    assert out["inliers"] >= 10 and len(out["lines"]) == min(out["inliers"], 200)
    # a point seen in both photos is the same photo pixel: lines are (nearly) zero length
    lines = np.array(out["lines"])
    assert np.median(np.hypot(lines[:, 0] - lines[:, 2], lines[:, 1] - lines[:, 3])) < 3.0
    assert (lines[:, 2] >= 100 - 1).all() and (lines[:, 2] <= 400 + 1).all()  # inside B's bbox
    png = draw_matches(a, a, out, None, box_b, height=120)
    assert Image.open(io.BytesIO(png)).size[1] == 120
    with pytest.raises(Exception, match="photo B"):
        matched_keypoints(a, b"junk")


def test_feature_set_reads_several_outputs_of_one_setting_and_refuses_mixed_settings(tmp_path):
    from reid import manifest, storage
    from reid.local.store import FeatureSet, unit_uri

    def output(name: str, ids: list[str], settings: ExtractorSettings) -> str:
        ex = create_extractor(settings)
        feats = [ex.extract(jpeg_bytes(photo(160, 120, seed=i)))[0] for i in range(len(ids))]
        out = str(tmp_path / name)
        storage.write_parquet(features_rows(ids, feats, settings.features_id()), unit_uri(out, "u0"))
        manifest.write_manifest(
            out, "keypoints", {}, [], {}, manifest.now(), features_id=settings.features_id()
        )
        return out

    small = ExtractorSettings(long_side=128, max_keypoints=100)
    archive_feats = output("archive", ["a", "b"], small)
    new_feats = output("new", ["c"], small)
    got = FeatureSet([archive_feats, new_feats]).get(["a", "c", "zzz"])
    assert sorted(got) == ["a", "c"] and len(got["c"]) <= 100
    other = output("other", ["d"], ExtractorSettings(long_side=128, max_keypoints=50))
    with pytest.raises(Exception, match="different extractor settings"):
        FeatureSet([archive_feats, other])


def test_reading_by_id_reads_only_the_row_groups_that_hold_the_images(tmp_path):
    import pyarrow.parquet as pq

    from reid import manifest, storage
    from reid.local.store import ROW_GROUP, FeatureStore, unit_uri, write_ids

    settings = ExtractorSettings(long_side=128, max_keypoints=50)
    f, _ = create_extractor(settings).extract(jpeg_bytes(photo(160, 120, seed=2)))
    ids = [f"img{i:02d}" for i in range(20)]
    out = str(tmp_path / "feat")
    table = features_rows(ids, [f] * len(ids), settings.features_id())
    storage.write_parquet(table, unit_uri(out, "u0"), row_group_size=ROW_GROUP)
    assert write_ids(out, ["u0"]) == 20
    manifest.write_manifest(out, "keypoints", {}, [], {}, manifest.now(), features_id=settings.features_id())
    store = FeatureStore(out)
    assert store.where()["img13"] == (0, 13 // ROW_GROUP)
    assert pq.ParquetFile(unit_uri(out, "u0")).metadata.num_row_groups == -(-20 // ROW_GROUP)
    got = store.get(["img13", "img01", "nope"])
    assert sorted(got) == ["img01", "img13"] and np.array_equal(got["img13"].desc, f.desc)
