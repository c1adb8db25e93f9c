"""Training's rows: identity-disjoint train and validation rows, and the class of each training row.

From a ``reid split`` table (train rows; validation = test rows of individuals unseen in train) or,
without one, a deterministic hold-out of whole individuals chosen by hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid.data.labels import images_per_individual, labeled
from reid.data.splits import split_assignment
from reid.errors import ConfigError

__all__ = ["Split", "class_keys", "holdout_individuals", "make_split"]


def _unit_hash(text: str, seed: int) -> float:
    h = hashlib.sha1(f"{seed}\x1f{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def holdout_individuals(table: pa.Table, fraction: float, seed: int = 0, min_images: int = 2) -> set[str]:
    """A deterministic identity-disjoint hold-out: about ``fraction`` of the individuals with at
    least ``min_images`` images (a singleton cannot be retrieved leave-one-out), chosen by hash."""
    counts = images_per_individual(table)
    eligible = sorted(i for i, n in counts.items() if n >= min_images)
    if fraction <= 0 or not eligible:
        return set()
    n = max(1, int(round(fraction * len(eligible))))
    return set(sorted(eligible, key=lambda i: _unit_hash(i, seed))[:n])


@dataclass
class Split:
    """Training and validation rows; training rows carry a class (``keys``, codes = index in ``classes``)."""

    train: pa.Table
    val: pa.Table
    source: str  # "auto:<fraction>" or the split URI
    classes: list[str] = field(default_factory=list)  # training classes, in code order
    keys: list[str] = field(default_factory=list)  # the class of each training row
    dropped_singletons: int = 0  # classes left out for having too few training images

    def codes(self) -> dict[str, int]:
        """image_id -> class code of every training row."""
        index = {c: i for i, c in enumerate(self.classes)}
        return {
            iid: index[k] for iid, k in zip(self.train.column("image_id").to_pylist(), self.keys, strict=True)
        }


def class_keys(table: pa.Table, by_viewpoint: bool) -> list[str]:
    """The training class of each row: the individual, or individual + viewpoint when
    ``by_viewpoint`` (left and right flanks of one animal carry different patterns, so a pair of
    opposite flanks teaches the network nothing it can see). Rows without a viewpoint keep the
    individual alone."""
    inds = table.column("individual_id").to_pylist()
    if not by_viewpoint:
        return inds
    views = table.column("viewpoint").to_pylist()
    return [f"{i}|{v}" if v else i for i, v in zip(inds, views, strict=True)]


def make_split(
    table: pa.Table,
    split_uri: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_train_images: int = 1,
    by_viewpoint: bool = False,
) -> Split:
    """Split labelled rows into train/val, identity-disjoint (from a `reid split` output or by hash).

    ``min_train_images``: training classes with fewer images are dropped from training (pair
    losses need 2) and counted in ``dropped_singletons``. Validation always matches individuals.
    """
    table = labeled(table)
    if split_uri:
        # Train on the split's train rows; validate on its test rows of individuals unseen in train
        # (an identity split holds only those; open/closed splits also hold known individuals). A
        # closed split has none: training then runs without validation and keeps its last epoch;
        # score it with `reid evaluate --protocol split` (test photos against the train photos).
        assignment = split_assignment(split_uri)
        names = np.array([assignment.get(i, "") for i in table.column("image_id").to_pylist()])
        if not (names != "").any():
            raise ConfigError(f"split {split_uri}: names none of this archive's images; split this archive")
        train = table.filter(pa.array(names == "train"))
        test = table.filter(pa.array(names == "test"))
        seen = pa.array(sorted(set(train.column("individual_id").to_pylist())), pa.string())
        val = test.filter(pc.invert(pc.is_in(test.column("individual_id"), seen)))
        source = split_uri
    else:
        held = holdout_individuals(table, val_fraction, seed)
        mask = pc.is_in(table.column("individual_id"), pa.array(sorted(held), pa.string()))
        train, val, source = table.filter(pc.invert(mask)), table.filter(mask), f"auto:{val_fraction}"
    keys = class_keys(train, by_viewpoint)
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    classes = sorted(k for k, n in counts.items() if n >= min_train_images)
    dropped = len(counts) - len(classes)
    if dropped:
        keep = set(classes)
        mask = [k in keep for k in keys]
        train = train.filter(pa.array(mask))
        keys = [k for k in keys if k in keep]
    return Split(train=train, val=val, source=source, classes=classes, keys=keys, dropped_singletons=dropped)
