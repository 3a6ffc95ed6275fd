"""An ilastik-like pixel feature bank computed with separable float32 filters.

For every 2-D image the bank holds, at the scales ``sigmas`` (ilastik's defaults
``0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0``):

* the first scale: Gaussian smoothing only;
* every other scale ``s`` (previous scale ``p``): Gaussian smoothing ``G_s``, Laplacian of
  Gaussian, Gaussian gradient magnitude, difference of Gaussians ``G_p - G_s``, the two
  structure-tensor eigenvalues (inner scale ``s``, outer scale ``s / 2`` as in ilastik) and
  the two Hessian-of-Gaussian eigenvalues;

so 1 + 6 x 8 = 49 features with the default scales. Kernels are truncated at
``truncate * sigma`` (4 sigma by default, as in :func:`scipy.ndimage.gaussian_filter`), so
their support grows with the scale (pitfall R2). Each scale needs three 1-D passes along
x (orders 0, 1, 2) whose results are reused by six passes along y (smoothing, both
gradients and the three Hessian entries); the Laplacian, gradient magnitude, DoG and both
eigenvalue pairs are then pointwise. Eigenvalues of the symmetric 2x2 tensors use the
closed form ``tr/2 +- sqrt(((a - c)/2)^2 + b^2)``, which never takes the root of a
negative number (pitfall R4). Borders are handled with ``mode="reflect"`` like SciPy's
Gaussian filters, so every feature equals the corresponding SciPy filter.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["DEFAULT_SIGMAS", "feature_names", "pixel_features", "feature_margin", "n_features"]

DEFAULT_SIGMAS: tuple[float, ...] = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)

_PER_SCALE = ("gaussian", "log", "gradmag", "dog", "st_eig1", "st_eig2", "hess_eig1", "hess_eig2")


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sigmas must be a sequence of positive numbers, got {sigmas!r}") from exc
    if not out or any(not (s > 0 and math.isfinite(s)) for s in out):
        raise ValueError(f"sigmas must be a non-empty sequence of positive numbers, got {sigmas!r}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"sigmas must increase strictly, got {out}")
    return out


def feature_names(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> list[str]:
    """Names of the features in the order :func:`pixel_features` returns them.

    Examples
    --------
    >>> names = feature_names()
    >>> len(names), names[:3]
    (49, ['gaussian_0.3', 'gaussian_0.7', 'log_0.7'])
    """
    sig = _check_sigmas(sigmas)
    names = [f"gaussian_{sig[0]:g}"]
    for s in sig[1:]:
        names += [f"{kind}_{s:g}" for kind in _PER_SCALE]
    return names


def n_features(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Number of features for ``sigmas`` (``1 + 8 * (len(sigmas) - 1)``).

    Examples
    --------
    >>> n_features(), n_features((1.0, 2.0))
    (49, 9)
    """
    return 1 + 8 * (len(_check_sigmas(sigmas)) - 1)


def _radius(sigma: float, truncate: float) -> int:
    return int(truncate * float(sigma) + 0.5)


def feature_margin(sigmas: Sequence[float] = DEFAULT_SIGMAS, truncate: float = 4.0) -> int:
    """Pixels of context a feature needs on each side (largest kernel plus tensor smoothing).

    Features of a crop equal those of the full image wherever the crop extends this far
    beyond the pixel (or reaches the image border).

    Examples
    --------
    >>> feature_margin(), feature_margin((1.0, 2.0))
    (60, 12)
    """
    sig = _check_sigmas(sigmas)
    return max([_radius(sig[0], truncate)] +
               [_radius(s, truncate) + _radius(s / 2.0, truncate) for s in sig[1:]])


def _kernels(sigma: float, truncate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian kernel and its first and second derivatives, as in scipy.ndimage."""
    r = _radius(sigma, truncate)
    x = np.arange(-r, r + 1, dtype=np.float64)
    s2 = float(sigma) ** 2
    phi = np.exp(-0.5 * x * x / s2)
    phi /= phi.sum()
    d1 = -x / s2 * phi
    d2 = (x * x / s2 - 1.0) / s2 * phi
    # scipy's correlate1d uses the kernel reversed w.r.t. convolution; gaussian_filter1d
    # passes weights[::-1], which flips the sign of the odd first derivative only.
    return phi, d1[::-1].copy(), d2


def _corr(a: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    return ndi.correlate1d(a, w, axis=axis, output=np.float32, mode="reflect")


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray, out1: np.ndarray, out2: np.ndarray) -> None:
    """Eigenvalues (largest first) of the symmetric 2x2 tensors [[a, b], [b, c]], in place.

    ``a``, ``b`` and ``c`` are overwritten.
    """
    np.add(a, c, out=out1)
    out1 *= 0.5                      # tr / 2
    np.subtract(a, c, out=a)
    a *= 0.5                         # (a - c) / 2
    np.multiply(a, a, out=a)
    np.multiply(b, b, out=b)
    np.add(a, b, out=a)
    np.sqrt(a, out=a)                # sqrt(((a - c)/2)^2 + b^2) >= 0: no clipping needed (R4)
    np.subtract(out1, a, out=out2)
    out1 += a


def _image_features(image: np.ndarray, sigmas: tuple[float, ...], truncate: float,
                    out: np.ndarray) -> None:
    """Fill ``out`` (n_features, H, W) with the feature bank of one 2-D float32 image."""
    k0, _, _ = _kernels(sigmas[0], truncate)
    out[0] = _corr(_corr(image, k0, 1), k0, 0)
    prev = out[0]
    f = 1
    for s in sigmas[1:]:
        g0, g1, g2 = _kernels(s, truncate)
        tx0 = _corr(image, g0, 1)   # smoothed along x
        tx1 = _corr(image, g1, 1)   # d/dx
        tx2 = _corr(image, g2, 1)   # d2/dx2
        smooth = out[f]
        ndi.correlate1d(tx0, g0, axis=0, output=smooth, mode="reflect")
        ix = _corr(tx1, g0, 0)
        iy = _corr(tx0, g1, 0)
        ixx = _corr(tx2, g0, 0)
        iyy = _corr(tx0, g2, 0)
        ixy = _corr(tx1, g1, 0)
        del tx0, tx1, tx2
        np.add(ixx, iyy, out=out[f + 1])                       # Laplacian of Gaussian
        np.subtract(prev, smooth, out=out[f + 3])              # DoG: G_prev - G_s (R3)
        # structure tensor: outer smoothing at s / 2 (ilastik's convention)
        r0, _, _ = _kernels(s / 2.0, truncate)
        pxx = ix * ix
        pyy = iy * iy
        np.multiply(ix, iy, out=ix)
        np.add(pxx, pyy, out=iy)
        np.sqrt(iy, out=out[f + 2])                            # gradient magnitude
        axx = _corr(_corr(pxx, r0, 1), r0, 0)
        axy = _corr(_corr(ix, r0, 1), r0, 0)
        ayy = _corr(_corr(pyy, r0, 1), r0, 0)
        _eig2(axx, axy, ayy, out[f + 4], out[f + 5])
        _eig2(ixx, ixy, iyy, out[f + 6], out[f + 7])
        prev = smooth
        f += 8


def pixel_features(images: np.ndarray, sigmas: Sequence[float] = DEFAULT_SIGMAS, truncate: float = 4.0,
                   n_jobs: int | None = None) -> np.ndarray:
    """The feature bank of a 2-D image or of each 2-D image of a stack.

    Parameters
    ----------
    images : ndarray of shape (H, W) or (N, H, W)
        Image(s); converted to float32. Slices of a stack are treated independently (2-D).
    sigmas : sequence of float
        Increasing scales; ilastik's defaults by default.
    truncate : float
        Kernels are cut at ``truncate * sigma`` pixels (SciPy's default 4.0).
    n_jobs : int, optional
        Threads over the images of a stack (SciPy's filters release the GIL); ``None`` or
        1 = one thread, -1 = all cores.

    Returns
    -------
    ndarray of float32, shape (n_features, H, W) or (N, n_features, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> pixel_features(img).shape
    (49, 32, 32)
    >>> from scipy import ndimage as ndi
    >>> f = pixel_features(img, sigmas=(1.0, 2.0))
    >>> bool(np.allclose(f[1], ndi.gaussian_filter(img, 2.0), atol=1e-5))
    True
    """
    sig = _check_sigmas(sigmas)
    arr = np.asarray(images, dtype=np.float32)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"images must be (H, W) or (N, H, W), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("images hold NaN or inf values; repair them before computing features")
    out = np.empty((arr.shape[0], n_features(sig), arr.shape[1], arr.shape[2]), dtype=np.float32)
    workers = _n_workers(n_jobs)

    def work(i: int) -> None:
        _image_features(np.ascontiguousarray(arr[i]), sig, truncate, out[i])

    if workers > 1 and arr.shape[0] > 1:
        with ThreadPoolExecutor(min(workers, arr.shape[0])) as ex:
            list(ex.map(work, range(arr.shape[0])))
    else:
        for i in range(arr.shape[0]):
            work(i)
    return out[0] if single else out


def _n_workers(n_jobs: int | None) -> int:
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    if n_jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return max(1, n_jobs)
