"""Why two photos are called one animal: their verified keypoint matches, for a page to draw.

:func:`matched_keypoints` takes two encoded photos (and their bboxes), extracts and matches them
as re-ranking does, and returns plain JSON: the inlier count and each inlier as a line from a point
in photo A to a point in photo B, in pixels of each upright original photo (the bbox offset added,
the resize undone), so a page can draw them over the photos as shown. :func:`draw_matches` renders
the same as one PNG (both crops side by side, a line per inlier) for reports.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from reid.errors import ReidError
from reid.images.imageio import decode
from reid.local.extract import ExtractorSettings, Features, create_extractor
from reid.local.match import Matcher, MatcherSettings

__all__ = ["draw_matches", "matched_keypoints", "matches_json", "report_figures"]


def _offset(bbox) -> tuple[float, float]:
    if isinstance(bbox, dict) and bbox.get("x") is not None:
        return max(0.0, float(bbox["x"])), max(0.0, float(bbox["y"]))
    if isinstance(bbox, (tuple, list)):
        return max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
    return 0.0, 0.0


def matches_json(fa: Features, fb: Features, bbox_a=None, bbox_b=None, matcher: MatcherSettings | None = None,
                 max_lines: int = 200) -> dict:  # fmt: skip
    """The verified matches of two images' features as JSON-ready lists (photo pixels)."""
    res = Matcher(matcher).match(fa, fb, pairs=True)
    ox_a, oy_a = _offset(bbox_a)
    ox_b, oy_b = _offset(bbox_b)
    lines = []
    for ia, ib in res.pairs[:max_lines]:
        xa, ya = (float(v) / fa.scale for v in fa.xy[ia])
        xb, yb = (float(v) / fb.scale for v in fb.xy[ib])
        lines.append([round(xa + ox_a, 1), round(ya + oy_a, 1), round(xb + ox_b, 1), round(yb + oy_b, 1)])
    return {
        "inliers": int(res.inliers),
        "tentative": int(res.tentative),
        "lines": lines,  # [x_a, y_a, x_b, y_b] per inlier, strongest keypoints first
        "keypoints": [len(fa), len(fb)],
    }


def matched_keypoints(
    image_a: bytes,
    image_b: bytes,
    bbox_a: dict | None = None,
    bbox_b: dict | None = None,
    extractor: ExtractorSettings | None = None,
    matcher: MatcherSettings | None = None,
    max_lines: int = 200,
) -> dict:
    """Verified keypoint matches between two photos (encoded bytes, optional bbox x/y/w/h), as JSON:
    ``{"inliers", "tentative", "lines": [[x_a, y_a, x_b, y_b], ...], "keypoints": [n_a, n_b]}``
    with points in pixels of each upright photo. Raises :class:`ReidError` for an undecodable photo."""
    ex = create_extractor(extractor)
    feats = []
    for name, data, bbox in (("A", image_a, bbox_a), ("B", image_b, bbox_b)):
        f, reason = ex.extract(data, bbox)
        if f is None:
            raise ReidError(f"photo {name}: {reason}")
        feats.append(f)
    return matches_json(feats[0], feats[1], bbox_a, bbox_b, matcher, max_lines)


def draw_matches(
    image_a: bytes, image_b: bytes, result: dict, bbox_a=None, bbox_b=None, height: int = 240
) -> bytes:
    """Both crops side by side at ``height`` pixels, one line per inlier of ``result``
    (:func:`matched_keypoints`); PNG bytes."""
    crops, scales, offsets = [], [], []
    for data, bbox in ((image_a, bbox_a), (image_b, bbox_b)):
        d = decode(data, bbox)
        if not d.ok:
            raise ReidError(f"cannot draw matches: {d.reason}")
        s = height / d.image.height
        crops.append(d.image.resize((max(1, round(d.image.width * s)), height)))
        scales.append(s)
        offsets.append(_offset(bbox))
    canvas = Image.new("RGB", (crops[0].width + crops[1].width + 8, height), (255, 255, 255))
    canvas.paste(crops[0], (0, 0))
    canvas.paste(crops[1], (crops[0].width + 8, 0))
    draw = ImageDraw.Draw(canvas)
    rng = np.random.default_rng(0)
    shift = crops[0].width + 8
    for xa, ya, xb, yb in result["lines"]:
        colour = tuple(int(c) for c in rng.integers(60, 256, 3))
        pa_ = ((xa - offsets[0][0]) * scales[0], (ya - offsets[0][1]) * scales[0])
        pb_ = ((xb - offsets[1][0]) * scales[1] + shift, (yb - offsets[1][1]) * scales[1])
        draw.line([pa_, pb_], fill=colour, width=1)
        for x, y in (pa_, pb_):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=colour)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def report_figures(
    archive_uri: str, features_uri: str, examples: list[dict], height: int = 200
) -> list[dict]:
    """For the evaluation report: each example pair (``query_id``, ``candidate_id``) drawn with its
    verified matches, from the archive's photos and the stored features. Returns
    ``[{"caption", "png"}]``; pairs whose photos or features are missing are skipped."""
    import pyarrow.compute as pc

    from reid.archive import dataset
    from reid.local.store import FeatureStore

    ids = sorted({e[k] for e in examples for k in ("query_id", "candidate_id")})
    if not ids:
        return []
    rows = dataset(archive_uri).to_table(
        columns=["image_id", "image", "bbox"], filter=pc.field("image_id").isin(ids)
    )
    photos = {r["image_id"]: (r["image"], r["bbox"]) for r in rows.to_pylist()}
    feats = FeatureStore(features_uri).get(ids)
    out = []
    for e in examples:
        a, b = e["query_id"], e["candidate_id"]
        if a not in photos or b not in photos or a not in feats or b not in feats:
            continue
        res = matches_json(feats[a], feats[b], photos[a][1], photos[b][1])
        png = draw_matches(photos[a][0], photos[b][0], res, photos[a][1], photos[b][1], height)
        how = (
            "the global ranking's top candidate was another individual"
            if not e["global_right"]
            else ("the global ranking agrees")
        )
        out.append(
            {
                "caption": f"{e['individual_id']}: query {a} and its fused top candidate {b}, "
                f"{res['inliers']} verified matches (B = {e['shortlist']}; {how})",
                "png": png,
            }
        )
    return out
