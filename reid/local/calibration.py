"""Scores -> P(same individual), and their fusion.

Each score (the global embedding's cosine, the local matcher's inlier count) is mapped to the
probability that a pair shows one individual, fitted on labelled pairs of the archive: each
labelled query's shortlist (the pairs the re-ranker scores anyway), with pairs of one burst left
out (they look alike for reasons other than identity, :func:`reid.data.sightings.same_burst`).
The fused score is the mean of the calibrated probabilities (WildFusion's rule), so it is a
probability too and a new-individual threshold set on it means the same for every query.

Two methods: ``isotonic`` (monotone, no shape assumed; a small logistic term breaks its flat
steps so the map stays strictly increasing) and ``logistic`` (Platt scaling on the score, or on
log(1 + inliers) for counts). A :class:`Calibration` is plain JSON, stored with the match output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reid.errors import ReidError

__all__ = ["METHODS", "Calibration", "ScoreMap", "fit", "fit_map"]

METHODS = ("isotonic", "logistic")
_TIE_BREAK = 0.02  # weight of the logistic term in an isotonic map (keeps it strictly increasing)


def _feature(x: np.ndarray, log: bool) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.log1p(np.maximum(x, 0.0)) if log else x


@dataclass
class ScoreMap:
    """One score's calibration: a logistic curve, plus isotonic knots when fitted isotonic."""

    name: str
    log: bool  # the score is a count: calibrated on log(1 + x)
    a: float  # logistic slope (> 0) ...
    b: float  # ... and intercept: p = 1 / (1 + exp(-(a x + b)))
    knots_x: list[float] = field(default_factory=list)
    knots_y: list[float] = field(default_factory=list)

    def __call__(self, x) -> np.ndarray:
        z = _feature(x, self.log)
        p = 1.0 / (1.0 + np.exp(-(self.a * z + self.b)))
        if self.knots_x:
            iso = np.interp(z, self.knots_x, self.knots_y)
            p = (1.0 - _TIE_BREAK) * iso + _TIE_BREAK * p
        return np.clip(p, 0.0, 1.0)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_map(
    name: str, x: np.ndarray, same: np.ndarray, method: str = "isotonic", log: bool = False
) -> ScoreMap:
    """Calibrate one score on labelled pairs (``same``: the pair shows one individual)."""
    from sklearn.linear_model import LogisticRegression

    if method not in METHODS:
        raise ReidError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    z = _feature(x, log)
    same = np.asarray(same, bool)
    ok = np.isfinite(z)
    z, same = z[ok], same[ok]
    if same.all() or not same.any():
        raise ReidError(
            f"calibrating {name}: needs labelled pairs of one individual and of two "
            f"({int(same.sum())} same, {int((~same).sum())} different); label more images"
        )
    lr = LogisticRegression(C=1e4).fit(z[:, None], same)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:  # the score does not rise with identity here: a flat, barely increasing map
        a, b = 1e-6, float(np.log(same.mean() / (1 - same.mean())))
    out = ScoreMap(name, log, a, b)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(z, same)
        out.knots_x = [float(v) for v in iso.X_thresholds_]
        out.knots_y = [float(v) for v in iso.y_thresholds_]
    return out


@dataclass
class Calibration:
    """Calibrated maps of the global and local scores; :meth:`fuse` is their mean probability."""

    global_map: ScoreMap
    local_map: ScoreMap
    method: str
    pairs: int = 0  # labelled pairs it was fitted on
    same_pairs: int = 0

    def p_global(self, cosine) -> np.ndarray:
        return self.global_map(cosine)

    def p_local(self, inliers) -> np.ndarray:
        return self.local_map(inliers)

    def fuse(self, cosine, inliers) -> np.ndarray:
        """Mean of the calibrated probabilities; a pair without local features (inliers < 0)
        keeps its global probability alone."""
        pg = self.p_global(cosine)
        inl = np.asarray(inliers, np.float64)
        pl = self.p_local(np.maximum(inl, 0))
        return np.where(inl >= 0, 0.5 * (pg + pl), pg)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "pairs": self.pairs,
            "same_pairs": self.same_pairs,
            "global": self.global_map.to_dict(),
            "local": self.local_map.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: dict) -> Calibration:
        return cls(
            ScoreMap(**doc["global"]),
            ScoreMap(**doc["local"]),
            doc["method"],
            doc["pairs"],
            doc["same_pairs"],
        )


def fit(cosine: np.ndarray, inliers: np.ndarray, same: np.ndarray, method: str = "isotonic") -> Calibration:
    """Fit both maps on the same labelled pairs (pairs without local features: global map only)."""
    cosine, inliers, same = np.asarray(cosine), np.asarray(inliers), np.asarray(same, bool)
    has_local = inliers >= 0
    return Calibration(
        fit_map("global cosine", cosine, same, method),
        fit_map("inliers", inliers[has_local], same[has_local], method, log=True),
        method,
        int(len(same)),
        int(same.sum()),
    )
