"""A P x K batch sampler (P individuals x K images each) that works across distributed workers.

Every worker builds the same global plan from ``(seed, epoch)`` with no communication, then takes
its own slice: at each step the global batch holds ``P * num_replicas`` *distinct* individuals,
and worker ``rank`` gets individuals ``[rank * P, (rank + 1) * P)`` of them. Positives are thus
always local (K images of each individual on the same worker) while negatives come from every
worker once embeddings are gathered. All workers yield the same number of batches, which DDP's
collectives require. Individuals are visited in reshuffled passes and each individual's images in
reshuffled cycles, so an epoch sees every image about once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reid.errors import ConfigError


class PKSampler(Sampler[list[int]]):
    """Yields lists of ``P * K`` dataset indices (this worker's share of each global batch).

    ``labels[i]`` is the individual of dataset item ``i``. An individual with fewer than K images
    fills its K slots by repeating images (each repeat gets its own augmentation).
    ``steps_per_epoch`` defaults to the number of images over the global batch size.
    """

    def __init__(
        self,
        labels: Sequence[Hashable],
        p: int,
        k: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ):
        if p < 1 or k < 1:
            raise ConfigError(f"P x K sampler: p={p} and k={k} must be at least 1")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"P x K sampler: rank {rank} outside 0..{num_replicas - 1}")
        _, codes = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
        self.members = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1 if len(codes) else 0)]
        self.p, self.k, self.num_replicas, self.rank, self.seed = p, k, num_replicas, rank, seed
        self.global_ids = p * num_replicas
        if len(self.members) < self.global_ids:
            raise ConfigError(
                f"P x K sampler: {len(self.members)} individuals cannot fill {p} individuals per batch on "
                f"{num_replicas} worker(s) ({self.global_ids} distinct per step); lower p or the workers"
            )
        batch = self.global_ids * k
        self.steps = int(steps_per_epoch) if steps_per_epoch else max(1, len(codes) // batch)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the same on every worker, so plans agree)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def _plan(self) -> Iterator[list[list[int]]]:
        """The global plan: per step, P * replicas lists of K indices (identical on all workers)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_ids = len(self.members)
        queue: list[int] = []
        cycles: dict[int, list[int]] = {}
        for _ in range(self.steps):
            chosen: list[int] = []
            taken: set[int] = set()
            deferred: list[int] = []
            while len(chosen) < self.global_ids:
                if not queue:
                    queue = rng.permutation(n_ids).tolist()
                i = queue.pop()
                if i in taken:  # the next pass began mid-step: keep it for the following step
                    deferred.append(i)
                    continue
                taken.add(i)
                chosen.append(i)
            queue.extend(reversed(deferred))
            yield [self._take(i, rng, cycles) for i in chosen]

    def _take(self, ident: int, rng: np.random.Generator, cycles: dict[int, list[int]]) -> list[int]:
        members = self.members[ident]
        if len(members) < self.k:
            extra = rng.choice(members, size=self.k - len(members), replace=True)
            return rng.permutation(np.concatenate([members, extra])).tolist()
        cycle = cycles.setdefault(ident, [])
        out: list[int] = []
        while len(out) < self.k:
            if not cycle:  # a new cycle; images already in this take are popped last
                perm = rng.permutation(members).tolist()
                cycle.extend(sorted(perm, key=lambda j: j not in out))
            out.append(cycle.pop())
        return out

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.p, (self.rank + 1) * self.p
        for groups in self._plan():
            yield [j for g in groups[lo:hi] for j in g]
