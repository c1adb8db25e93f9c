"""Plots of an embedding space and its retrieval quality, as PNG bytes (matplotlib, no display).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot,
so plotting is thread-safe, leaks no global state and needs no display. Every ``*_png`` function
returns the PNG bytes and, given a path or URI, also writes them there.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid import storage

METHODS = ("auto", "umap", "tsne", "pca")
UNLABELLED = "(unlabelled)"
_MARKERS = "oso^vD<>pP*hX"


def _png(fig: Figure, path: str | None, dpi: int = 110) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = buf.getvalue()
    if path:
        storage.write_bytes(str(path), data)
    return data


def project_2d(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D projection of ``[N, d]`` embeddings and the method used.

    ``auto`` tries UMAP (cosine), then t-SNE, then PCA; tiny sets (N < 5) always use PCA.
    """
    if method not in METHODS:
        raise ValueError(f"projection method {method!r}: choose one of {', '.join(METHODS)}")
    x = _numpy(embeddings)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32), "pca"
    if n < 5:
        return _pca(x), "pca"
    order = ["umap", "tsne", "pca"] if method == "auto" else [method]
    last: Exception | None = None
    for m in order:
        try:
            if m == "umap":
                return _umap(x, seed), "umap"
            if m == "tsne":
                return _tsne(x, seed), "tsne"
            return _pca(x), "pca"
        except Exception as e:  # noqa: BLE001 - a failed projection falls back to the next one
            last = e
    raise RuntimeError(f"2-D projection with {method} failed: {last}") from last


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap  # slow import (numba); only when asked for

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_components=2, n_neighbors=min(15, len(x) - 1), min_dist=0.1, metric="cosine", random_state=seed
        )
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed)
    return np.asarray(tsne.fit_transform(x), dtype=np.float32)


def _pca(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2), np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out.astype(np.float32)


def top_labels(labels: Sequence[str | None], top: int) -> list[str]:
    """The ``top`` most frequent labels (ties broken by name), unlabelled excluded."""
    counts = Counter(lbl for lbl in labels if lbl is not None)
    return [lbl for lbl, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def embedding_map_png(
    embeddings: np.ndarray,
    labels: Sequence[str | None],
    path: str | None = None,
    top: int = 20,
    method: str = "auto",
    title: str | None = None,
    seed: int = 0,
    xy: np.ndarray | None = None,
) -> bytes:
    """A 2-D map of the embeddings, the ``top`` largest individuals in colour, the rest in grey.

    Cheap enough to call once per training epoch (UMAP compiles on its first call only).
    Pass ``xy`` to reuse a projection. Returns PNG bytes (also written to ``path`` if given).
    """
    embeddings = _numpy(embeddings)
    labels = ["" if lbl is None else str(lbl) for lbl in _list(labels)]
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    used = method
    if xy is None:
        xy, used = project_2d(embeddings, method=method, seed=seed)
    shown = top_labels([lbl or None for lbl in labels], top)
    fig = Figure(figsize=(8.4, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    lab = np.array(labels, dtype=object)
    rest = ~np.isin(lab, shown)
    if rest.any():
        n_other = len({lbl for lbl in lab[rest] if lbl})
        name = f"other ({n_other} individuals)" if n_other else UNLABELLED
        ax.scatter(xy[rest, 0], xy[rest, 1], s=10, c="#c8c8c8", alpha=0.6, linewidths=0, label=name)
    cmap = _colours(len(shown))
    for i, lbl in enumerate(shown):
        sel = lab == lbl
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            s=26,
            color=cmap[i],
            marker=_MARKERS[(i // 20) % len(_MARKERS)],
            edgecolors="white",
            linewidths=0.4,
            label=f"{lbl} ({int(sel.sum())})",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    n_ind = len({lbl for lbl in labels if lbl})
    ax.set_title(title or f"{len(labels)} embeddings, {n_ind} individuals ({used.upper()})", fontsize=10)
    if len(shown) or rest.any():
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            frameon=False,
            title=f"top {len(shown)} individuals",
            title_fontsize=8,
        )
    return _png(fig, path)


def _numpy(x) -> np.ndarray:
    """A float32 array from a numpy array or a (CPU/GPU, grad or not) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _list(labels) -> list:
    if hasattr(labels, "detach"):
        return labels.detach().cpu().tolist()
    return list(labels.tolist() if isinstance(labels, np.ndarray) else labels)


def _colours(n: int) -> list:
    """Up to 20 distinct colours (tab20 without its greys, which mean "other" here), then repeated."""
    from matplotlib import colormaps

    tab20, tab20b = colormaps["tab20"], colormaps["tab20b"]
    palette = [tab20(i) for i in range(20) if i not in (14, 15)] + [tab20b(0), tab20b(8)]
    return [palette[i % len(palette)] for i in range(n)]


def accuracy_curve_png(
    accuracy_at_k: Mapping[int, float], path: str | None = None, title: str | None = None
) -> bytes:
    """Accuracy@k against k (the share of queries whose individual is among the top k)."""
    ks = sorted(int(k) for k in accuracy_at_k)
    vals = [float(accuracy_at_k[k]) for k in ks]
    fig = Figure(figsize=(5.6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ks, vals, marker="o", ms=3.5, color="#1f77b4")
    for k in (1, 5, 10):
        if k in accuracy_at_k:
            ax.annotate(
                f"{accuracy_at_k[k]:.3f}",
                (k, accuracy_at_k[k]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
            )
    ax.set_xlabel("k")
    ax.set_ylabel("accuracy@k")
    ax.set_ylim(0, 1.02)
    if ks:
        ax.set_xlim(0.5, ks[-1] + 0.5)
    ax.grid(alpha=0.3)
    ax.set_title(title or "accuracy@k", fontsize=10)
    return _png(fig, path)


def score_histogram_png(
    same: np.ndarray,
    different: np.ndarray,
    threshold: float | None = None,
    path: str | None = None,
    title: str | None = None,
) -> bytes:
    """Densities of query-candidate similarities for the same vs different individuals."""
    same = np.asarray(same, dtype=np.float64)
    different = np.asarray(different, dtype=np.float64)
    both = np.concatenate([same, different]) if len(same) + len(different) else np.array([-1.0, 1.0])
    lo, hi = float(both.min()), float(both.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 60)
    fig = Figure(figsize=(5.6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for values, colour, what in (
        (different, "#d62728", "different individuals"),
        (same, "#2ca02c", "same individual"),
    ):
        if len(values):
            ax.hist(
                values, bins=bins, density=True, alpha=0.55, color=colour, label=f"{what} (n={len(values)})"
            )
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "similarity: same vs different individuals", fontsize=10)
    return _png(fig, path)


__all__ = [
    "METHODS",
    "accuracy_curve_png",
    "embedding_map_png",
    "project_2d",
    "score_histogram_png",
    "top_labels",
]
