"""Local-feature extractors: an image crop -> keypoint positions and descriptors, by name.

:class:`Extractor` fixes the template every extractor follows (decode with the bbox crop, resize
to a fixed long side, grey or RGB pixels to the detector, keep the top-N keypoints by response,
pack them compactly); a subclass only implements :meth:`Extractor.detect`. Extractors register by
name (:func:`register_extractor`), so a learned one (ALIKED, DISK, SuperPoint: weights installed
beside the package) is one more class and one more name; nothing here pretends to be one.

The shipped default is OpenCV SIFT (no weights to download); its descriptors are stored as the
uint8 values OpenCV computes (exact) and turned into RootSIFT (L1-normalised, square-rooted) when
matched (:func:`reid.local.match.prepare`), so one stored set serves both.
"""

from __future__ import annotations

import hashlib
import io
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image

from reid.errors import ConfigError
from reid.images.imageio import decode

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "ExtractorSettings",
    "Features",
    "SiftExtractor",
    "create_extractor",
    "register_extractor",
]


@dataclass(frozen=True)
class ExtractorSettings:
    """What decides an extractor's output; its hash ties stored features to it."""

    name: str = "sift"
    long_side: int = 384  # the crop is resized so its longer side has this many pixels
    max_keypoints: int = 1000  # top-N by detector response
    contrast_threshold: float = 0.02  # SIFT: lower finds more keypoints on low-contrast fur
    extra: dict = field(default_factory=dict)  # settings of a registered extractor

    def features_id(self) -> str:
        """A content hash of the settings (like a model_id): features of other settings never mix."""
        doc = json.dumps(asdict(self), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(doc.encode()).hexdigest()[:12]}"


@dataclass
class Features:
    """Keypoints of one image crop, packed: positions in pixels of the resized crop (float16) and
    descriptors (uint8 or float16), best response first; ``scale`` = resized / original crop pixels."""

    xy: np.ndarray  # float16 [n, 2]
    desc: np.ndarray  # uint8 or float16 [n, d]
    size: tuple[int, int]  # (width, height) of the resized crop
    scale: float = 1.0

    def __len__(self) -> int:
        return len(self.xy)

    def head(self, n: int) -> Features:
        """The ``n`` strongest keypoints (features are stored best first)."""
        return Features(self.xy[:n], self.desc[:n], self.size, self.scale)


EXTRACTORS: dict[str, type[Extractor]] = {}


def register_extractor(name: str):
    """Class decorator: make an :class:`Extractor` subclass available by ``name``."""

    def add(cls: type[Extractor]) -> type[Extractor]:
        cls.name = name
        EXTRACTORS[name] = cls
        return cls

    return add


class Extractor(ABC):
    """The extraction template: crop, resize, detect, keep the strongest, pack."""

    name: ClassVar[str] = ""
    grey: ClassVar[bool] = True  # the detector takes one channel
    descriptor_dtype: ClassVar[type] = np.uint8

    def __init__(self, settings: ExtractorSettings):
        if settings.long_side < 32 or settings.max_keypoints < 1:
            raise ConfigError(
                f"extractor {settings.name}: long_side >= 32 and max_keypoints >= 1 "
                f"(got {settings.long_side}, {settings.max_keypoints})"
            )
        self.settings = settings

    @abstractmethod
    def detect(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keypoints of an image (uint8 [h, w] or [h, w, 3]): (xy float32 [n, 2], response [n],
        descriptors [n, d])."""

    def resize(self, img: Image.Image) -> tuple[Image.Image, float]:
        """The crop resized to the fixed long side (up or down: one scale for every image)."""
        w, h = img.size
        scale = self.settings.long_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return img.resize(size, Image.BILINEAR if scale > 1 else Image.LANCZOS), scale

    def extract_image(self, img: Image.Image) -> Features:
        """Features of a decoded RGB crop."""
        img, scale = self.resize(img)
        pixels = np.asarray(img.convert("L") if self.grey else img.convert("RGB"))
        xy, response, desc = self.detect(pixels)
        order = np.argsort(-np.asarray(response), kind="stable")[: self.settings.max_keypoints]
        return Features(
            xy=np.asarray(xy, np.float32)[order].astype(np.float16).reshape(-1, 2),
            desc=np.asarray(desc)[order].astype(self.descriptor_dtype),
            size=img.size,
            scale=float(scale),
        )

    def extract(self, data: bytes, bbox: dict | tuple | None = None) -> tuple[Features | None, str | None]:
        """Features of encoded image bytes cropped to ``bbox``, or (None, reject reason)."""
        decoded = decode(data, bbox, target_size=_short_side_target(data, bbox, self.settings.long_side))
        if not decoded.ok:
            return None, decoded.reason
        return self.extract_image(decoded.image), None


def _short_side_target(data: bytes, bbox, long_side: int) -> int | None:
    """The crop's shorter side after resizing (lets JPEG decoding skip resolution it would discard)."""
    try:
        if isinstance(bbox, dict) and all(bbox.get(k) for k in ("w", "h")):
            w, h = float(bbox["w"]), float(bbox["h"])
        else:
            w, h = Image.open(io.BytesIO(data)).size
        return max(1, int(long_side * min(w, h) / max(w, h, 1)))
    except Exception:  # noqa: BLE001 - decode gives the reason
        return None


@register_extractor("sift")
class SiftExtractor(Extractor):
    """OpenCV SIFT: 128-d descriptors as OpenCV's uint8 values (RootSIFT is applied when matching)."""

    def __init__(self, settings: ExtractorSettings):
        super().__init__(settings)
        import cv2

        cv2.setNumThreads(1)  # one core per task: Ray runs one task per CPU
        self._sift = cv2.SIFT_create(
            nfeatures=settings.max_keypoints, contrastThreshold=settings.contrast_threshold
        )

    def detect(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kps, desc = self._sift.detectAndCompute(pixels, None)
        if desc is None or not kps:
            return np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 128), np.uint8)
        xy = np.array([k.pt for k in kps], np.float32)
        response = np.array([k.response for k in kps], np.float32)
        return xy, response, np.clip(np.rint(desc), 0, 255)


def create_extractor(settings: ExtractorSettings | None = None, **overrides) -> Extractor:
    """The extractor named by ``settings.name`` (default SIFT); refuses an unknown name by listing
    the registered ones."""
    settings = settings or ExtractorSettings(**overrides)
    cls = EXTRACTORS.get(settings.name)
    if cls is None:
        raise ConfigError(
            f"unknown local-feature extractor {settings.name!r}; registered: {', '.join(sorted(EXTRACTORS))}"
        )
    return cls(settings)
