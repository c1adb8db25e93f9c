"""The synthetic survey's options and its population plan: who lives, who is photographed, when, where.

The plan is cheap (no pixels): one :class:`Sighting` per image, in index order, plus one history
row per individual and survey. :mod:`reid.synthetic.scenes` renders the pixels.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from reid.archive import stable_id
from reid.errors import ConfigError

__all__ = ["Plan", "Sighting", "SynthConfig", "individual_name", "plan", "seeded_rng"]


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


def seeded_rng(*key: int) -> np.random.Generator:
    """A generator seeded by a tuple of ints: every draw of the survey is keyed, so reproducible."""
    return np.random.default_rng([abs(int(k)) for k in key])


def plan(config: SynthConfig) -> Plan:
    """Simulate the population and its photographs (no pixels): one :class:`Sighting` per image."""
    c = config
    rng = seeded_rng(c.seed, 0)
    surveys = c.surveys()
    n_total = c.individuals
    alive = list(range(c.individuals))
    # each individual ranges over a couple of neighbouring cameras
    home: dict[int, list[int]] = {}

    def home_of(k: int) -> list[int]:
        if k not in home:
            r = seeded_rng(c.seed, 2, k)
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
