"""Local features: keypoints and descriptors per image, verified matches per pair, calibrated fusion
with the global embedding's score (``reid keypoints``, ``reid match --keypoints``, ``reid evaluate
--keypoints``)."""

from reid.local.extract import (
    EXTRACTORS,
    Extractor,
    ExtractorSettings,
    Features,
    create_extractor,
    register_extractor,
)
from reid.local.match import Matcher, MatcherSettings, MatchResult, prepare

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "ExtractorSettings",
    "Features",
    "MatchResult",
    "Matcher",
    "MatcherSettings",
    "create_extractor",
    "prepare",
    "register_extractor",
]
