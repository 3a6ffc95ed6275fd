"""Per-pixel uncertainty measures from Monte-Carlo samples of class probabilities.

Every function takes ``probs`` of shape ``(T, ..., C, H, W)``: ``T`` stochastic forward
passes (MC-dropout samples) of softmax probabilities over ``C`` classes, with any number of
batch axes in between, and returns a map of shape ``(..., H, W)``. NumPy arrays and torch
tensors are both accepted; the result has the input's type. Logarithms use
``log(p + 1e-12)`` so that zero probabilities are safe.

Measures (Gal et al. 2017; Kendall et al. 2015; Houlsby et al. 2011):

* :func:`predictive_entropy` -- ``H[p̄] = -Σ_c p̄_c log p̄_c`` with ``p̄ = mean_t p_t``: total
  uncertainty (noise in the data *and* doubt of the model).
* :func:`mutual_information` (BALD) -- ``H[p̄] - mean_t H[p_t]``: the part of the entropy due
  to disagreement between samples, i.e. the doubt of the model only. It is ``>= 0`` and
  ``<= H[p̄]``, and exactly 0 when all samples agree. Prefer it when the question is "which
  labels would teach the model most".
* :func:`variance` -- ``Σ_c Var_t(p_{t,c})`` (the score of Cao et al.'s code; for two classes
  this is ``2 Var_t(p_fg)``).
* :func:`variation_ratio` -- ``1 - (count of the modal arg-max label) / T``.

Examples
--------
>>> import numpy as np
>>> from biodatacentric.hunt.uncertainty import mutual_information, predictive_entropy
>>> p = np.array([[0.9, 0.1], [0.1, 0.9]])[:, :, None, None]   # T=2 samples, C=2, 1x1 image
>>> bool(mutual_information(p)[0, 0] > 0.3)
True
>>> same = np.repeat(p[:1], 5, axis=0)                          # 5 identical samples
>>> float(mutual_information(same)[0, 0])
0.0
>>> float(predictive_entropy(same)[0, 0]) > 0                   # still uncertain (aleatoric)
True
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = ["EPS", "MEASURES", "predictive_entropy", "mutual_information", "variance",
           "variation_ratio", "compute_measures", "get_measure"]

EPS = 1e-12


def _as_tensor(probs: Any) -> tuple[torch.Tensor, bool]:
    is_numpy = not isinstance(probs, torch.Tensor)
    t = torch.from_numpy(np.asarray(probs)) if is_numpy else probs
    if t.ndim < 4:
        raise ValueError(f"probs must have shape (T, ..., C, H, W) with at least 4 axes, got {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[-3] < 2:
        raise ValueError(f"probs need T >= 1 samples and C >= 2 classes, got shape {tuple(t.shape)}; "
                         "turn one sigmoid output p into two classes (1 - p, p)")
    if not t.is_floating_point():
        t = t.float()
    elif t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t, is_numpy


def _out(t: torch.Tensor, is_numpy: bool) -> Any:
    return t.cpu().numpy() if is_numpy else t


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * torch.log(p + EPS)).sum(dim=dim)


def predictive_entropy(probs: Any) -> Any:
    """Entropy of the mean prediction, ``-Σ_c p̄_c log(p̄_c + 1e-12)``; shape ``(..., H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])[:, :, None, None]   # T=3 samples, C=2, 1x1 image
    >>> h = predictive_entropy(p)                     # entropy of the mean (0.6, 0.4)
    >>> h.shape, round(float(h[0, 0]), 3)
    ((1, 1), 0.673)
    """
    t, is_np = _as_tensor(probs)
    return _out(_entropy(t.mean(dim=0), dim=-3).clamp_min(0.0), is_np)


def mutual_information(probs: Any) -> Any:
    """BALD: entropy of the mean minus the mean entropy of the samples (clipped at 0).

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])[:, :, None, None]   # T=3 samples, C=2, 1x1 image
    >>> round(float(mutual_information(p)[0, 0]), 3)
    0.289
    >>> float(mutual_information(p[[0, 0, 0]])[0, 0])   # samples agree: no model doubt
    0.0
    """
    t, is_np = _as_tensor(probs)
    h = _entropy(t.mean(dim=0), dim=-3)
    expected = _entropy(t, dim=-3).mean(dim=0)
    mi = (h - expected).clamp_min(0.0)
    return _out(torch.minimum(mi, h.clamp_min(0.0)), is_np)


def variance(probs: Any) -> Any:
    """Sum over classes of the variance over samples (population variance, ``ddof=0``).

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])[:, :, None, None]   # T=3 samples, C=2, 1x1 image
    >>> round(float(variance(p)[0, 0]), 3)            # 2 * Var(0.1, 0.9, 0.2)
    0.253
    """
    t, is_np = _as_tensor(probs)
    return _out(t.var(dim=0, unbiased=False).sum(dim=-3), is_np)


def variation_ratio(probs: Any) -> Any:
    """``1 - (count of the most frequent arg-max label over the T samples) / T``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])[:, :, None, None]   # T=3 samples, C=2, 1x1 image
    >>> round(float(variation_ratio(p)[0, 0]), 3)     # labels 0, 1, 0: 1 - 2/3
    0.333
    """
    t, is_np = _as_tensor(probs)
    n_samples, n_classes = t.shape[0], t.shape[-3]
    labels = _argmax_classes(t)  # (T, ..., H, W)
    counts = torch.stack([(labels == c).sum(dim=0) for c in range(n_classes)], dim=0)
    return _out(1.0 - counts.max(dim=0).values.float() / n_samples, is_np)


MEASURES: dict[str, Callable[[Any], Any]] = {
    "entropy": predictive_entropy,
    "mutual_information": mutual_information,
    "variance": variance,
    "variation_ratio": variation_ratio,
}

_ALIASES = {"bald": "mutual_information", "mi": "mutual_information", "predictive_entropy": "entropy"}


def get_measure(name: str) -> str:
    """Canonical measure name for ``name`` (accepts ``"bald"``, ``"mi"``, ``"predictive_entropy"``).

    Examples
    --------
    >>> get_measure("bald"), get_measure("predictive_entropy"), get_measure("Variance")
    ('mutual_information', 'entropy', 'variance')
    """
    if not isinstance(name, str):
        raise TypeError(f"measure must be a string, got {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in MEASURES:
        raise ValueError(f"measure={name!r} is not one of {sorted(MEASURES)} (aliases: {sorted(_ALIASES)})")
    return key


def _argmax_classes(t: torch.Tensor) -> torch.Tensor:
    """``t.argmax(dim=-3)`` as uint8 (first class on ties), by running comparisons.

    ``argmax`` along a short, strided class axis is very slow on CPU (it dominated
    decoder-only hunting); ``C - 1`` elementwise comparisons give the same labels.
    """
    best = t.select(-3, 0)
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=t.device)
    for c in range(1, t.shape[-3]):
        cand = t.select(-3, c)
        better = cand > best
        labels.masked_fill_(better, c)
        best = torch.where(better, cand, best)
    return labels


def compute_measures(probs: torch.Tensor, measures: Any = None, labels: bool = True) -> dict[str, torch.Tensor]:
    """Several measures at once (sharing the mean and the entropies) from ``(T, ..., C, H, W)``.

    Returns a dict with ``"mean_probability"`` (the mean probability of the last class, the
    foreground for binary segmentation), the requested measures (all by default), and -- with
    ``labels=True`` -- ``"labels"``, the per-sample arg-max labels ``(T, ..., H, W)`` as uint8;
    ``"foreground_class"`` (``C - 1``, an int) always.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> probs = torch.softmax(torch.randn(5, 2, 2, 8, 8), dim=2)   # T=5 samples, 2 patches, C=2, 8x8
    >>> out = compute_measures(probs, measures=["bald", "variance"])
    >>> sorted(out)
    ['foreground_class', 'labels', 'mean_probability', 'mutual_information', 'variance']
    >>> tuple(out["mutual_information"].shape), tuple(out["labels"].shape), out["foreground_class"]
    ((2, 8, 8), (5, 2, 8, 8), 1)
    """
    t, _ = _as_tensor(probs)
    names = list(MEASURES) if measures is None else [get_measure(m) for m in measures]
    mean = t.mean(dim=0)
    out: dict[str, torch.Tensor] = {"mean_probability": mean.select(-3, t.shape[-3] - 1)}
    h = _entropy(mean, dim=-3).clamp_min(0.0)
    if "entropy" in names:
        out["entropy"] = h
    if "mutual_information" in names:
        mi = (h - _entropy(t, dim=-3).mean(dim=0)).clamp_min(0.0)
        out["mutual_information"] = torch.minimum(mi, h)
    if "variance" in names:
        out["variance"] = t.var(dim=0, unbiased=False).sum(dim=-3)
    if labels or "variation_ratio" in names:
        lab = _argmax_classes(t)
        if "variation_ratio" in names:
            counts = torch.stack([(lab == c).sum(dim=0) for c in range(t.shape[-3])], dim=0)
            out["variation_ratio"] = 1.0 - counts.max(dim=0).values.float() / t.shape[0]
        if labels:
            out["labels"] = lab
    out["foreground_class"] = t.shape[-3] - 1  # type: ignore[assignment]
    return out
