"""Model-input preprocessing, split in two halves so the cheap half can run on another machine.

``decode_for_model`` (CPU, per image): decode, crop to bbox, resize to the model's square input,
as uint8 HWC (4x smaller than float to ship between processes). ``normalize`` (where the model
runs, per batch): uint8 NHWC -> float NCHW normalised with the model package's mean/std. Every
path that feeds a model (training validation, embedding, serving) uses these two, so
preprocessing cannot silently differ between them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from reid.images import imageio


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the (cropped) animal to ``size`` x ``size`` (whole crop kept, aspect squashed)."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)  # as reid.images.transforms.eval_transform
    return np.asarray(img, dtype=np.uint8)


def decode_for_model(data: bytes | None, bbox, size: int) -> tuple[np.ndarray | None, str | None]:
    """Encoded bytes -> uint8 [size, size, 3] array, or ``(None, reason)``."""
    dec = imageio.decode(data, bbox=bbox, target_size=size)
    if not dec.ok:
        return None, dec.reason
    return resize_square(dec.image, size), None


def normalize(
    batch: np.ndarray | torch.Tensor, mean, std, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] on ``device``, (x/255 - mean) / std."""
    t = torch.as_tensor(batch)
    t = t.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    from reid.model.spec import IMAGENET_MEAN, IMAGENET_STD

    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    m = torch.tensor(mean, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    return t.sub_(m).div_(s).contiguous()
