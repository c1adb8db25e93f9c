"""Verified local matches between two images: tentative descriptor matches, then a robust
geometric check whose inlier count is the local score.

Made cheap for re-ranking shortlists (one query against B candidates):

* each image is prepared once (:func:`prepare`: its strongest ``keypoints`` only, RootSIFT as
  unit float32 rows), so a pair costs one small matrix product, not a descriptor search;
* the query's descriptors meet all its candidates' in one matrix product (:meth:`Matcher.match_many`),
  which BLAS runs far faster than B small ones;
* tentative matches: Lowe's ratio test on the nearest two, kept only when mutual;
* early exit: fewer than ``min_matches`` tentative matches -> no geometric check, 0 inliers
  (two different animals rarely pass, so most of the shortlist stops here);
* the geometric check (a partial affine transform by RANSAC by default; USAC MAGSAC fundamental
  matrix or homography as options) runs on a few dozen points.

A learned matcher (LightGlue) would sit behind the same :meth:`Matcher.match_many` signature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from reid.errors import ConfigError
from reid.local.extract import Features

__all__ = ["GEOMETRIES", "MatchResult", "Matcher", "MatcherSettings", "Prepared", "prepare"]

GEOMETRIES = ("fundamental", "homography", "affine", "none")


@dataclass(frozen=True)
class MatcherSettings:
    """How two images' keypoints are matched and verified."""

    keypoints: int = 512  # strongest keypoints of each image used for matching
    ratio: float = 0.85  # Lowe's ratio test on descriptor distances
    mutual: bool = True  # keep a match only if each is the other's nearest
    min_matches: int = 8  # fewer tentative matches: no geometric check, 0 inliers
    geometry: str = "affine"  # partial affine (RANSAC): on lions val better and cheaper than F
    threshold_px: float = 4.0  # inlier distance, pixels of the resized crop
    max_iters: int = 1000
    confidence: float = 0.999

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry {self.geometry!r}: choose one of {', '.join(GEOMETRIES)}")
        if not 0 < self.ratio <= 1 or self.keypoints < 1 or self.min_matches < 1:
            raise ConfigError("matcher: ratio in (0, 1], keypoints >= 1 and min_matches >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    """An image ready for matching: positions (float32 [n, 2]) and unit descriptors (float32 [n, d])."""

    xy: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)


def prepare(features: Features, keypoints: int) -> Prepared:
    """The strongest ``keypoints`` of an image as float32; uint8 SIFT becomes RootSIFT (L1 norm,
    square root: unit L2 rows whose dot product is the Hellinger kernel); float descriptors are
    L2-normalised."""
    f = features.head(keypoints)
    d = f.desc.astype(np.float32)
    if f.desc.dtype == np.uint8:
        d = np.sqrt(d / np.maximum(d.sum(1, keepdims=True), 1e-6))
    else:
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    return Prepared(np.asarray(f.xy, np.float32).reshape(-1, 2), np.ascontiguousarray(d))


@dataclass
class MatchResult:
    """One pair: verified inliers, tentative matches, and (when asked) the inlier index pairs."""

    inliers: int
    tentative: int
    pairs: np.ndarray | None = None  # int [m, 2]: (keypoint in a, keypoint in b) of each inlier


class Matcher:
    """Tentative matches + geometric verification, one pair or one query against many."""

    def __init__(self, settings: MatcherSettings | None = None):
        import cv2

        cv2.setNumThreads(1)
        self.settings = settings or MatcherSettings()
        self._cv2 = cv2

    def tentative(self, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of tentative matches in a similarity block [na, nb] of unit descriptors."""
        na, nb = sim.shape
        if na < 2 or nb < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.arange(na)
        best = sim.argmax(1)
        s1 = sim[rows, best]
        sim[rows, best] = -2.0  # below any cosine: the row's maximum is now its second best
        top2 = sim.max(1)
        sim[rows, best] = s1  # restored (sim may be a view of a block shared by several pairs)
        # distances of unit vectors: d^2 = 2 - 2 s; ratio test d1 < r d2
        r2 = self.settings.ratio**2
        ok = (2.0 - 2.0 * s1) < r2 * (2.0 - 2.0 * top2)
        if self.settings.mutual and ok.any():  # mutual: checked only on the columns that passed
            cols = best[ok]
            ok[ok] = sim[:, cols].argmax(0) == rows[ok]
        return rows[ok], best[ok]

    def verify(self, xa: np.ndarray, xb: np.ndarray) -> tuple[int, np.ndarray | None]:
        """Inliers of a robust geometric model between matched points (float32 [m, 2] each)."""
        s, cv2 = self.settings, self._cv2
        if s.geometry == "none":
            return len(xa), np.ones(len(xa), bool)
        cv2.setRNGSeed(len(xa))  # the same pair, the same inliers, whatever was matched before
        try:
            if s.geometry == "fundamental":
                _, mask = cv2.findFundamentalMat(
                    xa, xb, cv2.USAC_MAGSAC, s.threshold_px, s.confidence, s.max_iters
                )
            elif s.geometry == "homography":
                _, mask = cv2.findHomography(
                    xa, xb, cv2.USAC_MAGSAC, s.threshold_px, maxIters=s.max_iters, confidence=s.confidence
                )
            else:
                _, mask = cv2.estimateAffinePartial2D(
                    xa, xb, method=cv2.RANSAC, ransacReprojThreshold=s.threshold_px,
                    maxIters=s.max_iters, confidence=s.confidence,
                )  # fmt: skip
        except cv2.error:  # degenerate configuration: nothing verified
            return 0, None
        if mask is None:
            return 0, None
        mask = mask.ravel().astype(bool)
        return int(mask.sum()), mask

    def match_prepared(
        self, a: Prepared, b: Prepared, sim: np.ndarray | None = None, pairs: bool = False
    ) -> MatchResult:
        """One pair of prepared images (``sim``: their similarity block, when already computed)."""
        if len(a) < 2 or len(b) < 2:
            return MatchResult(0, 0, np.zeros((0, 2), np.int64) if pairs else None)
        sim = a.desc @ b.desc.T if sim is None else sim
        ia, ib = self.tentative(sim)
        if len(ia) < self.settings.min_matches:
            return MatchResult(0, len(ia), np.zeros((0, 2), np.int64) if pairs else None)
        n, mask = self.verify(a.xy[ia], b.xy[ib])
        kept = np.stack([ia, ib], 1)[mask] if (pairs and mask is not None) else np.zeros((0, 2), np.int64)
        return MatchResult(n, len(ia), kept if pairs else None)

    def match(self, a: Features, b: Features, pairs: bool = False) -> MatchResult:
        """One pair of stored features."""
        k = self.settings.keypoints
        return self.match_prepared(prepare(a, k), prepare(b, k), pairs=pairs)

    def match_many(self, query: Prepared, candidates: list[Prepared | None], chunk: int = 16) -> np.ndarray:
        """Inliers of one query against each candidate (None: features missing -> -1), int32 [B].

        Candidates go through the matrix product ``chunk`` at a time (one GEMM per chunk)."""
        out = np.full(len(candidates), -1, np.int32)
        live = [i for i, c in enumerate(candidates) if c is not None]
        for i in live:
            if len(candidates[i]) < 2 or len(query) < 2:
                out[i] = 0
        live = [i for i in live if out[i] < 0]
        for lo in range(0, len(live), chunk):
            group = live[lo : lo + chunk]
            stacked = np.concatenate([candidates[i].desc for i in group])
            sim = query.desc @ stacked.T
            start = 0
            for i in group:
                n = len(candidates[i])
                out[i] = self.match_prepared(query, candidates[i], sim[:, start : start + n]).inliers
                start += n
        return out
