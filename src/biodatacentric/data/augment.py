"""Microscopy-safe augmentation: flips, 90-degree rotations, small rotations, mild intensity jitter.

Functions come in two flavours: per-sample NumPy functions taking a
:class:`numpy.random.Generator` (for :class:`~biodatacentric.data.PatchDataset`) and batched
torch functions taking a :class:`torch.Generator` (for training loops, so the state of the
generator can be checkpointed and training resumed exactly).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import rotate

__all__ = ["flip_rot90", "intensity_jitter", "small_rotation", "default_augment", "compose",
           "batch_flip_rot90", "batch_intensity_jitter", "augment_batch", "small_rotation_batch"]

Aug = Callable[[np.ndarray, "np.ndarray | None", np.random.Generator], tuple]


def flip_rot90(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
    """One of the 8 symmetries of the square, chosen at random, applied to image and mask.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.data.augment import flip_rot90
    >>> img = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> mask = (img % 2 == 0).astype(np.uint8)
    >>> out, out_mask = flip_rot90(img, mask, np.random.default_rng(0))
    >>> out.shape, float(out.sum()) == float(img.sum()), bool(np.array_equal(out % 2 == 0, out_mask == 1))
    ((4, 4), True, True)
    """
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
    """Multiply by ``1 ± scale`` and add ``± shift`` (uniform); masks are unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.data.augment import intensity_jitter
    >>> img = np.ones((8, 8), dtype=np.float32)
    >>> out, mask = intensity_jitter(img, None, np.random.default_rng(0), scale=0.1, shift=0.05)
    >>> out.dtype, mask is None, bool(0.85 <= out.min() and out.max() <= 1.15)
    (dtype('float32'), True, True)
    """
    a = 1.0 + rng.uniform(-scale, scale)
    b = rng.uniform(-shift, shift)
    return (img * a + b).astype(np.float32), mask


def small_rotation(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
                   max_degrees: float = 20.0, p: float = 0.25):
    """With probability ``p``, rotate by a random angle in ``±max_degrees`` (reflect at edges).

    The image is interpolated linearly, the mask with nearest neighbours (it stays binary).

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.data.augment import small_rotation
    >>> img = np.zeros((16, 16), dtype=np.float32)
    >>> img[:, 8] = 1.0
    >>> out, out_mask = small_rotation(img, img.astype(np.uint8), np.random.default_rng(0), p=1.0)
    >>> out.shape, out.dtype, sorted(np.unique(out_mask).tolist())
    ((16, 16), dtype('float32'), [0, 1])
    >>> small_rotation(img, None, np.random.default_rng(0), p=0.0)[0] is img
    True
    """
    if rng.random() >= p:
        return img, mask

    ang = float(rng.uniform(-max_degrees, max_degrees))
    img = rotate(img, ang, axes=(-1, -2), reshape=False, order=1, mode="reflect").astype(np.float32)
    if mask is not None:
        mask = rotate(mask, ang, axes=(-1, -2), reshape=False, order=0, mode="reflect")
    return img, mask


def compose(*fns: Aug) -> Aug:
    """Chain augmentations ``fn(image, mask, rng) -> (image, mask)`` into one, applied left to right.

    Every function draws from the same generator, so the chain is reproducible from one seed.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.data.augment import compose, flip_rot90, small_rotation
    >>> aug = compose(flip_rot90, small_rotation)
    >>> mask = np.zeros((8, 8), dtype=np.uint8)
    >>> mask[:, 2] = 1
    >>> out, out_mask = aug(np.zeros((8, 8), dtype=np.float32), mask, np.random.default_rng(0))
    >>> out.shape, out_mask.shape, int(out_mask.sum())
    ((8, 8), (8, 8), 8)
    """

    def run(img, mask, rng):
        for fn in fns:
            img, mask = fn(img, mask, rng)
        return img, mask

    return run


default_augment = compose(flip_rot90, intensity_jitter)
default_augment.__doc__ = """The default augmentation: :func:`flip_rot90` then :func:`intensity_jitter`.

Used by :class:`~biodatacentric.data.PatchDataset` with ``augment=True``. Call it as
``default_augment(image, mask_or_None, rng)``; it returns ``(image, mask)``.

Examples
--------
>>> import numpy as np
>>> from biodatacentric.data import default_augment
>>> img = np.ones((8, 8), dtype=np.float32)
>>> mask = np.eye(8, dtype=np.uint8)
>>> out, out_mask = default_augment(img, mask, np.random.default_rng(0))
>>> out.shape, out.dtype, int(out_mask.sum())
((8, 8), dtype('float32'), 8)
"""


def batch_flip_rot90(x: torch.Tensor, y: torch.Tensor | None = None,
                     generator: torch.Generator | None = None):
    """Apply a random square symmetry to each sample of ``x`` (N, C, H, W) and ``y`` (N, H, W).

    Examples
    --------
    >>> import torch
    >>> from biodatacentric.data.augment import batch_flip_rot90
    >>> x = torch.arange(32, dtype=torch.float32).reshape(2, 1, 4, 4)
    >>> y = (x[:, 0] % 2 == 0).long()
    >>> xo, yo = batch_flip_rot90(x, y, generator=torch.Generator().manual_seed(0))
    >>> tuple(xo.shape), tuple(yo.shape), torch.equal((xo[:, 0] % 2 == 0).long(), yo)
    ((2, 1, 4, 4), (2, 4, 4), True)
    """
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
    """Per-sample ``x * (1 ± scale) ± shift``.

    Examples
    --------
    >>> import torch
    >>> from biodatacentric.data.augment import batch_intensity_jitter
    >>> x = torch.ones(3, 1, 8, 8)
    >>> out = batch_intensity_jitter(x, generator=torch.Generator().manual_seed(0))
    >>> tuple(out.shape), bool(((out >= 0.85) & (out <= 1.15)).all())
    ((3, 1, 8, 8), True)
    >>> bool((out.amax(dim=(1, 2, 3)) == out.amin(dim=(1, 2, 3))).all())  # one factor per sample
    True
    """
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    a = 1.0 + (torch.rand(shape, generator=generator) * 2 - 1) * scale
    b = (torch.rand(shape, generator=generator) * 2 - 1) * shift
    return x * a.to(x.device, x.dtype) + b.to(x.device, x.dtype)


# ---------------------------------------------------------------------- segmentation batches
def small_rotation_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, max_degrees: float = 20.0,
                         p: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each sample with probability ``p`` by an angle in ``±max_degrees``.

    Bilinear for the image, nearest for the mask, reflection at the borders. Always draws the
    same number of random values, so the generator state does not depend on the data.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 1, 16, 16, generator=g); y = (x[:, 0] > 0.5).long()
    >>> xr, yr = small_rotation_batch(x, y, g, p=1.0)    # rotate every sample
    >>> tuple(xr.shape), yr.dtype, bool((xr != x).any())
    ((4, 1, 16, 16), torch.int64, True)
    """
    n = x.shape[0]
    apply = torch.rand(n, generator=generator) < p
    ang = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    if not bool(apply.any()):
        return x, y
    sel = apply.nonzero(as_tuple=True)[0]
    c, s = torch.cos(ang[sel]), torch.sin(ang[sel])
    theta = torch.zeros(len(sel), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    grid = F.affine_grid(theta, list(x[sel].shape), align_corners=False).to(x.dtype)
    x, y = x.clone(), y.clone()
    x[sel] = F.grid_sample(x[sel], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    ym = F.grid_sample(y[sel][:, None].float(), grid, mode="nearest", padding_mode="reflection",
                       align_corners=False)
    y[sel] = ym[:, 0].round().to(y.dtype)
    return x, y


def augment_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training augmentation: random square symmetry (flips + 90° rotations; flips only for
    non-square patches), small rotations (p=0.25, ±20°) and mild intensity jitter (×1±0.1, ±0.05).

    ``x`` is ``(B, 1, H, W)`` float, ``y`` ``(B, H, W)`` integer labels.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 1, 16, 16, generator=g); y = (x[:, 0] > 0.5).long()
    >>> xa, ya = augment_batch(x, y, g)
    >>> tuple(xa.shape), tuple(ya.shape), sorted(ya.unique().tolist())
    ((4, 1, 16, 16), (4, 16, 16), [0, 1])
    """
    if x.shape[-1] == x.shape[-2]:
        x, y = batch_flip_rot90(x, y, generator=generator)
    else:
        code = torch.randint(0, 4, (x.shape[0],), generator=generator)
        fh, fw = (code % 2 == 1), (code // 2 == 1)
        x, y = x.clone(), y.clone()
        x[fh], y[fh] = x[fh].flip(-1), y[fh].flip(-1)
        x[fw], y[fw] = x[fw].flip(-2), y[fw].flip(-2)
    x, y = small_rotation_batch(x, y, generator)
    x = batch_intensity_jitter(x, generator=generator)
    return x, y
