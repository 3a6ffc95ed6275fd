"""The model's own agreement: stochastic samples of a segmenter and statistics of how they agree.

A trained segmenter is run ``T`` times on the same tiles: under test-time flips and 90 degree
rotations (the eight symmetries of the square), with its dropout switched on (MC dropout), or
both. Where the model is sure, the samples agree with each other and with the final mask; on
images unlike its training data they disagree. Zenk et al. (2024) found the pairwise Dice
between ensemble members the best label-free failure detector in medical segmentation; these
are the cheap single-model versions of it. All statistics pool the counts over the tiles
(one Dice per image, not a mean of per-tile Dice).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..hunt import dropout_modules, sampling_mode
from ..metrics import dice

__all__ = ["AGREEMENT_STATISTICS", "SAMPLINGS", "sample_tiles", "sample_foreground", "agreement_statistics",
           "agreement_counts", "statistics_from_counts"]

SAMPLINGS = ("flips", "dropout", "both")

#: Names of the agreement statistics, in the order of the calibration features.
AGREEMENT_STATISTICS = (
    "pairwise_dice",        # mean Dice between two samples
    "sample_mask_dice",     # mean Dice of one sample with the scored mask
    "mean_mask_dice",       # Dice of the sample vote (mean probability > 0.5) with the scored mask
    "soft_mask_dice",       # soft Dice of the mean probability with the scored mask
    "uncertainty_in",       # mean binary entropy of the mean probability inside the mask
    "uncertainty_out",      # ... outside the mask
    "uncertainty_mass_in",  # share of the entropy mass that lies inside the mask
    "unsure_share",         # pixels where the samples disagree, per pixel of mask or vote
    "mask_share",           # foreground share of the scored mask
    "share_ratio",          # log of mask share / vote share
)

#: statistics the estimate may only rise with under ``QualityMonitor(monotone=True)``
MONOTONE_STATISTICS = ("pairwise_dice", "sample_mask_dice", "mean_mask_dice", "soft_mask_dice")


def sample_tiles(image: np.ndarray, tile: tuple[int, int], n_tiles: int, seed: int) -> tuple[np.ndarray, list]:
    """``n_tiles`` tiles of shape ``tile`` from a ``(Z, Y, X)`` array, spread over the slices.

    Slices are visited in turn (slice ``i % Z`` for tile ``i``) at random positions; a slice
    smaller than ``tile`` is taken whole (reflect-padded). Returns ``(tiles, windows)`` with
    ``windows`` the ``(z, y, x)`` corners (to cut the same tiles from the mask).
    """
    rng = np.random.default_rng(seed)
    Z, H, W = image.shape
    th, tw = min(tile[0], H), min(tile[1], W)
    windows = []
    for i in range(int(n_tiles)):
        z = i % Z if n_tiles >= Z else int(np.round(i * (Z - 1) / max(n_tiles - 1, 1)))
        y = int(rng.integers(0, H - th + 1))
        x = int(rng.integers(0, W - tw + 1))
        windows.append((z, y, x))
    tiles = np.stack([image[z, y:y + th, x:x + tw] for z, y, x in windows])
    return np.ascontiguousarray(tiles, dtype=np.float32), [(z, y, x, th, tw) for z, y, x in windows]


def cut(array: np.ndarray, windows: list) -> np.ndarray:
    """The tiles ``windows`` (from :func:`sample_tiles`) of another ``(Z, Y, X)`` array."""
    return np.stack([array[z, y:y + h, x:x + w] for z, y, x, h, w in windows])


def _transform(x: torch.Tensor, t: int) -> torch.Tensor:
    x = torch.rot90(x, t % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if t % 8 >= 4 else x


def _untransform(x: torch.Tensor, t: int) -> torch.Tensor:
    if t % 8 >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(t % 4), dims=(-2, -1))


def sample_foreground(module: torch.nn.Module, tiles: np.ndarray, n_samples: int, sampling: str, seed: int,
                      batch_size: int = 32) -> np.ndarray:
    """``(T, n, h, w)`` float32 foreground probabilities (1 - background) of ``T`` samples.

    ``sampling="flips"``: sample ``t`` sees the tiles under symmetry ``t % 8`` of the square
    (identity first) and is mapped back; ``"dropout"``: every dropout module of ``module`` is
    switched on (MC dropout), other modules stay in eval mode; ``"both"``: symmetries with
    dropout on. The module's train/eval flags and the caller's torch random state are
    restored on exit.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r}; use one of {SAMPLINGS}")
    n, h, w = tiles.shape
    device = next(module.parameters()).device
    p = int(getattr(module, "patch_size", 1) or 1)
    out = np.empty((n_samples, n, h, w), dtype=np.float32)
    x_all = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))[:, None]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), sampling_mode(module), \
            torch.inference_mode():
        torch.manual_seed(int(seed))
        if sampling in ("dropout", "both"):
            for m in dropout_modules(module):
                m.train(True)
        for t in range(int(n_samples)):
            ti = t if sampling != "dropout" else 0
            for s in range(0, n, batch_size):
                x = _transform(x_all[s:s + batch_size], ti)
                hh, ww = x.shape[-2:]
                ph, pw = (-hh) % p, (-ww) % p
                if ph or pw:
                    x = F.pad(x, (0, pw, 0, ph), mode="replicate")
                prob = torch.softmax(module(x.to(device)).float(), dim=1)[..., :hh, :ww]
                fg = 1.0 - prob[:, 0]
                out[t, s:s + batch_size] = _untransform(fg, ti).cpu().numpy()
    return out


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def agreement_counts(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Additive sufficient statistics of samples ``probs`` ``(T, ...)`` and a binary ``mask``.

    The counts of several tiles (or references) add up: :func:`statistics_from_counts` of
    their sum is the statistics of the tiles pooled, which is how a whole stack is scored, and
    how :class:`~biodatacentric.monitor.QualityMonitor` builds pooled calibration rows.
    Layout: ``|v_i & v_j|`` for the ``T (T - 1) / 2`` sample pairs, ``|v_i|`` and
    ``|v_i & mask|`` for each sample, then :data:`_TAIL` (vote, soft and entropy sums).
    """
    m = np.asarray(mask).astype(bool)
    T = probs.shape[0]
    votes = (probs > 0.5).reshape(T, -1)
    mf = m.ravel()
    v = votes.astype(np.float32)
    gram = v @ v.T  # |v_i & v_j| (exact in float32 below 2**24 pixels per block)
    iu = np.triu_indices(T, 1)
    mean_p = probs.mean(axis=0).ravel()
    vote = mean_p > 0.5
    ent = _entropy(mean_p)
    count = votes.sum(axis=0)
    unsure = (count > 0) & (count < T)
    tail = [float(mf.sum()), float(mf.size), float(vote.sum()), float((vote & mf).sum()),
            float(mean_p[mf].sum()), float(mean_p.sum()), float(ent[mf].sum()), float(ent.sum()),
            float(unsure.sum()), float((mf | vote).sum())]
    return np.concatenate([gram[iu].astype(np.float64), np.diag(gram).astype(np.float64),
                           (votes & mf).sum(axis=1).astype(np.float64), np.asarray(tail)])


#: names of the last entries of :func:`agreement_counts`
_TAIL = ("n_in", "n", "vote", "vote_in", "soft_in", "soft", "ent_in", "ent", "unsure", "union")


def _dice_counts(inter: Any, a: Any, b: Any) -> Any:
    total = np.asarray(a, dtype=np.float64) + b
    return np.where(total > 0, 2.0 * np.asarray(inter, dtype=np.float64) / np.maximum(total, 1e-12), 1.0)


def statistics_from_counts(counts: np.ndarray, n_samples: int) -> dict[str, float]:
    """The :data:`AGREEMENT_STATISTICS` from (summed) :func:`agreement_counts` of ``n_samples`` samples."""
    T = int(n_samples)
    c = np.asarray(counts, dtype=np.float64)
    n_pairs = T * (T - 1) // 2
    pairs, sizes, with_mask = c[:n_pairs], c[n_pairs:n_pairs + T], c[n_pairs + T:n_pairs + 2 * T]
    t = dict(zip(_TAIL, c[n_pairs + 2 * T:]))
    iu = np.triu_indices(T, 1)
    n_in, n = t["n_in"], t["n"]
    n_out = n - n_in
    share = n_in / n
    return {
        "pairwise_dice": float(np.mean(_dice_counts(pairs, sizes[iu[0]], sizes[iu[1]]))) if n_pairs else 1.0,
        "sample_mask_dice": float(np.mean(_dice_counts(with_mask, sizes, n_in))),
        "mean_mask_dice": float(_dice_counts(t["vote_in"], t["vote"], n_in)),
        "soft_mask_dice": float(2 * t["soft_in"] / (t["soft"] + n_in)) if (t["soft"] + n_in) > 0 else 1.0,
        "uncertainty_in": float(t["ent_in"] / n_in) if n_in else 0.0,
        "uncertainty_out": float((t["ent"] - t["ent_in"]) / n_out) if n_out else 0.0,
        "uncertainty_mass_in": float(t["ent_in"] / t["ent"]) if t["ent"] > 0 else 0.0,
        "unsure_share": float(t["unsure"] / max(t["union"], 1.0)),
        "mask_share": float(share),
        "share_ratio": float(np.log((share + 1e-4) / (t["vote"] / n + 1e-4))),
    }


def agreement_statistics(probs: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The :data:`AGREEMENT_STATISTICS` of samples ``probs`` ``(T, ...)`` and a binary ``mask`` ``(...)``.

    All counts are pooled over the tiles (one Dice per image, not a mean of per-tile Dice).

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((1, 8, 8), np.uint8); mask[0, 2:6, 2:6] = 1
    >>> same = np.repeat(mask[None].astype(np.float32), 4, axis=0)        # 4 samples, all agree
    >>> s = agreement_statistics(same, mask)
    >>> s["pairwise_dice"], s["sample_mask_dice"], round(s["share_ratio"], 3)
    (1.0, 1.0, 0.0)
    >>> agreement_statistics(same, 1 - mask)["sample_mask_dice"]
    0.0
    """
    return statistics_from_counts(agreement_counts(probs, mask), probs.shape[0])


def statistics_vector(stats: dict[str, float]) -> np.ndarray:
    return np.array([stats[k] for k in AGREEMENT_STATISTICS], dtype=np.float64)


def check_module(segmenter: Any) -> torch.nn.Module:
    """The fitted torch module of ``segmenter`` (a fitted :class:`TransUNetSegmenter` or an ``nn.Module``)."""
    if isinstance(segmenter, torch.nn.Module):
        return segmenter
    module = getattr(segmenter, "module_", None)
    if not isinstance(module, torch.nn.Module):
        raise ValueError("segmenter must be a fitted TransUNetSegmenter (with module_) or a torch module "
                         "returning class logits (B, C, h, w); fit the segmenter first")
    return module
