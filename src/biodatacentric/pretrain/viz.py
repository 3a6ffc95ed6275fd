"""A PNG grid of MAE reconstructions, for a person to check pretraining by eye."""

from __future__ import annotations

from pathlib import Path

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
    original, masked, recon, mask = (np.asarray(a, dtype=np.float32) for a in (original, masked, recon, mask))
    if not (original.shape == masked.shape == recon.shape == mask.shape) or original.ndim != 3:
        raise ValueError("original, masked, recon and mask must all have the same (n, h, w) shape")
    n, h, w = original.shape
    pasted = recon * mask + original * (1 - mask)
    rows = [original, masked, recon, pasted]
    out = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad), dtype=np.float32)
    for j in range(n):
        lo, hi = np.percentile(original[j], [0.5, 99.5])
        scale = 1.0 / max(float(hi - lo), 1e-6)
        for i, row in enumerate(rows):
            tile = np.clip((row[j] - lo) * scale, 0, 1)
            if i == 1:
                tile = np.where(mask[j] > 0, 0.15, tile)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = tile
    return out


def save_reconstruction_grid(path: str | Path, original: np.ndarray, masked: np.ndarray, recon: np.ndarray,
                             mask: np.ndarray, upscale: int | None = None) -> Path:
    """Write :func:`reconstruction_grid` as an 8-bit grey PNG at ``path`` (written atomically).

    Small patches are enlarged by pixel repetition (``upscale``, default so tiles are at
    least 96 px) so the grid is readable.

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
    ...                                 original * (1 - mask), original, mask)
    >>> with Image.open(path) as im:   # the (138, 104) grid, enlarged 3x so tiles are 96 px
    ...     print(im.size, im.mode)
    (312, 414) L
    >>> tmp.cleanup()
    """
    from PIL import Image

    grid = reconstruction_grid(original, masked, recon, mask)
    h = np.asarray(original).shape[-2]
    k = int(upscale) if upscale else max(1, int(np.ceil(96 / max(h, 1))))
    if k > 1:
        grid = np.kron(grid, np.ones((k, k), dtype=np.float32))
    img = Image.fromarray((grid * 255).round().astype(np.uint8))
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {path}")
    return atomic_write(path, lambda p: img.save(p, format="PNG"))
