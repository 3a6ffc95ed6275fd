"""RCA's pixel sampling: the reverse classifier's training pixels, tiled regions and the
reference features on the stride grid (cached on the monitor)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._utils import progress
from ..data.patches import _positions
from .features import _check_sigmas, _n_workers, feature_margin, n_features, pixel_features

def training_sample(mon: Any, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced pixel sample from all slices and the features of those pixels."""
    rng = np.random.default_rng(seed)
    regions = plan_regions(mon, mask, rng)
    # candidate pixels = interiors of the regions; sample per class
    counts = []
    for (z, y0, y1, x0, x1, *_rest) in regions:
        m = mask[z, y0:y1, x0:x1]
        fg = int(np.count_nonzero(m))
        counts.append((fg, m.size - fg))
    counts_arr = np.asarray(counts, dtype=np.int64).reshape(-1, 2)
    half = int(mon.n_pixels) // 2
    picks: list[list[np.ndarray]] = [[] for _ in regions]
    for cls_col, cls_val in ((0, 1), (1, 0)):
        total = int(counts_arr[:, cls_col].sum())
        take = min(half if cls_val == 1 else int(mon.n_pixels) - half, total)
        if take == 0:
            continue
        chosen = np.sort(rng.choice(total, take, replace=False))
        bounds = np.concatenate([[0], np.cumsum(counts_arr[:, cls_col])])
        for r in range(len(regions)):
            lo, hi = np.searchsorted(chosen, [bounds[r], bounds[r + 1]])
            if hi > lo:
                z, y0, y1, x0, x1, *_ = regions[r]
                flat = np.flatnonzero(mask[z, y0:y1, x0:x1].ravel() == cls_val)
                picks[r].append(flat[chosen[lo:hi] - bounds[r]])
    F = n_features(mon.sigmas)
    feats_out, labels_out = [], []
    stats = []

    def work(r: int) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        z, y0, y1, x0, x1, cy0, cy1, cx0, cx1 = regions[r]
        need = mon.feature_scaling == "per_image"
        if not picks[r] and not need:
            return np.empty((0, F), np.float32), np.empty(0, np.uint8), None
        crop = image[z, cy0:cy1, cx0:cx1]
        f = pixel_features(crop, mon.sigmas)[:, y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        f = f.reshape(F, -1)
        st = (f.sum(axis=1, dtype=np.float64), np.square(f, dtype=np.float64).sum(axis=1), f.shape[1]) \
            if need else None
        idx = np.concatenate(picks[r]) if picks[r] else np.empty(0, np.int64)
        lab = mask[z, y0:y1, x0:x1].ravel()[idx]
        return np.ascontiguousarray(f[:, idx].T), lab, st

    workers = _n_workers(mon.n_jobs)
    if workers > 1 and len(regions) > 1:
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(work, range(len(regions))))
    else:
        results = [work(r) for r in range(len(regions))]
    for f, lab, st in results:
        feats_out.append(f)
        labels_out.append(lab)
        if st is not None:
            stats.append(st)
    X = np.concatenate(feats_out)
    y = np.concatenate(labels_out).astype(np.uint8)
    if mon.feature_scaling == "per_image":
        s1 = sum(s[0] for s in stats)
        s2 = sum(s[1] for s in stats)
        cnt = sum(s[2] for s in stats)
        mu = s1 / cnt
        sd = np.sqrt(np.maximum(s2 / cnt - mu * mu, 0.0))
        X = ((X - mu) / np.maximum(sd, 1e-6)).astype(np.float32)
    return X, y


def plan_regions(mon: Any, mask: np.ndarray, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Regions (z, y0, y1, x0, x1, cy0, cy1, cx0, cx1): interiors to sample and crops to filter."""
    Z, H, W = mask.shape
    T = int(mon.tile_size)
    ty = _positions(H, min(T, H), min(T, H))
    tx = _positions(W, min(T, W), min(T, W))
    n_all = Z * len(ty) * len(tx)
    if mon.n_tiles is None or n_all <= mon.n_tiles or (len(ty) == 1 and len(tx) == 1):
        return [(z, 0, H, 0, W, 0, H, 0, W) for z in range(Z)]
    margin = feature_margin(mon.sigmas)
    th, tw = min(T, H), min(T, W)
    # spread the tiles over the slices as evenly as possible
    n_tiles = int(mon.n_tiles)
    per_slice = np.full(Z, n_tiles // Z)
    per_slice[rng.permutation(Z)[: n_tiles % Z]] += 1
    minority = 1 if np.count_nonzero(mask) * 2 <= mask.size else 0
    regions = []
    for z in range(Z):
        k = int(min(per_slice[z], len(ty) * len(tx)))
        if k == 0:
            continue
        cand = [(y, x) for y in ty for x in tx]
        counts = np.array([np.count_nonzero(mask[z, y:y + th, x:x + tw] == minority) for y, x in cand],
                          dtype=np.float64)
        p = np.full(len(cand), 1.0 / len(cand))
        if counts.sum() > 0:
            p = 0.5 * p + 0.5 * counts / counts.sum()
        for j in rng.choice(len(cand), k, replace=False, p=p):
            y, x = cand[int(j)]
            regions.append((z, y, y + th, x, x + tw, max(0, y - margin), min(H, y + th + margin),
                            max(0, x - margin), min(W, x + tw + margin)))
    return regions


def scale_training(mon: Any, X: np.ndarray) -> tuple[np.ndarray, Any, Any]:
    if mon.feature_scaling != "shared":
        return X, None, None
    mu = X.mean(axis=0).astype(np.float32)
    sd = np.maximum(X.std(axis=0), 1e-6).astype(np.float32)
    return (X - mu) / sd, mu, sd


def reference_features(mon: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Cached reference features on the stride grid: (n, m, F), masks (n, m), per-ref stats."""
    cache = getattr(mon, "_ref_cache", None)
    key = (tuple(_check_sigmas(mon.sigmas)), int(mon.reference_stride), mon.feature_scaling)
    if cache is not None and cache[0] == key:
        return cache[1]
    s = int(mon.reference_stride)
    imgs = mon.reference_images_
    n, h, w = imgs.shape
    gh, gw = len(range(0, h, s)), len(range(0, w, s))
    F = n_features(mon.sigmas)
    feats = np.empty((n, gh * gw, F), dtype=np.float32)
    chunk = 8
    for start in progress(range(0, n, chunk), desc="reference features", enabled=mon.verbose,
                          total=(n + chunk - 1) // chunk):
        block = pixel_features(imgs[start:start + chunk], mon.sigmas, n_jobs=mon.n_jobs)
        block = block[:, :, ::s, ::s]
        feats[start:start + len(block)] = block.reshape(len(block), F, -1).transpose(0, 2, 1)
    means = feats.mean(axis=1, dtype=np.float64)   # appearance descriptor of each reference
    if mon.feature_scaling == "per_image":
        mu = feats.mean(axis=1, keepdims=True)
        sd = feats.std(axis=1, keepdims=True)
        feats -= mu
        feats /= np.maximum(sd, 1e-6)
    masks = mon.reference_masks_[:, ::s, ::s].reshape(n, -1)
    out = (feats, masks, means)
    mon._ref_cache = (key, out)
    return out
