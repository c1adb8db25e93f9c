"""A synthetic open-population camera-trap survey: the project's demo and test data.

Each individual carries its own coat (spots and/or stripes drawn from a per-individual seed) on a
four-legged silhouette; the left and right flanks have independent patterns and the animal faces
the other way. The population lives through several yearly surveys (survival, recruitment,
imperfect detection) and is photographed in camera bursts (frames seconds apart, same camera,
tiny pose changes). Every sighting varies pose, scale, lighting, blur, noise, occlusion by
vegetation and background, so an untrained network cannot match individuals but the coat
pattern still identifies them. Output rows follow ``reid.schema.ARCHIVE_SCHEMA``.

Everything is a pure function of :class:`SynthConfig` (same seed, same bytes). The population is
planned first (cheap, no pixels), then each image is rendered from its own seeded generator, so a
caller can render only the images it still needs.

Ground truth next to an archive (names starting with ``_`` are not archive data):
``_truth.parquet`` (one row per image: true individual, burst, ...) and ``_truth_history.parquet``
(one row per individual and survey: alive, seen, images). :func:`truth_capture_history` turns the
latter into the individual x survey 0/1 table a capture-recapture check compares against.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

from reid import storage
from reid.archive import stable_id
from reid.errors import ConfigError, ReidError

TRUTH = "_truth.parquet"
TRUTH_HISTORY = "_truth_history.parquet"

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("individual_id", pa.string(), nullable=False),  # the true id, also for unlabeled rows
        pa.field("labeled", pa.bool_(), nullable=False),  # False where the archive has null
        pa.field("burst_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),  # position within the burst
        pa.field("survey", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("viewpoint", pa.string(), nullable=False),
        pa.field("captured_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("wide", pa.bool_(), nullable=False),  # animal placed in a bigger frame
    ]
)

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("individual_id", pa.string(), nullable=False),
        pa.field("survey", pa.string(), nullable=False),
        pa.field("alive", pa.int8(), nullable=False),
        pa.field("seen", pa.int8(), nullable=False),  # photographed at least once (labeled or not)
        pa.field("n_images", pa.int32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Population dynamics are per survey year; pixels are per image."""

    individuals: int = 50  # initial population
    years: int = 3
    images_per_individual: float = 8.0  # mean images per seen individual per survey
    image_size: int = 128
    seed: int = 0
    species: str = "synthetic-cat"
    unlabeled_fraction: float = 0.1
    first_year: int = 2021
    survival: float = 0.8  # probability an individual lives on to the next survey
    recruitment: float = 0.2  # new individuals per survey, per individual alive the year before
    detection: float = 0.9  # probability a living individual is photographed in a survey
    burst_mean: float = 2.5  # mean frames per camera burst
    cameras: int = 8
    wide_fraction: float = 0.25  # images where the animal sits in a bigger frame (bbox crop matters)

    def __post_init__(self) -> None:
        checks = [
            (self.individuals >= 1, "individuals must be at least 1"),
            (self.years >= 1, "years must be at least 1"),
            (self.images_per_individual >= 1, "images per individual must be at least 1"),
            (32 <= self.image_size <= 1024, "image size must be between 32 and 1024 pixels"),
            (0 <= self.unlabeled_fraction < 1, "unlabeled fraction must be in [0, 1)"),
            (0 < self.survival <= 1, "survival must be in (0, 1]"),
            (self.recruitment >= 0, "recruitment must be >= 0"),
            (0 < self.detection <= 1, "detection must be in (0, 1]"),
            (self.burst_mean >= 1, "burst mean must be at least 1 frame"),
            (self.cameras >= 1, "cameras must be at least 1"),
            (0 <= self.wide_fraction <= 1, "wide fraction must be in [0, 1]"),
            (bool(self.species.strip()), "species must not be empty"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"synthetic survey: {msg}")

    def surveys(self) -> list[str]:
        return [str(self.first_year + y) for y in range(self.years)]


@dataclass(frozen=True)
class Sighting:
    """One planned image: everything but its pixels."""

    index: int
    image_id: str
    individual: int  # population index (stable across surveys)
    individual_id: str
    labeled: bool
    survey: str
    burst: int  # global burst index
    burst_id: str
    frame: int
    camera_id: str
    viewpoint: str  # "left" or "right"
    captured_at: dt.datetime
    wide: bool
    night: bool
    source: str


@dataclass
class Plan:
    """The planned survey: images in index order, plus who was alive/seen in which survey."""

    config: SynthConfig
    sightings: list[Sighting]
    history: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sightings)


def individual_name(seed: int, k: int) -> str:
    return f"synth{seed}-{k:05d}"


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(k)) for k in key])


# --------------------------------------------------------------------------- population plan


def plan(config: SynthConfig) -> Plan:
    """Simulate the population and its photographs (no pixels): one :class:`Sighting` per image."""
    c = config
    rng = _rng(c.seed, 0)
    surveys = c.surveys()
    n_total = c.individuals
    alive = list(range(c.individuals))
    # each individual ranges over a couple of neighbouring cameras
    home: dict[int, list[int]] = {}

    def home_of(k: int) -> list[int]:
        if k not in home:
            r = _rng(c.seed, 2, k)
            first = int(r.integers(c.cameras))
            home[k] = sorted({first, (first + 1) % c.cameras, (first + int(r.integers(2, 4))) % c.cameras})
        return home[k]

    raw: list[dict] = []
    yearly: list[tuple[str, set[int], dict[int, int]]] = []
    ever: set[int] = set()
    burst = 0
    for y, survey in enumerate(surveys):
        if y > 0:
            prev = len(alive)
            alive = [k for k in alive if rng.random() < c.survival]
            recruits = int(rng.poisson(c.recruitment * prev))
            alive += list(range(n_total, n_total + recruits))
            n_total += recruits
        year = c.first_year + y
        season_start = dt.datetime(year, 3, 1, tzinfo=dt.timezone.utc)
        season_days = 240  # March to October
        alive_set = set(alive)
        ever.update(alive)
        counts: dict[int, int] = {}
        for k in alive:
            if rng.random() >= c.detection:
                continue
            n = 1 + int(rng.poisson(c.images_per_individual - 1))
            counts[k] = n
            cams = home_of(k)
            day = None
            while n > 0:
                size = min(n, 1 + min(5, int(rng.poisson(c.burst_mean - 1))))
                n -= size
                # a later burst may fall on the same day (same-day sightings, a leak risk for splits)
                if day is None or rng.random() > 0.3:
                    day = int(rng.integers(season_days))
                cam = (
                    cams[int(rng.integers(len(cams)))]
                    if rng.random() < 0.85
                    else int(rng.integers(c.cameras))
                )
                night = bool(rng.random() < 0.2)  # camera traps fire day and night; night frames are IR
                seconds = int(
                    rng.integers(21 * 3600, 28 * 3600) if night else rng.integers(6 * 3600, 20 * 3600)
                )
                start = season_start + dt.timedelta(days=day, seconds=seconds)
                view = "left" if rng.random() < 0.5 else "right"
                wide = bool(rng.random() < c.wide_fraction)  # the framing is the burst's
                t = start
                for f in range(size):
                    raw.append(
                        dict(
                            individual=k,
                            survey=survey,
                            burst=burst,
                            frame=f,
                            camera=cam,
                            viewpoint=view,
                            captured_at=t,
                            night=night,
                            wide=wide,
                        )
                    )
                    t = t + dt.timedelta(seconds=int(rng.integers(1, 4)))
                burst += 1
        yearly.append((survey, alive_set, counts))
    history = [
        dict(
            individual_id=individual_name(c.seed, k),
            survey=survey,
            alive=int(k in alive_set),
            seen=int(k in counts),
            n_images=counts.get(k, 0),
        )
        for survey, alive_set, counts in yearly
        for k in sorted(ever)
    ]
    n = len(raw)
    unlabeled = (
        set(rng.choice(n, size=int(round(c.unlabeled_fraction * n)), replace=False).tolist()) if n else set()
    )
    sightings = []
    for i, r in enumerate(raw):
        cam_id = f"cam-{r['camera'] + 1:02d}"
        sightings.append(
            Sighting(
                index=i,
                image_id=stable_id("synth", str(c.seed), str(i)),
                individual=r["individual"],
                individual_id=individual_name(c.seed, r["individual"]),
                labeled=i not in unlabeled,
                survey=r["survey"],
                burst=r["burst"],
                burst_id=f"synth{c.seed}-b{r['burst']:06d}",
                frame=r["frame"],
                camera_id=cam_id,
                viewpoint=r["viewpoint"],
                captured_at=r["captured_at"],
                wide=r["wide"],
                night=r["night"],
                source=f"synth://{c.seed}/{r['survey']}/{cam_id}/{i:07d}.jpg",
            )
        )
    return Plan(c, sightings, history)


# --------------------------------------------------------------------------- appearance


def _species_colour(species: str) -> np.ndarray:
    """A coat base colour per species name (tawny for the default), so species look different."""
    if species == "synthetic-cat":
        return np.array([196.0, 150.0, 92.0])
    h = int(hashlib.sha1(species.encode()).hexdigest()[:8], 16)
    r = _rng(h)
    return r.uniform([120, 90, 50], [220, 190, 150])


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8), "L")
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


class _Sprites:
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
        r = _rng(self.c.seed, 1, individual)
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
        r = _rng(self.c.seed, 3, individual, 0 if viewpoint == "right" else 1)
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
            warp = _value_noise(r, h, w, max(8, w // 6)) - 0.5
            tilt = r.uniform(-0.5, 0.5)
            phase = r.uniform(0, 2 * np.pi)
            u = (self.xx + tilt * self.yy + warp * period * 2.4) / period
            width = 0.25 + 0.25 * _value_noise(r, h, w, max(8, w // 5))  # stripes thicken and break up
            stripes = (np.cos(2 * np.pi * u + phase) * 0.5 + 0.5) > (1 - width)
            breaks = _value_noise(r, h, w, max(6, w // 10)) > r.uniform(0.2, 0.35)
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


# --------------------------------------------------------------------------- scenes

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
        horizon = rng.uniform(0.2, 0.7) + 0.08 * (_value_noise(rng, 1, w, max(4, w // 4))[0] - 0.5)
        top = (t < horizon[None, :]).astype(np.float32)
        g = _value_noise(rng, h, w, max(4, w // 12))[..., None]
        img = top[..., None] * (cols[0] * (0.8 + 0.4 * g)) + (1 - top[..., None]) * (
            cols[1] * (0.7 + 0.6 * g)
        )
    else:  # multi-octave mottled vegetation
        n = (
            0.5 * _value_noise(rng, h, w, max(4, w // 4))
            + 0.3 * _value_noise(rng, h, w, max(3, w // 12))
            + 0.2 * _value_noise(rng, h, w, 3)
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
    r = _rng(c.seed, 4, sgt.burst)
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


def render(c: SynthConfig, sgt: Sighting, sprites: _Sprites | None = None) -> tuple[bytes, dict, int, int]:
    """Render one planned sighting: (JPEG bytes, tight bbox dict, width, height)."""
    sprites = sprites or _Sprites(c)
    scene = _burst_scene(c, sgt, sprites.w)
    fw, fh = scene["size"]
    p: _Pose = scene["pose"]
    fr = _rng(c.seed, 5, sgt.index)  # frame-level jitter: tiny pose changes within the burst
    pose = _Pose(
        p.angle + fr.normal(0, 1.5),
        p.scale * fr.uniform(0.98, 1.02),
        p.squash,
        p.shear,
        p.cx + fr.normal(0, 0.015 * fw),
        p.cy + fr.normal(0, 0.01 * fh),
        (p.gait + (sgt.frame if fr.random() < 0.5 else 0)) % 4,
    )
    br = _rng(scene["rng_seed"])
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
        dapple = _value_noise(br, fh, fw, max(4, fw // 10))
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


# --------------------------------------------------------------------------- rows and truth


def archive_row(c: SynthConfig, sgt: Sighting, sprites: _Sprites | None = None) -> dict:
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
    sprites = _Sprites(config)
    for sgt in p.sightings:
        if sgt.image_id not in skip:
            yield archive_row(config, sgt, sprites)


def truth_table(survey_plan: Plan) -> pa.Table:
    """One row per image: the true individual (also where the archive has null), burst, frame..."""
    rows = [
        {
            "image_id": s.image_id,
            "individual_id": s.individual_id,
            "labeled": s.labeled,
            "burst_id": s.burst_id,
            "frame": s.frame,
            "survey": s.survey,
            "camera_id": s.camera_id,
            "viewpoint": s.viewpoint,
            "captured_at": s.captured_at,
            "wide": s.wide,
        }
        for s in survey_plan.sightings
    ]
    return pa.Table.from_pylist(rows, schema=TRUTH_SCHEMA)


def history_table(survey_plan: Plan) -> pa.Table:
    """One row per individual ever alive and survey: alive, seen (0/1), images taken."""
    return pa.Table.from_pylist(survey_plan.history, schema=HISTORY_SCHEMA)


def config_metadata(config: SynthConfig) -> dict[bytes, bytes]:
    """Parquet metadata recording the generator options (a resumed run must match them)."""
    return {b"reid.synth.config": json.dumps(asdict(config), sort_keys=True).encode()}


def write_truth(out: str, survey_plan: Plan) -> tuple[str, str]:
    """Write ``_truth.parquet`` and ``_truth_history.parquet`` next to the archive (atomic each)."""
    meta = config_metadata(survey_plan.config)
    t = truth_table(survey_plan)
    h = history_table(survey_plan)
    a, b = storage.join(out, TRUTH), storage.join(out, TRUTH_HISTORY)
    storage.write_parquet(t.replace_schema_metadata(meta), a)
    storage.write_parquet(h.replace_schema_metadata(meta), b)
    return a, b


def truth_config(out_uri: str) -> dict | None:
    """The generator options recorded in an existing ``_truth.parquet`` (None when there is none)."""
    uri = storage.join(out_uri, TRUTH)
    if not storage.exists(uri):
        return None
    fs, path = storage.resolve(uri)
    meta = pq.read_schema(path, filesystem=fs).metadata or {}
    raw = meta.get(b"reid.synth.config")
    return json.loads(raw) if raw else None


def read_truth(out_uri: str) -> pa.Table:
    """The per-image ground truth of a synthetic archive."""
    uri = storage.join(out_uri, TRUTH)
    if not storage.exists(uri):
        raise ReidError(f"{out_uri}: no {TRUTH}; only archives made by `reid synth` carry ground truth")
    return storage.read_parquet(uri)


def truth_capture_history(out_uri: str, seen_only: bool = True) -> pa.Table:
    """The true capture history: ``individual_id`` plus one int8 0/1 column per survey (seen).

    ``seen_only`` keeps individuals photographed at least once (what any analysis of the
    archive can know about); otherwise individuals alive but never photographed are included.
    """
    uri = storage.join(out_uri, TRUTH_HISTORY)
    if not storage.exists(uri):
        raise ReidError(
            f"{out_uri}: no {TRUTH_HISTORY}; only archives made by `reid synth` carry ground truth"
        )
    long = storage.read_parquet(uri).to_pylist()
    surveys = sorted({r["survey"] for r in long})
    seen: dict[str, dict[str, int]] = {}
    for r in long:
        seen.setdefault(r["individual_id"], {})[r["survey"]] = int(r["seen"])
    ids = sorted(i for i, s in seen.items() if not seen_only or any(s.values()))
    cols = {"individual_id": pa.array(ids, pa.string())}
    for s in surveys:
        cols[s] = pa.array([seen[i].get(s, 0) for i in ids], pa.int8())
    return pa.table(cols)


__all__ = [
    "HISTORY_SCHEMA",
    "TRUTH",
    "TRUTH_HISTORY",
    "TRUTH_SCHEMA",
    "Plan",
    "Sighting",
    "SynthConfig",
    "archive_row",
    "generate",
    "history_table",
    "plan",
    "read_truth",
    "render",
    "truth_capture_history",
    "truth_table",
    "write_truth",
]
