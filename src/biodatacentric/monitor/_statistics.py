"""The RCA statistics: per-rule aggregates of the reverse Dice and the mask statistics.

:data:`STATISTICS` names them in the order the self-calibration reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..metrics import dice_per_sample
from ._sampling import reference_features

#: names of the RCA statistics computed for every score (the calibration's inputs)
STATISTICS: tuple[str, ...] = tuple(
    f"{rule}_{agg}" for rule in ("balanced", "prior") for agg in ("max", "mean", "top_k", "max_corrected", "share")
) + ("balanced_near_mean", "prior_near_mean", "near_distance", "self_balanced", "self_prior",
     "foreground_share", "boundary_share", "intensity_auc", "intensity_dice", "intensity_auc_excess",
     "intensity_dice_excess", "ridge_auc_excess", "boundary_share_excess", "fragment_share_excess")


def _statistics(per_rule: dict, ref_masks: np.ndarray, pi: float, info: dict, top_k: int) -> dict:
    """RCA statistics of one score: aggregates of the per-reference Dice under both decision
    rules, the median log ratio of predicted to true reference foreground share, and the
    self-consistency of the reverse classifier on its own training pixels."""
    out: dict[str, float] = {}
    tf = ref_masks.reshape(len(ref_masks), -1).mean(axis=1)
    for rule, (d, chance, pred) in per_rule.items():
        d = np.asarray(d, dtype=np.float64)
        gain = np.where(chance < 1.0, (d - chance) / np.maximum(1.0 - chance, 1e-12), d)
        pf = np.asarray(pred).reshape(len(pred), -1).mean(axis=1)
        out[f"{rule}_max"] = float(d.max())
        out[f"{rule}_mean"] = float(d.mean())
        out[f"{rule}_top_k"] = float(np.sort(d)[::-1][:min(top_k, len(d))].mean())
        out[f"{rule}_max_corrected"] = float(d[int(np.argmax(gain))])
        out[f"{rule}_share"] = float(np.median(np.log((pf + 1e-3) / (tf + 1e-3))))
        near = info.get("near")
        out[f"{rule}_near_mean"] = float(d[near].mean()) if near is not None else float("nan")
    out["self_balanced"] = float(info.get("self_balanced", float("nan")))
    out["self_prior"] = float(info.get("self_prior", float("nan")))
    out["near_distance"] = float(info.get("near_distance", float("nan")))
    out["foreground_share"] = float(pi)
    out["boundary_share"] = float(info.get("boundary_share", float("nan")))
    for k in ("intensity_auc", "intensity_dice", "intensity_auc_excess", "intensity_dice_excess",
              "ridge_auc_excess", "boundary_share_excess", "fragment_share_excess"):
        out[k] = float(info.get(k, float("nan")))
    return {k: out[k] for k in STATISTICS}


def _mask_values(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The intensity and shape values of a (Z, Y, X) image and mask that
    :meth:`RCAMonitor._mask_statistics` compares with the references' expert masks."""
    auc, best = _intensity_fit(image, mask)
    return {"intensity_auc": auc, "intensity_dice": best, "ridge_auc": _ridge_auc(image, mask),
            "boundary_share": _boundary_share(mask), "fragment_share": _fragment_share(mask)}


def _intensity_fit(image: np.ndarray, mask: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """ROC AUC of the per-slice smoothed (sigma 1) intensity for ``mask``, and the Dice of the
    best single intensity threshold; from two histograms, so O(pixels). NaN for single-class masks.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((1, 16, 16), np.float32); img[0, 4:12, 4:12] = 1.0
    >>> _intensity_fit(img, img > 0.5)                      # a mask that follows brightness
    (1.0, 1.0)
    >>> auc, best = _intensity_fit(img, np.roll(img > 0.5, 2, axis=2))  # one that does not
    >>> round(auc, 2), round(best, 2)
    (0.93, 0.75)
    """
    m = np.asarray(mask, dtype=bool)
    n_fg = int(np.count_nonzero(m))
    if n_fg == 0 or n_fg == m.size:
        return float("nan"), float("nan")
    return _histogram_fit(ndi.gaussian_filter(np.asarray(image, dtype=np.float32), (0, 1.0, 1.0)), m, bins)


def _histogram_fit(values: np.ndarray, mask: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """ROC AUC of ``values`` for ``mask`` and the Dice of the best threshold ``values >= t``,
    from two ``bins``-bin histograms (O(pixels)); NaN for single-class masks."""
    m = np.asarray(mask, dtype=bool)
    n_fg = int(np.count_nonzero(m))
    if n_fg == 0 or n_fg == m.size:
        return float("nan"), float("nan")
    sm = np.asarray(values, dtype=np.float32)
    lo, hi = float(sm.min()), float(sm.max())
    if hi <= lo:
        return 0.5, float(2 * n_fg / (n_fg + m.size))  # flat image: the all-foreground threshold
    b = np.minimum(((sm - lo) * (bins / (hi - lo))).astype(np.int64), bins - 1)
    fg = np.bincount(b[m], minlength=bins).astype(np.float64)
    bg = np.bincount(b[~m], minlength=bins).astype(np.float64)
    n_bg = float(m.size - n_fg)
    bg_below = np.concatenate([[0.0], np.cumsum(bg)[:-1]])
    auc = float((fg * (bg_below + 0.5 * bg)).sum() / (n_fg * n_bg))
    tp = np.cumsum(fg[::-1])[::-1]        # foreground at or above each bin
    fp = np.cumsum(bg[::-1])[::-1]
    best = float(np.max(2 * tp / (tp + fp + n_fg)))
    return auc, best


def _ridge_auc(image: np.ndarray, mask: np.ndarray, sigma: float = 2.0) -> float:
    """ROC AUC, for ``mask``, of the per-slice ridge strength ``max(0, -l_min)`` of the Hessian
    of the (Z, Y, X) image at ``sigma`` pixels: high on bright tubes, low on flat bright blobs.

    Computed on 2x2 block means (Hessian at ``sigma / 2``; the mask by majority) to cost a
    quarter; NaN for single-class masks.
    """
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)
    h, w = (img.shape[1] // 2) * 2, (img.shape[2] // 2) * 2
    if h == 0 or w == 0:
        return float("nan")

    def half(a: np.ndarray) -> np.ndarray:
        return a[:, :h, :w].reshape(len(a), h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    img, m = half(img), half(m) >= 0.5
    ridge = np.empty_like(img)
    s = sigma / 2.0
    for z, sl in enumerate(img):
        hyy = ndi.gaussian_filter(sl, s, order=(2, 0))
        hxx = ndi.gaussian_filter(sl, s, order=(0, 2))
        hxy = ndi.gaussian_filter(sl, s, order=(1, 1))
        ridge[z] = np.maximum(np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy ** 2) - 0.5 * (hxx + hyy), 0.0)
    return _histogram_fit(ridge, m)[0]


def _fragment_share(mask: np.ndarray, min_size: int = 16) -> float:
    """Share of foreground pixels in 2-D (per slice, 8-connected) fragments of fewer than
    ``min_size`` pixels: high for speckled masks (NaN without foreground)."""
    m = np.asarray(mask, dtype=bool)
    n = int(np.count_nonzero(m))
    if n == 0:
        return float("nan")
    small = 0
    for sl in m:
        labels, k = ndi.label(sl, structure=np.ones((3, 3), bool))
        if k:
            sizes = np.bincount(labels.ravel())[1:]
            small += int(sizes[sizes < min_size].sum())
    return small / n


def _boundary_share(mask: np.ndarray) -> float:
    """Share of foreground pixels with a background 4-neighbour in their slice (high for thin
    structures, where a one-pixel boundary error costs more Dice)."""
    m = np.asarray(mask, dtype=bool)
    n = int(np.count_nonzero(m))
    if n == 0:
        return float("nan")
    inner = m.copy()
    inner[:, 1:, :] &= m[:, :-1, :]
    inner[:, :-1, :] &= m[:, 1:, :]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    return 1.0 - np.count_nonzero(inner) / n


def _finite_median(values: np.ndarray) -> float:
    """Median of the non-NaN values (NaN when there are none), without a warning."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def _out_of_bag_probability(predictor: Any, X: np.ndarray) -> np.ndarray | None:
    """Foreground probability of each training row ``X`` from the trees of a bagged forest that
    did not see it (0.5 for a row every tree saw); None for other predictors.

    The same sums as scikit-learn's ``oob_decision_function_``, computed here so that fitting
    the forest never warns about rows without out-of-bag trees: ``warnings.catch_warnings``
    is not thread-safe, so silencing that warning fails under threaded schedulers."""
    classes = list(getattr(predictor, "classes_", []))
    if 1 not in classes:
        return None
    col = classes.index(1)
    oob = getattr(predictor, "oob_decision_function_", None)    # a user's forest with oob_score=True
    if oob is not None:
        return np.nan_to_num(np.asarray(oob)[:, col], nan=0.5)
    if not getattr(predictor, "bootstrap", False) or not hasattr(predictor, "estimators_samples_"):
        return None
    X = np.ascontiguousarray(X, dtype=np.float32)
    total = np.zeros(len(X))
    count = np.zeros(len(X), dtype=np.int64)
    for tree, inbag in zip(predictor.estimators_, predictor.estimators_samples_):
        out = np.ones(len(X), dtype=bool)
        out[inbag] = False
        total[out] += tree.predict_proba(X[out], check_input=False)[:, col]
        count[out] += 1
    return np.divide(total, count, out=np.full(len(X), 0.5), where=count > 0)


def mask_statistics(mon: Any, img: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray) -> dict:
    """How well the image explains the mask, and how its shape departs from the references' masks.

    *Intensity.* A segmenter that follows image brightness instead of the annotators'
    convention produces masks that RCA rates highly (its reverse classifier learns "bright
    is foreground", which also fits the references; pitfall R9). Such masks are explained by
    one intensity threshold better than expert masks are: ``intensity_auc`` (ROC AUC of the
    smoothed intensity for the mask) and ``intensity_dice`` (Dice of the best single
    threshold), see :func:`_intensity_fit`.

    *Shape.* Expert vessel masks cover ridges of the image (tubes) and have the references'
    typical width and few loose fragments. A mask that also covers bright blobs (leaked
    dye), that is thicker or thinner, or that is broken into specks differs from the
    references in these values even where RCA rates it highly: the ROC AUC of a ridge
    measure (:func:`_ridge_auc`), the boundary share (:func:`_boundary_share`) and the share
    of foreground in 2-D fragments of fewer than 16 pixels (:func:`_fragment_share`).

    Returns ``intensity_auc``, ``intensity_dice``, ``boundary_share`` and, for those and the
    ridge AUC and fragment share, the value minus its median over the used references'
    expert masks (``*_excess``; the shape values enter the calibration only as excesses).
    """
    values = _mask_values(img, mask)
    ref = reference_mask_values(mon)
    # NaN where a reference has no foreground; no warnings.catch_warnings (not thread-safe)
    excess = {f"{k}_excess": v - _finite_median(ref[k][ref_idx]) for k, v in values.items()}
    kept = ("intensity_auc", "intensity_dice", "boundary_share")
    return {**{k: values[k] for k in kept}, **excess}


def reference_mask_values(mon: Any) -> dict[str, np.ndarray]:
    """Per-reference values of :meth:`_mask_statistics` for the expert masks (cached; NaN
    where a reference has no foreground): keys ``intensity_auc``, ``intensity_dice``,
    ``ridge_auc``, ``boundary_share`` and ``fragment_share``."""
    cache = getattr(mon, "_ref_mask_values", None)
    if cache is None:
        rows = [_mask_values(im[None], m[None]) for im, m in zip(mon.reference_images_, mon.reference_masks_)]
        cache = mon._ref_mask_values = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return cache


def reference_dice(mon: Any, pred: np.ndarray, ref_idx: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred)
    full = mon.reference_masks_[ref_idx]
    if pred.shape == full.shape:
        truth = full
    else:
        _, grid_masks, _ = reference_features(mon)
        truth = grid_masks[ref_idx]
        if pred.shape != truth.shape:
            raise RuntimeError(f"{type(mon).__name__}._reverse_scores returned shape {pred.shape}; "
                               f"expected {full.shape} or {truth.shape}")
    p = pred.reshape(len(pred), -1)
    t = truth.reshape(len(truth), -1)
    pf = np.count_nonzero(p, axis=1) / p.shape[1]
    tf = np.count_nonzero(t, axis=1) / t.shape[1]
    chance = np.where(pf + tf > 0, 2 * pf * tf / np.maximum(pf + tf, 1e-12), 1.0)
    return dice_per_sample(p, t), chance


def aggregate_dice(mon: Any, dices: np.ndarray, chance: np.ndarray) -> tuple[float, int]:
    """The estimate and the position of the best reference."""
    best = int(np.argmax(dices))
    if mon.aggregate == "max":
        return float(dices[best]), best
    if mon.aggregate == "mean":
        return float(dices.mean()), best
    if mon.aggregate == "max_corrected":
        gain = np.where(chance < 1.0, (dices - chance) / np.maximum(1.0 - chance, 1e-12), dices)
        pos = int(np.argmax(gain))
        return float(dices[pos]), pos
    k = min(int(mon.top_k), len(dices))
    return float(np.sort(dices)[::-1][:k].mean()), best
