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

__all__ = ["AGREEMENT_STATISTICS", "SAMPLINGS", "sample_tiles", "sample_foreground", "agreement_statistics"]

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


def agreement_statistics(probs: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The :data:`AGREEMENT_STATISTICS` of samples ``probs`` ``(T, ...)`` and a binary ``mask`` ``(...)``.

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
    m = np.asarray(mask).astype(bool)
    T = probs.shape[0]
    votes = probs > 0.5
    pair = [dice(votes[i], votes[j]) for i in range(T) for j in range(i + 1, T)]
    mean_p = probs.mean(axis=0)
    vote = mean_p > 0.5
    ent = _entropy(mean_p)
    n_in, n_out = int(m.sum()), int((~m).sum())
    ent_total = float(ent.sum())
    count = votes.sum(axis=0)
    unsure = (count > 0) & (count < T)
    share = n_in / m.size
    vote_share = float(vote.mean())
    return {
        "pairwise_dice": float(np.mean(pair)) if pair else 1.0,
        "sample_mask_dice": float(np.mean([dice(v, m) for v in votes])),
        "mean_mask_dice": dice(vote, m),
        "soft_mask_dice": float(2 * (mean_p * m).sum() / max(mean_p.sum() + n_in, 1e-9)) if (mean_p.sum() + n_in) > 0
        else 1.0,
        "uncertainty_in": float(ent[m].mean()) if n_in else 0.0,
        "uncertainty_out": float(ent[~m].mean()) if n_out else 0.0,
        "uncertainty_mass_in": float(ent[m].sum() / ent_total) if ent_total > 0 else 0.0,
        "unsure_share": float(unsure.sum() / max(int((m | vote).sum()), 1)),
        "mask_share": float(share),
        "share_ratio": float(np.log((share + 1e-4) / (vote_share + 1e-4))),
    }


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
