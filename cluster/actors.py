"""Actor layouts sized from the connected Ray cluster's resources (an actor lives on one node)."""

from __future__ import annotations

import ray

from reid.errors import ConfigError

__all__ = ["embed_actors"]


def embed_actors(
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    threads: int | None = None,
    decode_cpus: float = 1.0,
    inline_decode: bool | None = None,
) -> dict:
    """The actor layout of `reid embed` on the connected cluster (None = chosen from its resources):
    actors, CPUs/GPUs and torch threads per actor, and whether actors decode their own units."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    gpa = gpus_per_actor if gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    inline = inline_decode if inline_decode is not None else gpa == 0
    # An actor lives on one node: never ask for more CPUs than the biggest node has.
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=cpus)
    if gpa > 0:
        actors = actors or max(1, int(gpus // gpa))
        cpa = cpus_per_actor or 1.0
    elif inline:
        # CPU-only: one actor per `threads` CPUs, decoding and embedding its own units (at most
        # 16 actors by default: big nodes give each actor more threads instead of more copies).
        threads = threads or max(1, int(cpus // 16))
        cpa = cpus_per_actor or float(min(threads, node_cpus))
        actors = actors or max(1, int(cpus // cpa))
    else:
        # CPU inference fed by decode actors: few actors, several threads each.
        actors = actors or max(1, int(cpus // 8))
        cpa = cpus_per_actor or max(0.5, min(4.0, node_cpus, (cpus - decode_cpus) / actors))
    threads = threads or max(1, int(round(cpus / actors)))
    decoding = 0.0 if inline else decode_cpus
    if actors * cpa + decoding > cpus + 1e-9:
        raise ConfigError(
            f"{actors} actor(s) x {cpa} CPU + {decoding} CPU per decode actor needs more than the "
            f"cluster's {cpus:g} CPUs: some would never start; lower --actors or --cpus-per-actor"
        )
    return {
        "actors": actors,
        "cpus_per_actor": cpa,
        "gpus_per_actor": gpa,
        "threads": threads,
        "inline_decode": inline,
        "cluster_cpus": cpus,
        "cluster_gpus": gpus,
    }
