"""Input validation shared by the estimators. Errors name the parameter and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["check_embeddings", "as_index_mask", "check_axes", "check_image_and_mask",
           "check_binary_mask"]

_VALID_AXES = ("YX", "ZYX", "CYX", "CZYX", "ZCYX")


def check_embeddings(X: Any, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 ``(n, d)`` array of finite values."""
    if sparse.issparse(X):
        raise TypeError(f"{name} is a sparse matrix, and sparse input is not supported; pass a dense array "
                        f"({name}.toarray())")
    if np.iscomplexobj(X):
        raise ValueError(f"{name} holds complex values: Complex data not supported; pass real embeddings")
    try:
        arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be a numeric (n_samples, n_features) array ({exc})") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features); got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty: {arr.shape[0]} sample(s) and {arr.shape[1]} feature(s) "
                         f"(shape={arr.shape}) while a minimum of 1 is required; pass at least one sample and feature")
    if not np.all(np.isfinite(arr)):
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} holds NaN or inf in {bad} rows; remove or repair those samples")
    return np.ascontiguousarray(arr)


def as_index_mask(index: Any, n: int, name: str = "exclude") -> np.ndarray:
    """Turn ``None``, integer indices or a boolean mask into a boolean mask of length ``n``."""
    mask = np.zeros(n, dtype=bool)
    if index is None:
        return mask
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"boolean {name} must have length {n}, got shape {arr.shape}")
        return arr.copy()
    if arr.size == 0:
        return mask
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices or be a boolean mask, got dtype {arr.dtype}")
    arr = arr.ravel()
    if arr.min() < -n or arr.max() >= n:
        raise IndexError(f"{name} holds indices outside [0, {n})")
    mask[arr] = True
    return mask


def check_axes(axes: Any, ndim: int | None = None, *, source: str = "array") -> str:
    """Validate an axes string such as ``"ZYX"`` (and, if given, that it fits ``ndim``)."""
    if not isinstance(axes, str) or axes.upper() not in _VALID_AXES:
        raise ValueError(f"axes={axes!r} is not supported; use one of {', '.join(_VALID_AXES)}")
    axes = axes.upper()
    if ndim is not None and ndim != len(axes):
        raise ValueError(
            f"axes={axes!r} describes {len(axes)} dimensions but {source} has {ndim}; "
            "pass the axes that match the data (for example 'YX' for one image, 'ZYX' for a stack)")
    return axes


def check_binary_mask(mask: np.ndarray, *, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as uint8 {0, 1}; accepts bool, {0, 1} and {0, 255}."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating) and not np.all(np.isfinite(m)):
        raise ValueError(f"{name} holds NaN or inf; masks must be 0/1 labels")
    values = np.unique(m)
    if np.all(np.isin(values, (0, 1))):
        return m.astype(np.uint8, copy=False)
    if np.all(np.isin(values, (0, 255))):
        return (m > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
    raise ValueError(
        f"{name} must be binary (0/1 or 0/255) but holds the values {shown}; threshold it "
        "(mask > 0) or pass a label mask where labels are accepted")


def check_image_and_mask(image: Any, mask: Any, axes: str = "YX") -> tuple[np.ndarray, np.ndarray]:
    """Validate an image/mask pair and return float32 and uint8 arrays of shape (Z, Y, X)."""
    img = np.asarray(image)
    axes = check_axes(axes, img.ndim, source="image")
    if axes not in ("YX", "ZYX"):
        raise ValueError(f"axes={axes!r}: pass a single-channel image ('YX') or stack ('ZYX')")
    msk = np.asarray(mask)
    if msk.shape != img.shape:
        raise ValueError(f"predicted mask shape {msk.shape} does not match image shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number):
        raise TypeError(f"image must be numeric, got dtype {img.dtype}")
    img = img.astype(np.float32, copy=False)
    if not np.all(np.isfinite(img)):
        raise ValueError("image holds NaN or inf values; repair or mask them before scoring")
    msk = check_binary_mask(msk, name="predicted mask")
    if axes == "YX":
        img, msk = img[None], msk[None]
    return img, msk
