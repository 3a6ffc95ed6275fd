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

__all__ = ["cross_fitted", "conformal_halfwidth", "fit_map"]


def fit_map(X: np.ndarray, y: np.ndarray, n_estimators: int, seed: int):
    model = ExtraTreesRegressor(n_estimators=int(n_estimators), min_samples_leaf=3, max_features=0.7,
                                random_state=int(seed), n_jobs=1)
    return model.fit(X, y)


def cross_fitted(X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_estimators: int, seed: int,
                 max_folds: int = 5) -> np.ndarray:
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
        oof[test] = fit_map(X[train], y[train], n_estimators, seed).predict(X[test])
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
