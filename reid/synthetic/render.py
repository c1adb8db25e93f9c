"""Each synthetic individual's look: a coat pattern per flank on a four-legged silhouette (sprites).

A sprite is the canonical RGBA rendering of one individual's flank in one gait pose, facing right
(the left flank is mirrored); :mod:`reid.synthetic.scenes` warps it into a frame.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.synthetic.survey import SynthConfig, seeded_rng

__all__ = ["Sprites", "value_noise"]


def _species_colour(species: str) -> np.ndarray:
    """A coat base colour per species name (tawny for the default), so species look different."""
    if species == "synthetic-cat":
        return np.array([196.0, 150.0, 92.0])
    h = int(hashlib.sha1(species.encode()).hexdigest()[:8], 16)
    r = seeded_rng(h)
    return r.uniform([120, 90, 50], [220, 190, 150])


def value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8), "L")
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


class Sprites:
    """Canonical RGBA renderings of each individual's flank (facing right), cached per gait pose."""

    def __init__(self, config: SynthConfig):
        self.c = config
        self.w = int(round(config.image_size * 1.6))
        self.h = int(round(self.w * 0.7))
        self.base = _species_colour(config.species)
        self._cache: dict[tuple[int, str, int], Image.Image] = {}
        self._cache_size = max(16, 32_000_000 // (self.w * self.h * 4))  # ~32 MB; images come by individual
        yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self.xx, self.yy = xx, yy

    def get(self, individual: int, viewpoint: str, gait: int) -> Image.Image:
        key = (individual, viewpoint, gait)
        img = self._cache.get(key)
        if img is None:
            img = self._render(individual, viewpoint, gait)
            if viewpoint == "left":  # the left flank is seen with the animal facing left
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = img
        return img

    def _shape(self, individual: int) -> dict:
        r = seeded_rng(self.c.seed, 1, individual)
        return dict(
            length=r.uniform(0.95, 1.05),
            height=r.uniform(0.93, 1.07),
            leg=r.uniform(0.92, 1.08),
            tail=r.uniform(0.85, 1.15),
            tint=r.normal(0, 0.035, 3),
            kind=r.choice(["spots", "stripes", "both"], p=[0.45, 0.25, 0.30]),
            dark=r.uniform(0.85, 0.95),
            size=r.uniform(0.75, 1.25),
        )

    def _silhouette(self, s: dict, gait: int) -> Image.Image:
        w, h = self.w, self.h
        m = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(m)
        cx, cy = 0.47 * w, 0.47 * h
        bw, bh = 0.29 * w * s["length"], 0.16 * h * s["height"]
        d.ellipse([cx - bw, cy - bh, cx + bw, cy + bh], fill=255)
        # neck and head
        hx, hy = cx + bw * 1.12, cy - bh * 1.35
        d.polygon(
            [
                (cx + bw * 0.55, cy - bh * 0.9),
                (hx, hy - 0.05 * h),
                (hx + 0.02 * w, hy + 0.08 * h),
                (cx + bw * 0.8, cy + bh * 0.5),
            ],
            fill=255,
        )
        hr = 0.062 * w
        d.ellipse([hx - hr, hy - hr * 0.9, hx + hr, hy + hr * 0.9], fill=255)
        d.ellipse([hx + hr * 0.4, hy - hr * 0.2, hx + hr * 1.6, hy + hr * 0.65], fill=255)  # muzzle
        for ex in (-0.55, 0.1):  # ears
            ex0 = hx + ex * hr
            d.polygon(
                [(ex0, hy - 0.5 * hr), (ex0 + 0.45 * hr, hy - 1.55 * hr), (ex0 + 0.9 * hr, hy - 0.4 * hr)],
                fill=255,
            )
        # legs: the gait pose swings them a little
        swing = [(-1, 1, 1, -1), (1, -1, -1, 1), (0, 0, 0, 0), (0.5, -0.5, 0.5, -0.5)][gait % 4]
        ground = min(h - 2.0, cy + bh + 0.30 * h * s["leg"])
        for lx, sw in zip((-0.72, -0.48, 0.5, 0.72), swing, strict=True):
            x0 = cx + lx * bw
            top = cy + bh * 0.2
            foot = x0 + sw * 0.045 * w
            lw = 0.026 * w
            d.polygon(
                [(x0 - lw, top), (x0 + lw, top), (foot + lw * 0.7, ground), (foot - lw * 0.7, ground)],
                fill=255,
            )
            d.ellipse([foot - lw, ground - lw * 0.6, foot + lw * 1.3, ground + lw * 0.5], fill=255)
        # tail
        tx, ty = cx - bw * 0.95, cy - bh * 0.3
        tl = 0.2 * w * s["tail"]
        up = [0.3, 0.5, 0.1, 0.4][gait % 4]
        pts = [
            (tx, ty),
            (tx - tl * 0.45, ty + tl * 0.15),
            (tx - tl * 0.8, ty - tl * up * 0.4),
            (tx - tl, ty - tl * up),
        ]
        d.line(pts, fill=255, width=max(2, int(0.022 * w)), joint="curve")
        return m

    def _pattern(self, individual: int, viewpoint: str, s: dict) -> np.ndarray:
        """The flank's coat pattern in [0, 1] over the canvas; left and right are independent draws."""
        w, h = self.w, self.h
        r = seeded_rng(self.c.seed, 3, individual, 0 if viewpoint == "right" else 1)
        pat = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(pat)
        if s["kind"] in ("spots", "both"):
            n = int(r.integers(30, 44)) if s["kind"] == "spots" else int(r.integers(15, 24))
            for _ in range(n):
                x, y = r.uniform(0.08, 0.95) * w, r.uniform(0.15, 0.95) * h
                rad = 0.034 * w * s["size"] * r.uniform(0.6, 1.4)
                ang = r.uniform(0, np.pi)
                ax, ay = rad * r.uniform(1.0, 1.7), rad * r.uniform(0.6, 1.0)
                t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
                px = x + ax * np.cos(t) * np.cos(ang) - ay * np.sin(t) * np.sin(ang)
                py = y + ax * np.cos(t) * np.sin(ang) + ay * np.sin(t) * np.cos(ang)
                d.polygon(list(zip(px.tolist(), py.tolist(), strict=True)), fill=255)
                if s["kind"] == "both" and r.random() < 0.5:  # rosette: a paler centre
                    d.ellipse([x - rad * 0.45, y - rad * 0.45, x + rad * 0.45, y + rad * 0.45], fill=0)
        arr = np.asarray(pat, dtype=np.float32) / 255.0
        if s["kind"] in ("stripes", "both"):
            period = 0.085 * w * s["size"] * r.uniform(0.85, 1.15)
            warp = value_noise(r, h, w, max(8, w // 6)) - 0.5
            tilt = r.uniform(-0.5, 0.5)
            phase = r.uniform(0, 2 * np.pi)
            u = (self.xx + tilt * self.yy + warp * period * 2.4) / period
            width = 0.25 + 0.25 * value_noise(r, h, w, max(8, w // 5))  # stripes thicken and break up
            stripes = (np.cos(2 * np.pi * u + phase) * 0.5 + 0.5) > (1 - width)
            breaks = value_noise(r, h, w, max(6, w // 10)) > r.uniform(0.2, 0.35)
            arr = np.maximum(arr, (stripes & breaks).astype(np.float32))
        return arr

    def _render(self, individual: int, viewpoint: str, gait: int) -> Image.Image:
        s = self._shape(individual)
        w, h = self.w, self.h
        mask = self._silhouette(s, gait)
        pat = self._pattern(individual, viewpoint, s)
        pat = (
            np.asarray(
                Image.fromarray((pat * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8)),
                dtype=np.float32,
            )
            / 255.0
        )
        base = self.base * (1 + s["tint"])
        # shading: belly paler, back darker, so the body reads as round
        v = (self.yy - 0.3 * h) / (0.4 * h)
        shade = (0.82 + 0.3 * np.clip(v, 0, 1) - 0.12 * np.clip(-v, 0, 1))[..., None]
        coat = base[None, None, :] * shade
        dark = np.array([38.0, 28.0, 20.0])
        rgb = coat * (1 - s["dark"] * pat[..., None]) + dark * s["dark"] * pat[..., None]
        # eye and nose
        cx, cy = 0.47 * w, 0.47 * h
        hx, hy = cx + 0.29 * w * s["length"] * 1.12, cy - 0.16 * h * s["height"] * 1.35
        hr = 0.062 * w
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        er = 0.18 * hr
        d.ellipse(
            [hx + 0.2 * hr - er, hy - 0.35 * hr - er, hx + 0.2 * hr + er, hy - 0.35 * hr + er],
            fill=(20, 16, 10),
        )
        d.ellipse([hx + 1.35 * hr, hy - 0.05 * hr, hx + 1.65 * hr, hy + 0.3 * hr], fill=(30, 20, 20))
        img.putalpha(mask.filter(ImageFilter.GaussianBlur(0.6)))
        return img
