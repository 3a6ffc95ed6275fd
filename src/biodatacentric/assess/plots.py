"""Figures for stage 2: the embedding map with a core set highlighted, and patch montages.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot
state, works headless); save them with ``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from .._validation import check_embeddings
from ..data import Patches
from ..data.labels import patch_labels
from .knn import l2_normalize

__all__ = ["embedding_map", "plot_embedding_map", "plot_montage", "plot_coverage_curve", "patch_labels"]

_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def embedding_map(embeddings: Any, method: str = "pca", max_points: int = 20000,
                  keep: Any = None, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of (a subsample of) L2-normalised embeddings.

    Returns ``(rows, coords)``: the sample indices shown (at most ``max_points``, always
    including ``keep``) and their ``(len(rows), 2)`` coordinates from PCA or t-SNE.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(100, 5))
    >>> rows, coords = embedding_map(X, max_points=50, keep=[99])
    >>> rows.shape, coords.shape, bool(99 in rows)
    ((51,), (51, 2), True)
    """
    E = l2_normalize(check_embeddings(embeddings, name="embeddings"))
    n = E.shape[0]
    rng = np.random.default_rng(random_state)
    rows = np.arange(n) if n <= max_points else np.sort(rng.choice(n, max_points, replace=False))
    if keep is not None:
        rows = np.union1d(rows, np.asarray(keep, dtype=np.int64).ravel())
    if method == "pca":
        coords = PCA(n_components=2, random_state=random_state).fit_transform(E[rows])
    elif method == "tsne":
        perplexity = float(min(30.0, max(2.0, (len(rows) - 1) / 3)))
        coords = TSNE(n_components=2, init="pca", perplexity=perplexity,
                      random_state=random_state).fit_transform(E[rows])
    else:
        raise ValueError(f"method={method!r} is not one of 'pca', 'tsne'")
    return rows, np.asarray(coords, dtype=np.float32)


def plot_embedding_map(embeddings: Any, selections: Mapping[str, Any] | Any = None, *,
                       method: str = "pca", flagged: Any = None, max_points: int = 20000,
                       title: str | None = None, groups: Sequence[str] | None = None,
                       random_state: int = 0) -> Figure:
    """Scatter of the embeddings in 2-D (PCA or t-SNE) with core sets highlighted.

    Parameters
    ----------
    embeddings : array (n, d)
    selections : dict name -> indices, or one index array
        Core sets to highlight (e.g. ``{"K-cover": kc.selected_indices_, "k-center": ...}``).
    method : {"pca", "tsne"}
    flagged : bool mask or indices, optional
        Samples drawn as grey crosses (e.g. ``DatasetAuditor.exclude_``).
    max_points : int
        Subsample shown in the background.
    groups : sequence of str, optional
        One label per sample (e.g. the stack each patch comes from, see
        :meth:`Patches.provenance <biodatacentric.Patches.provenance>`): the background points
        are coloured by it, with a legend, so a person sees whether stacks separate and
        whether the core set reaches every one of them.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(100, 5))
    >>> fig = plot_embedding_map(X, {"picks": [0, 1, 2]}, groups=["stack A"] * 60 + ["stack B"] * 40)
    >>> len(fig.axes), [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    (1, ['stack A (60)', 'stack B (40)', 'picks (3)'])
    """
    if selections is None:
        selections = {}
    elif not isinstance(selections, Mapping):
        selections = {"selected": selections}
    sel = {k: np.asarray(v, dtype=np.int64).ravel() for k, v in selections.items()}
    keep = np.concatenate(list(sel.values())) if sel else None
    n = np.asarray(embeddings).shape[0]
    flag_idx = None
    if flagged is not None:
        f = np.asarray(flagged)
        flag_idx = np.flatnonzero(f) if f.dtype == bool else f.astype(np.int64).ravel()
    rows, xy = embedding_map(embeddings, method=method, max_points=max_points, keep=keep,
                             random_state=random_state)
    pos = np.full(n, -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    fig = _new_figure(8.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    if groups is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c="#bbbbbb", alpha=0.5, linewidths=0, label=f"all ({n})")
    else:
        g = np.asarray([str(v) for v in groups], dtype=object)
        if g.shape != (n,):
            raise ValueError(f"groups has {g.size} labels for {n} embeddings; pass one label per sample")
        names = list(dict.fromkeys(g[rows].tolist()))
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        for t, name in enumerate(names):
            on = g[rows] == name
            ax.scatter(xy[on, 0], xy[on, 1], s=4, color=cmap(t % cmap.N), alpha=0.45, linewidths=0,
                       label=f"{name} ({int(np.sum(g == name))})")
    if flag_idx is not None and len(flag_idx):
        fi = pos[flag_idx]
        fi = fi[fi >= 0]
        ax.scatter(xy[fi, 0], xy[fi, 1], s=10, c="#555555", marker="x", linewidths=0.6,
                   label=f"flagged ({len(flag_idx)})")
    markers = ("o", "s", "^", "D", "v", "P")
    for t, (name, idx) in enumerate(sel.items()):
        p = pos[idx]
        ax.scatter(xy[p, 0], xy[p, 1], s=46, facecolors="none", edgecolors=_COLORS[t % len(_COLORS)],
                   marker=markers[t % len(markers)], linewidths=1.6, label=f"{name} ({len(idx)})")
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.set_title(title or "Embedding map")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=2.0, frameon=False)
    fig.tight_layout()
    return fig


def plot_montage(images: Any, indices: Any = None, *, ncols: int = 5,
                 titles: Sequence[str] | None = None, suptitle: str | None = None,
                 vmin: float | None = 0.0, vmax: float | None = 1.0, tile_inches: float = 1.9,
                 colorbar_label: str = "normalised intensity") -> Figure:
    """Grid of patches (a :class:`~biodatacentric.Patches` or an ``(n, h, w)`` array).

    Each tile of a ``Patches`` is titled with its stack and ``z, y, x`` (see
    :func:`patch_labels`); array tiles with their index. ``vmin``/``vmax`` fix the grey scale
    (normalised intensities in [0, 1] by default), so a blank patch looks blank instead of
    being stretched, and one colour bar shows it; pass ``None`` to autoscale each tile (then
    there is no shared colour bar).

    Examples
    --------
    >>> fig = plot_montage(np.random.default_rng(0).random((6, 16, 16)), ncols=3)
    >>> len(fig.axes)            # six tiles and the shared colour bar
    7
    """
    if isinstance(images, Patches):
        idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
        tiles = images.images(idx)
    else:
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 3:
            raise ValueError(f"images must be Patches or an (n, h, w) array, got shape {arr.shape}")
        tiles = arr if indices is None else arr[np.asarray(indices, dtype=np.int64).ravel()]
        idx = np.arange(len(arr)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    n = len(tiles)
    if n == 0:
        raise ValueError("nothing to show: indices is empty")
    if titles is None:
        titles = patch_labels(images, idx) if isinstance(images, Patches) else [f"#{int(i)}" for i in idx]
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    shared_scale = vmin is not None and vmax is not None
    fig = _new_figure(tile_inches * ncols + (0.7 if shared_scale else 0.0),
                      (tile_inches + 0.35) * nrows + (0.4 if suptitle else 0.0))
    axes = []
    for k in range(n):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        im = ax.imshow(tiles[k], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(titles[k], fontsize=7, linespacing=1.1)
        axes.append(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92 if shared_scale else 1, 1))
    if shared_scale:
        cax = fig.add_axes((0.935, 0.15, 0.015, 0.7))
        fig.colorbar(im, cax=cax).set_label(colorbar_label, fontsize=8)
    return fig


def plot_coverage_curve(curves: Mapping[str, Any], *, suggested: Mapping[str, int] | None = None,
                        ylabel: str = "facility-location objective") -> Figure:
    """Objective versus number of picks for one or more selectors (``{name: curve}``).

    ``suggested`` (``{name: K}``) draws a dashed vertical line at that selector's suggested K.

    Examples
    --------
    >>> fig = plot_coverage_curve({"K-cover": [0.5, 0.7, 0.8, 0.85]}, suggested={"K-cover": 3})
    >>> type(fig).__name__, len(fig.axes), len(fig.axes[0].lines)   # the curve and the K line
    ('Figure', 1, 2)
    """
    fig = _new_figure(5.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for t, (name, curve) in enumerate(curves.items()):
        c = np.asarray(curve, dtype=np.float64)
        ax.plot(np.arange(1, len(c) + 1), c, color=_COLORS[t % len(_COLORS)], label=name)
        if suggested and name in suggested:
            k = int(suggested[name])
            ax.axvline(k, color=_COLORS[t % len(_COLORS)], ls="--", lw=0.8)
    ax.set_xlabel("number of picks K")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
