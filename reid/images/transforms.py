"""Image preprocessing built from a model spec, so training, embedding and serving agree exactly.

Evaluation: resize to an ``input_size`` square and normalise with the spec's mean/std.
Training adds re-ID-safe augmentation: aspect-keeping crops, small rotations, colour jitter, blur
and erasing.
Horizontal flips are off by default: for animals whose left and right flanks carry different
patterns (zebra stripes, giraffe patches, lion whisker spots) a flip makes a different individual.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

from reid.images.imageio import decode
from reid.model.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec


def _normalize(spec: ModelSpec) -> T.Normalize:
    return T.Normalize(mean=list(spec.mean or IMAGENET_MEAN), std=list(spec.std or IMAGENET_STD))


def eval_transform(spec: ModelSpec):
    """PIL RGB image -> float tensor [3, S, S], S = spec.input_size."""
    s = spec.input_size
    return T.Compose(
        [
            T.Resize((s, s), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToTensor(),
            _normalize(spec),
        ]
    )


class RandomCropSquash:
    """A random crop that keeps the image's own aspect ratio (jittered), resized to a square.

    Evaluation squashes the whole crop of the animal into the square input; torchvision's
    RandomResizedCrop instead cuts near-square windows, so a long-bodied animal would be seen
    with one aspect in training and another in evaluation. This crop keeps them alike.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.6, 1.0), jitter: float = 1.15):
        self.size, self.scale, self.jitter = size, scale, jitter

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        area = torch.empty(1).uniform_(*self.scale).item()
        log_j = torch.empty(1).uniform_(-1.0, 1.0).item() * float(torch.log(torch.tensor(self.jitter)))
        aspect = float(torch.exp(torch.tensor(log_j)))
        cw = min(w, max(1, round(w * (area * aspect) ** 0.5)))
        ch = min(h, max(1, round(h * (area / aspect) ** 0.5)))
        x0 = int(torch.randint(0, w - cw + 1, (1,)))
        y0 = int(torch.randint(0, h - ch + 1, (1,)))
        return img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))


def train_transform(spec: ModelSpec, flip: bool = False, strength: float = 1.0):
    """Augmenting PIL -> tensor transform for metric learning; ``strength`` scales every effect.

    ``flip=True`` only for species whose flanks look alike (or data without viewpoint meaning).
    """
    s = spec.input_size
    a = max(0.0, float(strength))
    ops: list = [RandomCropSquash(s, scale=(max(0.35, 1.0 - 0.4 * a), 1.0), jitter=1.0 + 0.15 * a)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    if a > 0:
        ops += [
            T.RandomApply([T.RandomRotation(10 * a, interpolation=T.InterpolationMode.BILINEAR)], p=0.3),
            T.ColorJitter(brightness=0.3 * a, contrast=0.3 * a, saturation=0.2 * a, hue=0.02 * a),
            T.RandomGrayscale(p=0.1 * min(a, 1.0)),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.5))], p=0.2 * min(a, 1.0)),
        ]
    ops += [T.ToTensor(), _normalize(spec)]
    if a > 0:
        ops.append(T.RandomErasing(p=0.25 * min(a, 1.0), scale=(0.02, 0.15), value=0))
    return T.Compose(ops)


def preprocess(
    data: bytes | None, bbox, spec: ModelSpec, transform=None
) -> tuple[torch.Tensor | None, str | None]:
    """Encoded bytes (+ optional bbox) -> (normalised tensor, None), or (None, reject reason)."""
    decoded = decode(data, bbox, target_size=spec.input_size)
    if not decoded.ok:
        return None, decoded.reason
    image: Image.Image = decoded.image
    try:
        return (transform or eval_transform(spec))(image), None
    except Exception as e:  # noqa: BLE001 - a bad pixel buffer is a reject, not a crash
        return None, f"transform failed: {type(e).__name__}: {e}"
