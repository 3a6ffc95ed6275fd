"""The critical-patch figure of :meth:`~biodatacentric.MCDropoutHunter.plot` (matplotlib,
imported only when drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write
from ..data import Patches
from .uncertainty import get_measure

__all__: list[str] = []


def plot_critical(hunter: Any, patches: Patches | np.ndarray, indices: Any = None, path: str | Path = "critical.png",
         measure: str | None = None) -> Path:
    """The figure of :meth:`MCDropoutHunter.plot` (see there)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hunter._check_is_fitted()
    patches = hunter._as_patches(patches)
    idx = np.arange(len(patches)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        raise ValueError("indices is empty: nothing to plot")
    if idx.size > 50:
        raise ValueError(f"{idx.size} patches asked; plot at most 50 at a time")
    key = get_measure(measure or hunter.measure)
    sub = patches[idx]
    maps = hunter.uncertainty_maps(sub)
    images = sub.images()
    prov = sub.provenance()
    fig = Figure(figsize=(10.5, 3 * len(idx)), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(idx), 3, squeeze=False)
    vmax = float(np.percentile(maps[key], 99.5)) or 1e-6
    plain = key.replace("_", " ")
    for r, i in enumerate(idx):
        img = images[r]
        score = f", score {hunter.scores_[i]:.3g}" if indices is not None and i < len(hunter.scores_) else ""
        im = axes[r, 0].imshow(img, cmap="gray")
        axes[r, 0].set_title(f"{Path(str(prov.source[r])).stem}, z {int(prov.z[r])}, y {int(prov.y[r])}, "
                             f"x {int(prov.x[r])}{score}", fontsize=8)
        fig.colorbar(im, ax=axes[r, 0], fraction=0.046, pad=0.02).set_label("intensity", fontsize=7)
        pm = axes[r, 1].imshow(maps["mean_probability"][r], cmap="viridis", vmin=0, vmax=1)
        axes[r, 1].set_title("model's vessel probability", fontsize=8)
        fig.colorbar(pm, ax=axes[r, 1], fraction=0.046, pad=0.02).set_label("probability", fontsize=7)
        axes[r, 2].imshow(img, cmap="gray")
        u = np.clip(maps[key][r] / vmax, 0, 1)
        um = axes[r, 2].imshow(u, cmap="inferno", alpha=0.7 * u, vmin=0, vmax=1)
        axes[r, 2].set_title(f"where the model is unsure ({plain})", fontsize=8)
        cb = fig.colorbar(um, ax=axes[r, 2], fraction=0.046, pad=0.02)
        cb.solids.set_alpha(1)
        cb.set_label(f"uncertainty / {vmax:.2g} (99.5th percentile)", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
