"""Calibration of label-free statistics to a Dice estimate, with a split-conformal interval.

The map is a small forest of extremely randomised regression trees fitted on calibration rows
(statistics of segmentations whose true Dice is known: the segmenter's own predictions on
references and corrupted versions of them). Its error is measured by cross-fitting: every row
is predicted by a map fitted on the other *groups* (source stacks) only, so the residuals are
those of a stack the map has not seen. The interval half-width is the conformal quantile of
those absolute residuals: ``ceil((n + 1) * coverage) / n``.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.model_selection import GroupKFold, KFold

__all__ = ["cross_fitted", "conformal_halfwidth", "fit_map", "pooled_rows", "dice_from_counts",
           "triangle_bounds"]


def fit_map(X: np.ndarray, y: np.ndarray, n_estimators: int, seed: int, monotonic_cst: list[int] | None = None):
    """Extremely randomised regression trees; ``monotonic_cst`` (+1 / 0 / -1 per feature) constrains
    the estimate to rise (fall) with the marked features."""
    model = ExtraTreesRegressor(n_estimators=int(n_estimators), min_samples_leaf=3, max_features=0.7,
                                random_state=int(seed), n_jobs=1, monotonic_cst=monotonic_cst)
    return model.fit(X, y)


def dice_from_counts(inter: float, a: float, b: float) -> float:
    """Dice ``2 inter / (a + b)`` from counts; 1.0 when both masks are empty (as :func:`~biodatacentric.metrics.dice`)."""
    return 1.0 if a + b == 0 else 2.0 * float(inter) / float(a + b)


def pooled_rows(counts: np.ndarray, truth: np.ndarray, groups: np.ndarray, is_prediction: np.ndarray,
                pool_size: int, rng: np.random.Generator, rows_per_group: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibration rows pooled over several references of one group, like a scored stack.

    A scored stack's statistics and Dice are pooled over ``n_tiles`` tiles; a single reference
    patch is a noisier, usually lower-Dice unit. Each pooled row sums the additive counts of
    ``pool_size`` references of one group (without replacement), each reference contributing
    its own prediction with probability ``1 - s`` and otherwise one of its corrupted versions
    (``s`` uniform in [0, 1) per row, so pooled rows span good to bad segmentations).

    Parameters
    ----------
    counts : (n_rows, c) additive agreement counts of every candidate mask
    truth : (n_rows, 3) ``(|cand & truth|, |cand|, |truth|)`` of every candidate
    groups : (n_rows,) group (source) of every candidate's reference
    is_prediction : (n_rows,) bool, True for the segmenter's own prediction of a reference;
        the corrupted candidates of a reference follow its prediction row
    pool_size : references per pooled row (at most the group's count)
    rng : numpy Generator
    rows_per_group : pooled rows per group (default: as many as the group has candidate rows)

    Returns
    -------
    (counts, truth, groups) of the pooled rows.
    """
    starts = np.flatnonzero(is_prediction)
    ends = np.append(starts[1:], len(is_prediction))
    ref_groups = np.asarray(groups)[starts]
    out_c, out_t, out_g = [], [], []
    for g in np.unique(ref_groups):
        refs = np.flatnonzero(ref_groups == g)
        size = max(1, min(int(pool_size), len(refs)))
        n_rows = rows_per_group or int(sum(ends[r] - starts[r] for r in refs))
        for _ in range(n_rows):
            s = rng.random()
            chosen = rng.choice(refs, size, replace=False)
            rows = [starts[r] if (ends[r] - starts[r] == 1 or rng.random() >= s)
                    else int(rng.integers(starts[r] + 1, ends[r])) for r in chosen]
            out_c.append(counts[rows].sum(axis=0))
            out_t.append(truth[rows].sum(axis=0))
            out_g.append(g)
    width = counts.shape[1] if counts.ndim == 2 else 0
    return (np.asarray(out_c).reshape(-1, width), np.asarray(out_t).reshape(-1, 3), np.asarray(out_g).astype(str))


def cross_fitted(X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_estimators: int, seed: int,
                 max_folds: int = 5, monotonic_cst: list[int] | None = None) -> np.ndarray:
    """Out-of-group predictions of every row (rows of one group are predicted by a map fitted on
    the others; with a single group, five random folds)."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    oof = np.empty(len(y), dtype=np.float64)
    if n_groups >= 2:
        splits = GroupKFold(n_splits=min(max_folds, n_groups)).split(X, y, groups)
    else:
        splits = KFold(n_splits=min(max_folds, len(y)), shuffle=True, random_state=int(seed)).split(X)
    for train, test in splits:
        oof[test] = fit_map(X[train], y[train], n_estimators, seed, monotonic_cst).predict(X[test])
    return np.clip(oof, 0.0, 1.0)


def conformal_halfwidth(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal half-width: the ``ceil((n + 1) coverage) / n`` quantile of ``|residuals|``.

    Examples
    --------
    >>> import numpy as np
    >>> conformal_halfwidth(np.linspace(-0.1, 0.1, 21), 0.9)
    0.1
    """
    r = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    n = len(r)
    if n == 0:
        return 1.0
    k = int(np.ceil((n + 1) * float(coverage)))
    return float(r[min(k, n) - 1]) if k <= n else float(r[-1])


def _jaccard_distance(d: float) -> float:
    """``1 - J`` for a Dice ``d`` (``J = d / (2 - d)``); the Jaccard distance is a metric on sets."""
    d = float(np.clip(d, 0.0, 1.0))
    return 1.0 - d / (2.0 - d)


def _dice_of_distance(dist: float) -> float:
    j = 1.0 - float(np.clip(dist, 0.0, 1.0))
    return 2.0 * j / (1.0 + j)


def triangle_bounds(own_dice: tuple[float, float], mask_vote_dice: float) -> tuple[float, float]:
    """Bounds on the Dice of a scored mask from the model's own quality and its distance to the mask.

    The Jaccard distance ``1 - |A & B| / |A | B|`` obeys the triangle inequality, so with ``e``
    the distance of the model's own vote from the (unknown) truth and ``m`` that of the scored
    mask from the vote, the mask's distance from the truth lies in ``[|m - e|, m + e]``. For the
    model's own prediction (``m`` near 0) the bounds are as tight as the model's quality is
    known; for a mask unlike the model's prediction (a manual mask, another tool's output)
    they are wide: the model's agreement then says little about that mask's quality.

    Parameters
    ----------
    own_dice : (low, high)
        Range of the Dice of the model's own vote with the truth (equal ends for a point).
    mask_vote_dice : float
        Dice of the scored mask with the model's vote.

    Returns
    -------
    (low, high) Dice of the scored mask with the truth.

    Examples
    --------
    >>> triangle_bounds((0.8, 0.8), 1.0)          # the model's own prediction: its quality
    (0.8, 0.8)
    >>> lo, hi = triangle_bounds((0.8, 0.8), 0.8)   # as far from the vote as the truth may be
    >>> round(lo, 3), hi
    (0.5, 1.0)
    """
    e_lo, e_hi = sorted(_jaccard_distance(d) for d in own_dice)
    m = _jaccard_distance(mask_vote_dice)
    near = 0.0 if e_lo <= m <= e_hi else min(abs(m - e_lo), abs(m - e_hi))
    return _dice_of_distance(min(1.0, m + e_hi)), _dice_of_distance(near)
