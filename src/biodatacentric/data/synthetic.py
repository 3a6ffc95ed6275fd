"""A seeded generator of synthetic vessel images with exact masks, in 2-D and 3-D."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["make_vessels"]


def _grow_tree(rng: np.random.Generator, shape: Sequence[int], start: np.ndarray, direction: np.ndarray,
               radius: float, radius_range: tuple[float, float], branch_prob: float, max_len: int,
               points: list, radii: list, depth: int = 0) -> None:
    """Random walk with a slowly turning direction; may branch into thinner children."""
    pos = start.astype(np.float64)
    d = direction / np.linalg.norm(direction)
    for _ in range(max_len):
        d = d + rng.normal(0, 0.12, size=d.shape)
        d /= np.linalg.norm(d)
        pos = pos + d
        if np.any(pos < 0) or np.any(pos > np.asarray(shape) - 1):
            return
        radius = float(np.clip(radius + rng.normal(0, 0.04), radius_range[0], radius_range[1]))
        points.append(pos.copy())
        radii.append(radius)
        if depth < 3 and rng.random() < branch_prob:
            turn = rng.normal(0, 1, size=d.shape)
            turn -= turn.dot(d) * d
            child = d + 1.2 * turn / (np.linalg.norm(turn) + 1e-9)
            _grow_tree(rng, shape, pos, child, max(radius_range[0], radius * 0.7), radius_range,
                       branch_prob * 0.6, max_len // 2, points, radii, depth + 1)


def make_vessels(shape: Sequence[int] = (256, 256), n_vessels: int | None = None,
                 radius_range: tuple[float, float] = (1.5, 6.0), contrast: tuple[float, float] = (0.4, 1.0),
                 background: float = 0.1, noise: float = 0.05, blur: float = 1.0, branch_prob: float = 0.02,
                 dtype: str = "float32", random_state: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic branching tubes on a smooth background, with their exact mask.

    Parameters
    ----------
    shape : (Y, X) or (Z, Y, X)
        Output shape. For 3-D the tubes are 3-D (they cross slices).
    n_vessels : int, optional
        Number of trees; default scales with the image area.
    radius_range : (float, float)
        Smallest and largest tube radius in pixels.
    contrast : (float, float)
        Range of per-tree vessel brightness above the background.
    background : float
        Mean background level; a smooth low-frequency gradient is added.
    noise : float
        Standard deviation of additive Gaussian noise (plus Poisson-like shot noise).
    blur : float
        Gaussian blur (pixels) of the rendered vessels (optical point spread).
    branch_prob : float
        Probability of branching per step of a tree.
    dtype : {"float32", "uint8", "uint16"}
        Output image dtype; integer outputs are scaled to the dtype's range.
    random_state : int, optional
        Seed; the same seed gives the same image and mask.

    Returns
    -------
    image : ndarray
    mask : ndarray of uint8 {0, 1}, same shape

    Examples
    --------
    >>> img, mask = make_vessels((64, 64), random_state=1)
    >>> img.shape, mask.dtype, bool(0 < mask.mean() < 0.6)
    ((64, 64), dtype('uint8'), True)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X) with positive sizes, got {shape}")
    if dtype not in ("float32", "uint8", "uint16"):
        raise ValueError(f"dtype={dtype!r} must be 'float32', 'uint8' or 'uint16'")
    lo_r, hi_r = radius_range
    if not 0 < lo_r <= hi_r:
        raise ValueError(f"radius_range must satisfy 0 < low <= high, got {radius_range}")
    rng = np.random.default_rng(random_state)
    ndim = len(shape)
    plane = shape[-2] * shape[-1]
    if n_vessels is None:
        n_vessels = max(2, int(round(plane / 256**2 * 6)))
    centre = np.zeros(shape, dtype=bool)
    rad_map = np.zeros(shape, dtype=np.float32)
    bright = np.zeros(shape, dtype=np.float32)
    for _ in range(n_vessels):
        axis = int(rng.integers(ndim - 2, ndim))  # start on a Y or X border
        start = rng.uniform(0, np.asarray(shape) - 1)
        start[axis] = 0 if rng.random() < 0.5 else shape[axis] - 1
        direction = rng.normal(0, 0.3, size=ndim)
        direction[axis] = 1.0 if start[axis] == 0 else -1.0
        if ndim == 3:
            direction[0] *= 0.3
        points: list = []
        radii: list = []
        _grow_tree(rng, shape, start, direction, rng.uniform(lo_r, hi_r), radius_range, branch_prob,
                   int(2.5 * max(shape[-2:])), points, radii)
        if not points:
            continue
        idx = np.clip(np.rint(np.asarray(points)).astype(int), 0, np.asarray(shape) - 1)
        c = rng.uniform(*contrast)
        centre[tuple(idx.T)] = True
        rad_map[tuple(idx.T)] = np.maximum(rad_map[tuple(idx.T)], radii)
        bright[tuple(idx.T)] = np.maximum(bright[tuple(idx.T)], c)
    if not centre.any():
        mask = np.zeros(shape, dtype=np.uint8)
        vessels = np.zeros(shape, dtype=np.float32)
    else:
        dist, inds = ndi.distance_transform_edt(~centre, return_indices=True)
        near_r = rad_map[tuple(inds)]
        near_b = bright[tuple(inds)]
        mask = (dist <= near_r).astype(np.uint8)
        profile = np.clip(1.0 - (dist / np.maximum(near_r, 1e-3)) ** 2, 0, 1) * 0.5 + 0.5
        vessels = (mask * near_b * profile).astype(np.float32)
        if blur > 0:
            vessels = ndi.gaussian_filter(vessels, sigma=(0.5 * blur,) * (ndim - 2) + (blur, blur))
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    grad = sum(rng.uniform(-1, 1) * g for g in grid[-2:])
    bg = background * (1.0 + 0.5 * grad)
    img = bg + vessels
    img = img + rng.normal(0, noise, size=shape) + noise * np.sqrt(np.clip(img, 0, None)) * rng.normal(0, 1, size=shape)
    img = np.clip(img, 0, None).astype(np.float32)
    if dtype != "float32":
        info = np.iinfo(dtype)
        img = np.clip(img / max(float(img.max()), 1e-6) * info.max * 0.9, 0, info.max).astype(dtype)
    return img, mask
