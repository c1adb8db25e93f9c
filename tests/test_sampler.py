"""The distributed P x K sampler: shapes, disjoint workers, coverage, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from reid.data.sampler import PKSampler
from reid.errors import ConfigError


def _labels():
    # 12 individuals with 1..8 images each
    return [f"id{i}" for i in range(12) for _ in range(1 + i % 8)]


def test_batches_hold_p_individuals_of_k_images():
    labels = _labels()
    s = PKSampler(labels, p=3, k=4, seed=1)
    assert len(s) == len(labels) // 12
    for batch in s:
        assert len(batch) == 12
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
        for ident in counts:  # distinct images whenever the individual has enough
            mine = [i for i in batch if labels[i] == ident]
            if labels.count(ident) >= 4:
                assert len(set(mine)) == 4


def test_workers_agree_and_split_individuals():
    labels = _labels()
    workers = [PKSampler(labels, p=2, k=2, num_replicas=3, rank=r, seed=7) for r in range(3)]
    for w in workers:
        w.set_epoch(5)
    assert len({len(w) for w in workers}) == 1
    for batches in zip(*workers, strict=True):
        ids = [{labels[i] for i in b} for b in batches]
        assert all(len(x) == 2 for x in ids)
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = PKSampler(labels, p=2, k=2, num_replicas=3, rank=1, seed=7)
    again.set_epoch(5)
    assert list(again) == list(workers[1])
    again.set_epoch(6)
    assert list(again) != list(workers[1])


def test_an_epoch_covers_individuals_and_images():
    labels = [f"id{i}" for i in range(10) for _ in range(4)]
    s = PKSampler(labels, p=5, k=4, steps_per_epoch=4)
    seen = Counter(i for b in s for i in b)
    assert set(seen) == set(range(40)) and set(seen.values()) == {2}


def test_too_few_individuals_is_named():
    with pytest.raises(ConfigError, match="lower p"):
        PKSampler(["a", "a", "b", "b"], p=2, k=2, num_replicas=2)
