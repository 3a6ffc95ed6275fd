"""Families of segmentation corruptions, used to self-calibrate :class:`RCAMonitor`.

Each corruption turns a correct mask into a plausible wrong one: morphological erosion and
dilation (boundary errors), shifts (misregistration), dropped vessel branches (missed
structures), flipped pixels (label noise), intensity thresholds of the smoothed image at
several foreground shares and Otsu's threshold (segmenters that follow brightness instead
of the annotators' convention) and the inverted mask. :meth:`RCAMonitor.fit` applies them to
the annotated references, whose true Dice is known, to learn how raw RCA statistics relate
to the true Dice.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import skeletonize

__all__ = ["CORRUPTIONS", "corrupt_mask", "drop_branches", "random_corruptions"]


def _per_slice(fn: Callable[[np.ndarray], np.ndarray], mask: np.ndarray) -> np.ndarray:
    return np.stack([fn(m) for m in mask]).astype(np.uint8)


def drop_branches(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Remove whole vessel branches (2-D pieces cut at skeleton junctions) until ``fraction`` of the foreground is gone.

    ``mask`` is (Z, Y, X) or (Y, X); the small blobs around junctions stay.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> _, m = make_vessels((64, 64), random_state=0)
    >>> out = drop_branches(m, 0.5, np.random.default_rng(0))
    >>> bool(out.sum() < m.sum()) and bool(np.all(out <= m))
    True
    """
    m3 = np.asarray(mask).astype(bool)
    squeeze = m3.ndim == 2
    if squeeze:
        m3 = m3[None]
    out = m3.astype(np.uint8)
    for z in range(len(m3)):
        m = m3[z]
        if not m.any():
            continue
        sk = skeletonize(m)
        nb = ndi.convolve(sk.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
        junctions = ndi.binary_dilation(sk & (nb >= 3), iterations=3)
        pieces, n = ndi.label(m & ~junctions)
        if n == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        removed, target, drop = 0, fraction * m.sum(), []
        for j in rng.permutation(n):
            if removed >= target:
                break
            drop.append(j + 1)
            removed += sizes[j]
        out[z][np.isin(pieces, drop)] = 0
    return out[0] if squeeze else out


def _smoothed(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    return ndi.gaussian_filter(img, (0, 1.0, 1.0))


def corrupt_mask(mask: np.ndarray, kind: str, strength: float, rng: np.random.Generator,
                 image: np.ndarray | None = None) -> np.ndarray:
    """One corruption of a (Z, Y, X) binary ``mask`` (2-D operations per slice).

    Parameters
    ----------
    mask : ndarray (Z, Y, X)
        The correct mask.
    kind : str
        One of :data:`CORRUPTIONS`: ``"identity"``, ``"erode"`` / ``"dilate"`` (``strength``
        = iterations), ``"shift"`` (pixels, random direction), ``"drop"`` (share of the
        foreground removed), ``"noise"`` (share of pixels flipped), ``"threshold"``
        (threshold of the smoothed ``image`` keeping ``strength`` times the mask's foreground
        share), ``"otsu"``, ``"inverted"``.
    strength : float
        Size of the corruption (see ``kind``).
    rng : numpy Generator
    image : ndarray (Z, Y, X), optional
        Normalised image, needed by ``"threshold"`` and ``"otsu"``.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((1, 9, 9), np.uint8); m[0, 3:6, 3:6] = 1
    >>> int(corrupt_mask(m, "dilate", 1, np.random.default_rng(0)).sum())
    21
    """
    g = np.asarray(mask).astype(bool)
    it = max(1, int(round(strength)))
    if kind == "identity":
        return g.astype(np.uint8)
    if kind == "erode":
        return _per_slice(lambda m: ndi.binary_erosion(m, iterations=it), g)
    if kind == "dilate":
        return _per_slice(lambda m: ndi.binary_dilation(m, iterations=it), g)
    if kind == "shift":
        ang = rng.uniform(0, 2 * np.pi)
        dy, dx = int(round(it * np.sin(ang))), int(round(it * np.cos(ang)))
        return np.roll(g, (dy, dx), axis=(1, 2)).astype(np.uint8)
    if kind == "drop":
        return drop_branches(g, float(strength), rng)
    if kind == "noise":
        flip = rng.random(g.shape) < float(strength)
        return (g ^ flip).astype(np.uint8)
    if kind == "inverted":
        return (~g).astype(np.uint8)
    if kind in ("threshold", "otsu"):
        if image is None:
            raise ValueError(f"corruption {kind!r} needs the image")
        sm = _smoothed(image)
        if kind == "otsu":
            return (sm > threshold_otsu(sm)).astype(np.uint8)
        share = min(max(float(strength) * g.mean(), 1e-3), 0.95)
        return (sm > np.quantile(sm, 1.0 - share)).astype(np.uint8)
    raise ValueError(f"unknown corruption {kind!r}; use one of {', '.join(CORRUPTIONS)}")


#: kind -> range of strengths drawn uniformly by :func:`random_corruptions`
CORRUPTIONS: dict[str, tuple[float, float]] = {
    "identity": (0, 0),
    "erode": (1, 3),
    "dilate": (1, 4),
    "shift": (1, 10),
    "drop": (0.15, 0.75),
    "noise": (0.02, 0.3),
    "threshold": (0.4, 2.5),
    "otsu": (0, 0),
    "inverted": (0, 0),
}


def random_corruptions(image: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator,
                       kinds: tuple[str, ...] | None = None) -> list[tuple[str, np.ndarray]]:
    """``n`` corrupted versions of ``mask``: the kinds cycle through ``kinds`` (all by default)
    in a random order, strengths drawn uniformly from :data:`CORRUPTIONS`.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> img, m = make_vessels((1, 48, 48), random_state=0)
    >>> [k for k, _ in random_corruptions(img, m, 3, np.random.default_rng(0), kinds=("erode", "noise"))]
    ['erode', 'noise', 'erode']
    """
    kinds = tuple(CORRUPTIONS) if kinds is None else tuple(kinds)
    out = []
    order: list[str] = []
    while len(order) < n:
        order.extend(rng.permutation(kinds).tolist())
    for kind in order[:n]:
        lo, hi = CORRUPTIONS[kind]
        s = rng.uniform(lo, hi) if hi > lo else lo
        out.append((kind, corrupt_mask(mask, kind, s, rng, image=image)))
    return out
