"""A PNG grid of MAE reconstructions, for a person to check pretraining by eye."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import atomic_write

__all__ = ["save_reconstruction_grid", "reconstruction_grid"]

_ROWS = ("original", "masked input", "reconstruction", "reconstruction + visible")


def reconstruction_grid(original: np.ndarray, masked: np.ndarray, recon: np.ndarray, mask: np.ndarray,
                        pad: int = 2) -> np.ndarray:
    """Tile ``n`` examples into a ``(4*(s+pad), n*(s+pad))`` float image in [0, 1].

    Rows: original, masked input (hidden patches dimmed to the background), reconstruction,
    reconstruction with the visible patches pasted back. Every column is scaled by the
    0.5 and 99.5 percentiles of its original.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> original, _ = make_vessels((3, 32, 32), random_state=0)   # 3 examples of 32x32
    >>> mask = np.zeros_like(original)
    >>> mask[:, :16] = 1                                          # top half hidden
    >>> grid = reconstruction_grid(original, original * (1 - mask), original, mask)
    >>> grid.shape, grid.dtype, float(grid.min()), float(grid.max())
    ((138, 104), dtype('float32'), 0.0, 1.0)
    """
    tiles = _tiles(original, masked, recon, mask)
    rows, n, h, w = tiles.shape
    out = np.ones((rows * (h + pad) + pad, n * (w + pad) + pad), dtype=np.float32)
    for i in range(rows):
        for j in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = tiles[i, j]
    return out


def _tiles(original: np.ndarray, masked: np.ndarray, recon: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(4, n, h, w)`` tiles in [0, 1]: the rows of :data:`_ROWS`, each column scaled by the
    0.5 and 99.5 percentiles of its original, hidden squares of the input dimmed."""
    original, masked, recon, mask = (np.asarray(a, dtype=np.float32) for a in (original, masked, recon, mask))
    if not (original.shape == masked.shape == recon.shape == mask.shape) or original.ndim != 3:
        raise ValueError("original, masked, recon and mask must all have the same (n, h, w) shape")
    rows = np.stack([original, masked, recon, recon * mask + original * (1 - mask)])
    lo, hi = np.percentile(original, [0.5, 99.5], axis=(1, 2))
    scale = 1.0 / np.maximum(hi - lo, 1e-6)
    out = np.clip((rows - lo[None, :, None, None]) * scale[None, :, None, None], 0, 1)
    out[1] = np.where(mask > 0, 0.15, out[1])
    return out.astype(np.float32)


def save_reconstruction_grid(path: str | Path, original: np.ndarray, masked: np.ndarray, recon: np.ndarray,
                             mask: np.ndarray, titles: Sequence[str] | None = None,
                             tile_inches: float = 1.5) -> Path:
    """Write the reconstructions as a labelled PNG at ``path`` (written atomically).

    One column per example (titled with ``titles``, e.g. the stack and ``z`` of each patch),
    one labelled row per stage: the original, the masked input the encoder saw (hidden
    squares dimmed), the reconstruction of the hidden squares, and the reconstruction with
    the visible squares pasted back. Each column is scaled by the 0.5 and 99.5 percentiles
    of its original, as in :func:`reconstruction_grid`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> from biodatacentric import make_vessels
    >>> tmp = tempfile.TemporaryDirectory()
    >>> original, _ = make_vessels((3, 32, 32), random_state=0)
    >>> mask = np.zeros_like(original)
    >>> mask[:, :16] = 1
    >>> path = save_reconstruction_grid(pathlib.Path(tmp.name) / "recon.png", original,
    ...                                 original * (1 - mask), original, mask,
    ...                                 titles=["stack A, z 0", "stack A, z 5", "stack B, z 2"])
    >>> with Image.open(path) as im:
    ...     print(im.format, im.size[0] > im.size[1] / 4)
    PNG True
    >>> tmp.cleanup()
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {path}")
    tiles = _tiles(original, masked, recon, mask)
    n = tiles.shape[1]
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} examples")
    labels = ("original", "input seen\n(hidden dimmed)", "reconstruction", "reconstruction\n+ visible")
    fig = Figure(figsize=(1.3 + tile_inches * n, 0.5 + tile_inches * len(labels)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(labels), n, squeeze=False)
    for i in range(len(labels)):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(tiles[i, j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=8)
            if i == 0 and titles is not None:
                ax.set_title(titles[j], fontsize=7, linespacing=1.1)
    fig.suptitle("MAE reconstructions: does the model fill in the hidden squares?", fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))
