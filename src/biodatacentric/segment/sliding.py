"""Sliding-window inference over whole slices and stacks with probability blending.

Windows of the training patch size slide over every slice with a step of
``window * (1 - overlap)``; the last window of a row or column is shifted to end at the edge
(the same placement as MONAI's ``sliding_window_inference``). Each window's *softmax
probabilities* are multiplied by a blending weight (a Gaussian centred on the window,
``sigma = 0.125 * window`` as in nnU-Net and MONAI, or a constant) and accumulated;
the sum is divided by the summed weights. Hard votes are never summed (pitfall T5).

Windows from consecutive slices are batched together; only the slices whose windows are in
flight are held as float32 accumulators, so memory is bounded by the output plus a few
slices, whatever the stack depth.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .._utils import progress as _progress

__all__ = ["gaussian_weights", "window_starts", "sliding_window_predict"]


def gaussian_weights(window: tuple[int, int], sigma_scale: float = 0.125, blend: str = "gaussian") -> torch.Tensor:
    """Blending weights of shape ``window``: a separable Gaussian (peak ~1, clamped at
    ``max(min, 1e-3)``) or ones for ``blend="constant"``.

    Examples
    --------
    >>> w = gaussian_weights((9, 9))
    >>> tuple(w.shape), round(float(w[4, 4]), 3), round(float(w.min()), 3)   # peak at the centre
    ((9, 9), 1.0, 0.001)
    >>> float(gaussian_weights((4, 6), blend="constant").sum())
    24.0
    """
    if blend == "constant":
        return torch.ones(window, dtype=torch.float32)
    if blend != "gaussian":
        raise ValueError(f"blend={blend!r} must be 'gaussian' or 'constant'")
    out = None
    for i, n in enumerate(window):
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32)
        g = torch.exp(x ** 2 / (-2 * (n * sigma_scale) ** 2))
        out = g if i == 0 else out.unsqueeze(-1) * g[None]
    floor = max(float(out.min()), 1e-3)
    return out.clamp_(min=floor)


def window_starts(length: int, size: int, step: int) -> list[int]:
    """Window starts covering ``[0, length)`` with the last window ending at the edge.

    Examples
    --------
    >>> window_starts(100, 32, 16)                       # the last start is shifted to 100 - 32
    [0, 16, 32, 48, 64, 68]
    >>> window_starts(20, 32, 16)                        # shorter than the window: one window
    [0]
    """
    if length <= size:
        return [0]
    n = int(np.ceil((length - size) / step)) + 1
    return [min(i * step, length - size) for i in range(n)]


def sliding_window_predict(slices: Callable[[int], np.ndarray], n_slices: int, shape: tuple[int, int],
                           predict: Callable[[torch.Tensor], torch.Tensor], n_classes: int,
                           window: tuple[int, int], overlap: float = 0.5, blend: str = "gaussian",
                           batch_size: int = 16, return_proba: bool = True, sigma_scale: float = 0.125,
                           progress: bool | None = None, stats: dict | None = None, out: Any = None) -> Any:
    """Blend window probabilities over ``n_slices`` slices of ``shape``.

    Parameters
    ----------
    slices : callable(z) -> float32 array (Y, X)
        Returns slice ``z`` already normalised (read lazily, one at a time).
    predict : callable(tensor (B, 1, h, w)) -> tensor (B, C, h, w)
        Window probabilities (softmax already applied), float32.
    return_proba : bool
        Return ``(Z, C, Y, X)`` float32 probabilities, else ``(Z, Y, X)`` uint8 labels.
    stats : dict, optional
        Filled with ``max_slices_in_flight`` (peak number of slice accumulators held).
    out : array-like, optional
        Where to write the result, one slice at a time as each slice is finished (e.g. a
        Zarr array chunked by slice, for stacks larger than memory); must have the shape and
        dtype of the result. Returned instead of a new array.

    Examples
    --------
    >>> import numpy as np, torch
    >>> stack = np.random.default_rng(0).random((2, 40, 50), dtype=np.float32)
    >>> def predict(x):                                  # a toy "model": foreground where x > 0.5
    ...     fg = torch.sigmoid(x - 0.5)
    ...     return torch.cat([1 - fg, fg], dim=1)
    >>> proba = sliding_window_predict(lambda z: stack[z], 2, (40, 50), predict, n_classes=2, window=(32, 32))
    >>> proba.shape, proba.dtype, bool(np.allclose(proba.sum(axis=1), 1))
    ((2, 2, 40, 50), dtype('float32'), True)
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap} must lie in [0, 1)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    H, W = shape
    wh, ww = window
    # pad slices smaller than the window (zeros, split evenly like MONAI)
    ph, pw = max(wh - H, 0), max(ww - W, 0)
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    Hp, Wp = H + ph, W + pw
    step_h, step_w = max(int(wh * (1 - overlap)), 1), max(int(ww * (1 - overlap)), 1)
    ys, xs = window_starts(Hp, wh, step_h), window_starts(Wp, ww, step_w)
    positions = [(y, x) for y in ys for x in xs]
    weight = gaussian_weights(window, sigma_scale, blend)
    norm = torch.zeros((Hp, Wp), dtype=torch.float32)
    for y, x in positions:
        norm[y:y + wh, x:x + ww] += weight
    inv_norm = 1.0 / norm
    want = ((n_slices, n_classes, H, W), np.float32) if return_proba else ((n_slices, H, W), np.uint8)
    if out is None:
        out = np.empty(*want)
    elif tuple(out.shape) != want[0] or np.dtype(out.dtype) != np.dtype(want[1]):
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected {want[0]} and "
                         f"{np.dtype(want[1])}")

    acc: dict[int, torch.Tensor] = {}
    images: dict[int, torch.Tensor] = {}
    done_windows: dict[int, int] = {}
    peak = [0]

    def get_image(z: int) -> torch.Tensor:
        if z not in images:
            img = torch.from_numpy(np.ascontiguousarray(slices(z), dtype=np.float32))
            if img.shape != (H, W):
                raise ValueError(f"slice {z} has shape {tuple(img.shape)}, expected {(H, W)}")
            if ph or pw:
                img = torch.nn.functional.pad(img, (pad[2], pad[3], pad[0], pad[1]))
            images[z] = img
            acc[z] = torch.zeros((n_classes, Hp, Wp), dtype=torch.float32)
            done_windows[z] = 0
            peak[0] = max(peak[0], len(acc))
        return images[z]

    def finish(z: int) -> None:
        a = acc.pop(z)
        images.pop(z)
        a.mul_(inv_norm)
        a = a[:, pad[0]:pad[0] + H, pad[2]:pad[2] + W]
        if return_proba:
            out[z] = a.numpy()
        else:
            out[z] = a.argmax(0).to(torch.uint8).numpy()

    jobs = ((z, y, x) for z in range(n_slices) for (y, x) in positions)
    n_jobs = n_slices * len(positions)
    n_batches = int(np.ceil(n_jobs / batch_size))
    batch: list[tuple[int, int, int]] = []

    def run(batch: list[tuple[int, int, int]]) -> None:
        x_in = torch.stack([get_image(z)[y:y + wh, x:x + ww] for z, y, x in batch])[:, None]
        prob = predict(x_in).float()
        for (z, y, x), p in zip(batch, prob):
            acc[z][:, y:y + wh, x:x + ww].addcmul_(p, weight)
            done_windows[z] += 1
            if done_windows[z] == len(positions):
                finish(z)

    bar = iter(_progress(range(n_batches), desc="predict_image", total=n_batches, enabled=progress))
    for job in jobs:
        batch.append(job)
        if len(batch) == batch_size:
            run(batch)
            next(bar, None)
            batch = []
    if batch:
        run(batch)
        next(bar, None)
    if stats is not None:
        stats["max_slices_in_flight"] = peak[0]
    return out
