"""Microscopy-safe augmentation: flips, 90-degree rotations, small rotations, mild intensity jitter.

Functions come in two flavours: per-sample NumPy functions taking a
:class:`numpy.random.Generator` (for :class:`~biodatacentric.data.PatchDataset`) and batched
torch functions taking a :class:`torch.Generator` (for training loops, so the state of the
generator can be checkpointed and training resumed exactly).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["flip_rot90", "intensity_jitter", "small_rotation", "default_augment", "compose",
           "batch_flip_rot90", "batch_intensity_jitter"]

Aug = Callable[[np.ndarray, "np.ndarray | None", np.random.Generator], tuple]


def flip_rot90(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
    """One of the 8 symmetries of the square, chosen at random, applied to image and mask."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    img = np.rot90(img, k, axes=(-2, -1))
    mask = None if mask is None else np.rot90(mask, k, axes=(-2, -1))
    if flip:
        img = img[..., ::-1]
        mask = None if mask is None else mask[..., ::-1]
    return np.ascontiguousarray(img), (None if mask is None else np.ascontiguousarray(mask))


def intensity_jitter(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
                     scale: float = 0.1, shift: float = 0.05):
    """Multiply by ``1 ± scale`` and add ``± shift`` (uniform); masks are unchanged."""
    a = 1.0 + rng.uniform(-scale, scale)
    b = rng.uniform(-shift, shift)
    return (img * a + b).astype(np.float32), mask


def small_rotation(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
                   max_degrees: float = 20.0, p: float = 0.25):
    """With probability ``p``, rotate by a random angle in ``±max_degrees`` (reflect at edges)."""
    if rng.random() >= p:
        return img, mask
    from scipy.ndimage import rotate

    ang = float(rng.uniform(-max_degrees, max_degrees))
    img = rotate(img, ang, axes=(-1, -2), reshape=False, order=1, mode="reflect").astype(np.float32)
    if mask is not None:
        mask = rotate(mask, ang, axes=(-1, -2), reshape=False, order=0, mode="reflect")
    return img, mask


def compose(*fns: Aug) -> Aug:
    def run(img, mask, rng):
        for fn in fns:
            img, mask = fn(img, mask, rng)
        return img, mask

    return run


default_augment = compose(flip_rot90, intensity_jitter)


def batch_flip_rot90(x: torch.Tensor, y: torch.Tensor | None = None,
                     generator: torch.Generator | None = None):
    """Apply a random square symmetry to each sample of ``x`` (N, C, H, W) and ``y`` (N, H, W)."""
    n = x.shape[0]
    codes = torch.randint(0, 8, (n,), generator=generator)
    xo = torch.empty_like(x)
    yo = None if y is None else torch.empty_like(y)
    for code in range(8):
        sel = (codes == code).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        sel = sel.to(x.device)
        k, flip = code % 4, code >= 4
        xs = torch.rot90(x[sel], k, dims=(-2, -1))
        xo[sel] = xs.flip(-1) if flip else xs
        if y is not None:
            ys = torch.rot90(y[sel], k, dims=(-2, -1))
            yo[sel] = ys.flip(-1) if flip else ys
    return xo, yo


def batch_intensity_jitter(x: torch.Tensor, generator: torch.Generator | None = None,
                           scale: float = 0.1, shift: float = 0.05) -> torch.Tensor:
    """Per-sample ``x * (1 ± scale) ± shift``."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    a = 1.0 + (torch.rand(shape, generator=generator) * 2 - 1) * scale
    b = (torch.rand(shape, generator=generator) * 2 - 1) * shift
    return x * a.to(x.device, x.dtype) + b.to(x.device, x.dtype)
