"""A synthetic sighting's frame: background, pose, light, occlusion, noise; and its archive row.

The scene (frame size, pose, background, light) is the burst's, so frames of one burst share it
with tiny per-frame changes; each image is rendered from its own seeded generator.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.synthetic.render import Sprites, value_noise
from reid.synthetic.survey import Plan, Sighting, SynthConfig, plan, seeded_rng

__all__ = ["archive_row", "generate", "render"]

_PALETTE = np.array(
    [
        [86, 112, 52],
        [64, 88, 40],
        [120, 130, 70],
        [140, 120, 80],
        [104, 84, 60],
        [150, 140, 110],
        [90, 90, 84],
        [170, 160, 130],
        [60, 70, 50],
        [120, 100, 70],
        [180, 170, 150],
        [40, 60, 35],
        [196, 150, 92],
        [160, 110, 70],  # coat-like tones in the scene too: colour alone must not find the animal
    ],
    dtype=np.float32,
)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A natural-looking textured background: gradient or noise base, grass strokes, rocks, blobs."""
    cols = (_PALETTE[rng.integers(len(_PALETTE), size=3)] * rng.uniform(0.75, 1.2, size=(3, 1))).astype(
        np.float32
    )
    kind = rng.integers(3)
    if kind == 0:  # ground/sky-ish vertical gradient with a wavy horizon
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        horizon = rng.uniform(0.2, 0.7) + 0.08 * (value_noise(rng, 1, w, max(4, w // 4))[0] - 0.5)
        top = (t < horizon[None, :]).astype(np.float32)
        g = value_noise(rng, h, w, max(4, w // 12))[..., None]
        img = top[..., None] * (cols[0] * (0.8 + 0.4 * g)) + (1 - top[..., None]) * (
            cols[1] * (0.7 + 0.6 * g)
        )
    else:  # multi-octave mottled vegetation
        n = (
            0.5 * value_noise(rng, h, w, max(4, w // 4))
            + 0.3 * value_noise(rng, h, w, max(3, w // 12))
            + 0.2 * value_noise(rng, h, w, 3)
        )
        n = np.clip((n - n.min()) / max(1e-6, float(n.max() - n.min())), 0, 1)[..., None]
        img = cols[0] * (1 - n) + cols[1] * n
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 40))):  # grass blades and twigs
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ln = rng.uniform(0.05, 0.3) * h
        a = rng.normal(-np.pi / 2, 0.4)
        c = tuple(int(v) for v in np.clip(cols[2] * rng.uniform(0.6, 1.3), 0, 255))
        d.line([(x, y), (x + ln * np.cos(a), y + ln * np.sin(a))], fill=c, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 5))):  # rocks and blobs
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.14) * w
        c = tuple(
            int(v) for v in np.clip(_PALETTE[rng.integers(len(_PALETTE))] * rng.uniform(0.5, 1.1), 0, 255)
        )
        d.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r * rng.uniform(0.5, 1)], fill=c)
    return np.asarray(img, dtype=np.float32)


def _occlude(rng: np.random.Generator, img: Image.Image, box: tuple[float, float, float, float]) -> None:
    """Vegetation in front of the animal: near-vertical stems and leafy blobs over its box."""
    x, y, bw, bh = box
    d = ImageDraw.Draw(img)
    col = _PALETTE[rng.integers(0, 4)] * rng.uniform(0.5, 1.0)
    for _ in range(int(rng.integers(1, 4))):
        x0 = x + rng.uniform(0, bw)
        a = rng.normal(0, 0.25)
        c = tuple(int(v) for v in np.clip(col * rng.uniform(0.8, 1.2), 0, 255))
        d.line(
            [(x0, y - 5 + rng.uniform(-0.2, 0.6) * bh), (x0 + np.tan(a) * bh * 1.5, y + bh * 1.5)],
            fill=c,
            width=int(rng.integers(2, max(3, int(0.05 * bw)))),
        )
    for _ in range(int(rng.integers(0, 2))):
        cx, cy = x + rng.uniform(0, bw), y + rng.uniform(0.3, 1.1) * bh
        r = rng.uniform(0.06, 0.16) * bw
        c = tuple(int(v) for v in np.clip(col * rng.uniform(0.8, 1.3), 0, 255))
        d.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=c)


@dataclass(frozen=True)
class _Pose:
    angle: float
    scale: float
    squash: float
    shear: float
    cx: float
    cy: float
    gait: int


def _burst_scene(c: SynthConfig, sgt: Sighting, sprite_w: int) -> dict:
    """Burst-level scene (frame size, pose, background, light, occlusion): shared by its frames."""
    r = seeded_rng(c.seed, 4, sgt.burst)
    s = c.image_size
    if sgt.wide:
        fw, fh = int(s * r.uniform(1.6, 2.6)), int(s * r.uniform(1.3, 2.0))
        animal_w = s * r.uniform(0.5, 0.75)
    else:
        fw = fh = s
        animal_w = s * r.uniform(0.62, 0.95)
    scale = animal_w / sprite_w
    margin_x = max(0.0, (fw - animal_w) / 2) + 0.08 * animal_w
    margin_y = max(0.0, (fh - 0.7 * animal_w) / 2) + 0.05 * animal_w
    pose = _Pose(
        angle=float(np.clip(r.normal(0, 11), -28, 28)),
        scale=scale,
        squash=float(r.uniform(0.78, 1.0)),  # seen a little from the front or back
        shear=float(r.normal(0, 0.08)),
        cx=fw / 2 + float(r.uniform(-margin_x, margin_x)),
        cy=fh / 2 + float(r.uniform(-margin_y, margin_y)),
        gait=int(r.integers(4)),
    )
    return dict(rng_seed=int(r.integers(2**31)), size=(fw, fh), pose=pose)


def _place(sprite: Image.Image, pose: _Pose, size: tuple[int, int]) -> Image.Image:
    """Warp the canonical sprite into the frame (rotation, scale, squash, shear, translation)."""
    sw, sh = sprite.size
    a = np.deg2rad(pose.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = rot @ np.array([[1.0, pose.shear], [0.0, 1.0]]) @ np.diag([pose.scale * pose.squash, pose.scale])
    inv = np.linalg.inv(lin)
    centre = np.array([sw / 2, sh / 2])
    off = centre - inv @ np.array([pose.cx, pose.cy])
    data = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    return sprite.transform(size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


def render(c: SynthConfig, sgt: Sighting, sprites: Sprites | None = None) -> tuple[bytes, dict, int, int]:
    """Render one planned sighting: (JPEG bytes, tight bbox dict, width, height)."""
    sprites = sprites or Sprites(c)
    scene = _burst_scene(c, sgt, sprites.w)
    fw, fh = scene["size"]
    p: _Pose = scene["pose"]
    fr = seeded_rng(c.seed, 5, sgt.index)  # frame-level jitter: tiny pose changes within the burst
    pose = _Pose(
        p.angle + fr.normal(0, 1.5),
        p.scale * fr.uniform(0.98, 1.02),
        p.squash,
        p.shear,
        p.cx + fr.normal(0, 0.015 * fw),
        p.cy + fr.normal(0, 0.01 * fh),
        (p.gait + (sgt.frame if fr.random() < 0.5 else 0)) % 4,
    )
    br = seeded_rng(scene["rng_seed"])
    bg = _background(br, fw, fh)
    layer = _place(sprites.get(sgt.individual, sgt.viewpoint, pose.gait), pose, (fw, fh))
    rgba = np.asarray(layer, dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    img = rgba[..., :3] * alpha + bg * (1 - alpha)
    rows = np.flatnonzero((alpha[..., 0] > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha[..., 0] > 0.5).any(axis=0))
    if len(rows) == 0:  # cannot happen with the margins above; keep a valid box regardless
        box = (0.0, 0.0, float(fw), float(fh))
    else:
        box = (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))

    # lighting: exposure, colour cast, a directional gradient, sometimes dappled sun
    light = (br.uniform(0.7, 1.3) * br.uniform(0.88, 1.12, size=3)).astype(np.float32)
    yy, xx = np.ogrid[0:fh, 0:fw]
    yy, xx = yy.astype(np.float32) / fh - 0.5, xx.astype(np.float32) / fw - 0.5
    ga = br.uniform(0, 2 * np.pi)
    grad = 1 + np.float32(br.uniform(0, 0.4)) * (xx * np.float32(np.cos(ga)) + yy * np.float32(np.sin(ga)))
    img = img * light * grad[..., None]
    if br.random() < 0.25:
        dapple = value_noise(br, fh, fw, max(4, fw // 10))
        img = img * (0.85 + 0.3 * (dapple > br.uniform(0.45, 0.6)))[..., None]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    if br.random() < 0.45:
        _occlude(br, out, box)
    if sgt.night:  # infrared flash: grey, bright centre, noisier
        fall = 1.2 - 0.6 * np.sqrt(xx**2 + yy**2)
        arr = np.asarray(out.convert("L"), dtype=np.float32) * fall * np.float32(br.uniform(0.85, 1.25))
        sigma = fr.uniform(3, 8)
    else:
        arr = np.asarray(out, dtype=np.float32)
        sigma = fr.uniform(1, 5)
    arr = arr + fr.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    gamma = br.uniform(0.85, 1.2)
    out = out.point([int(round(255 * (i / 255) ** gamma)) for i in range(256)] * 3)
    if br.random() < 0.4:
        out = out.filter(ImageFilter.GaussianBlur(fr.uniform(0.3, 0.9)))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(fr.integers(80, 95)))
    bbox = {"x": box[0], "y": box[1], "w": box[2], "h": box[3]}
    return buf.getvalue(), bbox, fw, fh


def archive_row(c: SynthConfig, sgt: Sighting, sprites: Sprites | None = None) -> dict:
    """One archive row (ARCHIVE_SCHEMA) for a planned sighting."""
    data, bbox, w, h = render(c, sgt, sprites)
    return {
        "image_id": sgt.image_id,
        "image": data,
        "individual_id": sgt.individual_id if sgt.labeled else None,
        "species": c.species,
        "survey": sgt.survey,
        "captured_at": sgt.captured_at,
        "camera_id": sgt.camera_id,
        "viewpoint": sgt.viewpoint,
        "bbox": bbox,
        "source": sgt.source,
        "width": w,
        "height": h,
    }


def generate(
    config: SynthConfig, skip_ids: Iterable[str] = (), survey_plan: Plan | None = None
) -> Iterator[dict]:
    """Archive rows in index order, rendering only images whose id is not in ``skip_ids``."""
    p = survey_plan or plan(config)
    skip = set(skip_ids)
    sprites = Sprites(config)
    for sgt in p.sightings:
        if sgt.image_id not in skip:
            yield archive_row(config, sgt, sprites)
