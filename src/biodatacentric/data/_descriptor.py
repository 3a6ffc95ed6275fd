"""A cheap, deterministic, label-free descriptor of patches, its summary and the drift from it.

The descriptor (:data:`DESCRIPTOR`) needs no trained model, so a model card can describe the
data its model was trained on, and :func:`biodatacentric.rank_models` can compare new data
with it, without an MAE. Per normalised patch it holds 20 numbers:

* 7 intensity percentiles (1, 5, 25, 50, 75, 95, 99) and the standard deviation;
* 6 shares of the spectral power in log-spaced radial frequency bands (texture and scale);
* the mean gradient magnitude at Gaussian scales 1, 2 and 4 px;
* the mean bright-ridge strength (``max(-lambda_2, 0)`` of the Hessian) at scales 1, 2 and 4 px.

A summary (:func:`summarise`) stores the per-feature mean and spread, up to 8 k-means
centroids (one per 8 patches at most) in standardised units and the training patches' own
median distance to their nearest centroid, held out (centroids of every other patch, distances
of the rest, and the other way round); :func:`drift` is the median nearest-centroid distance of new patches
divided by that (about 1 for data like the training data, larger the further away).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["DESCRIPTOR", "describe", "summarise", "drift"]

#: Name and version of the descriptor; stored with every summary.
DESCRIPTOR = "pixel-descriptor-v1"

_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_SCALES = (1.0, 2.0, 4.0)
_N_BANDS = 6
FEATURES = ([f"p{q}" for q in _PERCENTILES] + ["std"] + [f"band{i}" for i in range(_N_BANDS)]
            + [f"grad_s{s:g}" for s in _SCALES] + [f"ridge_s{s:g}" for s in _SCALES])


def _bands(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.sqrt(fy ** 2 + fx ** 2)
    edges = np.geomspace(1.0 / max(h, w), 0.5 * np.sqrt(2) + 1e-9, _N_BANDS + 1)
    band = np.digitize(r, edges) - 1          # -1: the DC term and below the first edge
    band[band >= _N_BANDS] = _N_BANDS - 1
    return band


def describe(images: np.ndarray) -> np.ndarray:
    """The ``(n, 20)`` float64 descriptor of normalised patches ``(n, h, w)``.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> img, _ = make_vessels((2, 64, 64), random_state=0)
    >>> describe(img).shape
    (2, 20)
    >>> bool(np.allclose(describe(img), describe(img.copy())))      # deterministic
    True
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"describe takes patches (n, h, w) with n >= 1; got shape {np.shape(images)}")
    n, h, w = x.shape
    band = _bands(h, w)
    out = np.empty((n, len(FEATURES)), dtype=np.float64)
    for i, im in enumerate(x):
        row = list(np.percentile(im, _PERCENTILES)) + [float(im.std())]
        power = np.abs(np.fft.rfft2(im - im.mean())) ** 2
        total = float(power[band >= 0].sum())
        row += [float(power[band == b].sum() / total) if total > 0 else 0.0 for b in range(_N_BANDS)]
        for s in _SCALES:
            row.append(float(ndi.gaussian_gradient_magnitude(im, s, mode="reflect").mean()))
        for s in _SCALES:
            hrr = ndi.gaussian_filter(im, s, order=(2, 0), mode="reflect")
            hcc = ndi.gaussian_filter(im, s, order=(0, 2), mode="reflect")
            hrc = ndi.gaussian_filter(im, s, order=(1, 1), mode="reflect")
            l2 = 0.5 * (hrr + hcc) - np.sqrt(0.25 * (hrr - hcc) ** 2 + hrc ** 2)
            row.append(float(np.maximum(-l2, 0.0).mean()) * s ** 2)
        out[i] = row
    return out


def _kmeans(z: np.ndarray, k: int, seed: int, n_iter: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = z[rng.choice(len(z), size=1)]
    for _ in range(1, k):                          # k-means++ seeding
        d = ((z[:, None] - centres[None]) ** 2).sum(-1).min(1)
        if d.sum() <= 0:
            break
        centres = np.vstack([centres, z[rng.choice(len(z), p=d / d.sum())]])
    for _ in range(n_iter):
        lab = ((z[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([z[lab == j].mean(0) if np.any(lab == j) else centres[j] for j in range(len(centres))])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def _nearest(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.sqrt(((z[:, None] - centres[None]) ** 2).sum(-1).min(1))


def summarise(descriptors: np.ndarray, n_centroids: int = 8, seed: int = 0) -> dict:
    """The JSON-able summary of training descriptors (see the module docstring).

    Examples
    --------
    >>> from biodatacentric import make_vessels
    >>> img, _ = make_vessels((16, 64, 64), random_state=0)
    >>> s = summarise(describe(img))
    >>> s["embedder"], s["n"], len(s["mean"]), len(s["centroids"]) <= 8
    ('pixel-descriptor-v1', 16, 20, True)
    >>> 0.5 < drift(s, describe(img)) < 1.5                       # the training data itself
    True
    """
    d = np.asarray(descriptors, dtype=np.float64)
    if d.ndim != 2 or len(d) == 0:
        raise ValueError(f"descriptors must be a non-empty (n, d) array; got shape {d.shape}")
    mean = d.mean(0)
    std = d.std(0)
    floor = max(1e-6, 1e-3 * float(np.median(np.abs(mean)) or 1.0))
    std = np.maximum(std, floor)
    z = (d - mean) / std
    k = int(min(max(1, n_centroids), max(1, len(d) // 8)))
    centres = _kmeans(z, k, seed)
    if len(d) >= 4:     # the reference distance is held out: centroids of one half, distances of the other
        a, b = z[0::2], z[1::2]
        self_dist = np.concatenate([_nearest(b, _kmeans(a, min(k, len(a)), seed)),
                                    _nearest(a, _kmeans(b, min(k, len(b)), seed))])
    else:
        self_dist = _nearest(z, centres)
    return {"embedder": DESCRIPTOR, "features": list(FEATURES), "n": int(len(d)),
            "mean": mean.tolist(), "std": std.tolist(), "centroids": centres.tolist(),
            "self_distance": float(max(np.median(self_dist), 1e-3))}


def drift(summary: dict, descriptors: np.ndarray) -> float:
    """Median nearest-centroid distance of ``descriptors`` over the training patches' own (≈1: alike)."""
    _check_summary(summary)
    d = np.asarray(descriptors, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != len(summary["mean"]):
        raise ValueError(f"descriptors have shape {d.shape}; the summary holds {len(summary['mean'])} features")
    z = (d - np.asarray(summary["mean"])) / np.asarray(summary["std"])
    return float(np.median(_nearest(z, np.asarray(summary["centroids"]))) / float(summary["self_distance"]))


def _check_summary(summary: Any) -> None:
    need = {"embedder", "mean", "std", "centroids", "self_distance"}
    if not isinstance(summary, dict) or not need <= set(summary):
        raise ValueError(f"not a descriptor summary (needs {sorted(need)}); it comes from summarise()")
    if summary["embedder"] != DESCRIPTOR:
        raise ValueError(f"the summary was made with {summary['embedder']!r}; this library computes "
                         f"{DESCRIPTOR!r}, so the two cannot be compared")
