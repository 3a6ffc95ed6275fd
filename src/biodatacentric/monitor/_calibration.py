"""RCA self-calibration: the map from RCA statistics to Dice (``RCAMonitor(calibration=...)``),
fitted on the references' own corrupted masks, and the agreement between reference groups
(``RCAMonitor.reference_agreement``): both score each group of references against the others."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import RidgeCV

from .._utils import check_random_state_int, progress
from ..metrics import dice
from ._retrieval import reference_groups, select_references
from ._reverse import run_rca
from ._statistics import STATISTICS, aggregate_dice
from .corruptions import random_corruptions

_CALIBRATIONS = ("forest", "linear", "isotonic")


class _Calibration:
    """Map from RCA statistics to Dice, rebuilt deterministically from the stored calibration set.

    ``"forest"``: extremely randomised regression trees on all :data:`STATISTICS`;
    ``"linear"``: ridge regression on them; ``"isotonic"``: monotone map of the raw aggregate.
    """

    def __init__(self, kind: str, X: np.ndarray, y: np.ndarray, raw: np.ndarray) -> None:
        self.kind = kind
        X = np.asarray(X, dtype=np.float64)
        ok = ~np.isnan(X)
        n_ok = ok.sum(axis=0)
        self.fill = np.divide(np.where(ok, X, 0.0).sum(axis=0), n_ok, out=np.zeros(X.shape[1]), where=n_ok > 0)
        Xf = np.where(np.isnan(X), self.fill, X)
        if kind == "isotonic":
            self.model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        elif kind == "linear":
            self.model = RidgeCV(alphas=np.logspace(-3, 2, 12)).fit(Xf, y)
        else:
            self.model = ExtraTreesRegressor(n_estimators=200, min_samples_leaf=3, random_state=0,
                                             n_jobs=1).fit(Xf, y)

    def predict(self, x: np.ndarray, raw: float) -> float:
        if self.kind == "isotonic":
            return float(np.clip(self.model.predict([raw])[0], 0.0, 1.0))
        x = np.where(np.isnan(x), self.fill, x)[None]
        return float(np.clip(self.model.predict(x)[0], 0.0, 1.0))


def calibration_data(mon: Any, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Self-calibration set: corrupted reference masks scored against the other references.

    References are split into folds by ``groups`` (their source stack), at most
    ``calibration_folds`` folds; the references of one fold, stacked like the slices of
    an image, are given ``calibration_size`` corrupted versions of their true masks
    (:func:`~biodatacentric.monitor.corruptions.random_corruptions`), and each is scored
    with the references of the OTHER folds as the database, exactly as :meth:`score`
    does (with ``n_references``, against the ``n_references`` of them nearest to the
    fold's references by embedding). Returns the statistics (n, len(STATISTICS)), the
    true Dice (n,), the kinds and the raw aggregate (n,).
    """
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    n_folds = min(len(uniq), int(mon.calibration_folds))
    if n_folds < 2:
        raise ValueError("calibration needs references from at least 2 groups (source stacks); pass "
                         "groups= to fit or calibration=None")
    fold_of_group = {g: i % n_folds for i, g in enumerate(rng.permutation(uniq))}
    folds = np.array([fold_of_group[g] for g in groups])
    X, y, kinds, raw = [], [], [], []
    jobs = [(f, j) for f in range(n_folds) for j in range(int(mon.calibration_size))]
    corrupted = {}
    for f in range(n_folds):
        inside = np.flatnonzero(folds == f)
        img = mon.reference_images_[inside]
        truth = mon.reference_masks_[inside]
        corrupted[f] = random_corruptions(img, truth, int(mon.calibration_size), rng)
    # each fold is scored against the references score() would use for it: the n_references
    # of the other folds nearest to the fold's own references (all of them without retrieval)
    emb = mon.reference_embeddings_
    used = {f: select_references(mon, None if emb is None else emb[folds == f], np.flatnonzero(folds != f))
            for f in range(n_folds)}
    for f, j in progress(jobs, desc="RCA self-calibration", enabled=mon.verbose, total=len(jobs)):
        inside, outside = np.flatnonzero(folds == f), used[f]
        kind, cm = corrupted[f][j]
        n_fg = int(np.count_nonzero(cm))
        if n_fg == 0 or n_fg == cm.size:
            continue
        timings = {"features": 0.0, "training": 0.0, "references": 0.0}
        d, c, stats = run_rca(mon, mon.reference_images_[inside], cm, outside,
                              int(rng.integers(2**31 - 1)), timings)
        X.append([stats[k] for k in STATISTICS])
        y.append(dice(cm, mon.reference_masks_[inside]))
        kinds.append(kind)
        raw.append(aggregate_dice(mon, d, c)[0])
    return np.asarray(X, np.float64), np.asarray(y, np.float64), kinds, np.asarray(raw, np.float64)


def calibrated(mon: Any, raw: float, stats: dict, n_fg: int, size: int) -> float:
    """The calibrated estimate (the raw aggregate without calibration or for single-class masks)."""
    model = getattr(mon, "_calibration_model", None)
    if getattr(mon, "calibration_", None) is None or n_fg == 0 or n_fg == size:
        return float(raw)
    if model is None:
        model = mon._calibration_model = _Calibration(mon.calibration_, mon.calibration_X_,
                                                      mon.calibration_y_, mon.calibration_raw_)
    return model.predict(np.array([stats[k] for k in STATISTICS], dtype=np.float64), raw)


def fit_calibration(mon: Any) -> None:
    """Fit ``mon.calibration`` from the references (sets ``calibration_`` and the calibration set;
    all None without a calibration)."""
    mon.calibration_ = None
    mon.calibration_X_ = mon.calibration_y_ = mon.calibration_raw_ = None
    mon._calibration_model = None
    if mon.calibration is None:
        return
    groups = np.asarray(mon.reference_groups_)
    t = time.perf_counter()
    X, yv, kinds, raw = calibration_data(mon, groups, check_random_state_int(mon.random_state))
    if len(yv) < 5:
        raise ValueError(f"self-calibration produced only {len(yv)} usable corrupted masks; use more "
                         "references or calibration_size, or calibration=None")
    mon.calibration_X_, mon.calibration_y_, mon.calibration_raw_ = X, yv, raw
    mon.calibration_kinds_ = list(kinds)
    mon.calibration_ = str(mon.calibration)
    mon._calibration_model = _Calibration(mon.calibration_, X, yv, raw)
    mon.calibration_seconds_ = time.perf_counter() - t


def reference_agreement(mon: Any, groups: Any = None) -> list[dict]:
    """The rows of ``RCAMonitor.reference_agreement``: each group's expert masks scored against
    the references of the other groups."""
    # a monitor saved before reference_groups_ existed has None: the default groups
    groups = reference_groups(getattr(mon, "reference_groups_", None) if groups is None else groups,
                              mon.reference_sources_)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("reference_agreement needs references from at least 2 groups; pass groups=")
    seed = check_random_state_int(mon.random_state)
    emb = mon.reference_embeddings_
    rows = []
    for g in progress(uniq, desc="RCA reference agreement", enabled=mon.verbose, total=len(uniq)):
        inside = np.flatnonzero(groups == g)
        outside = select_references(mon, None if emb is None else emb[inside], np.flatnonzero(groups != g))
        mask = mon.reference_masks_[inside]
        row = {"group": g.item() if hasattr(g, "item") else g, "n_references": int(len(inside)),
               "agreement": float("nan"), "balanced_max": float("nan"), "best_reference_source": None,
               "calibrated_estimate": None}
        n_fg = int(np.count_nonzero(mask))
        if 0 < n_fg < mask.size:
            timings = {"features": 0.0, "training": 0.0, "references": 0.0}
            d, c, stats = run_rca(mon, mon.reference_images_[inside], mask, outside, seed, timings)
            raw, best = aggregate_dice(mon, d, c)
            row.update(agreement=float(stats["prior_max"]), balanced_max=float(stats["balanced_max"]),
                       best_reference_source=mon.reference_sources_[int(outside[best])])
            if getattr(mon, "calibration_", None) is not None:
                row["calibrated_estimate"] = float(calibrated(mon, raw, stats, n_fg, mask.size))
        rows.append(row)
    return rows


def restore_after_load(mon: Any, folder: Any) -> None:
    """After ``RCAMonitor.load``: attributes of older saves set to None, caches emptied (the
    reference features and the calibration map are rebuilt on first use), and a calibration
    set of another version's statistics refused."""
    for name in ("reference_embeddings_", "reference_groups_", "drift_embeddings_",
                 "drift_reference_distances_",
                 "calibration_", "calibration_X_", "calibration_y_", "calibration_raw_"):
        if not hasattr(mon, name):
            setattr(mon, name, None)
    mon._ref_cache = None
    mon._ref_mask_values = None
    mon._calibration_model = None
    X = getattr(mon, "calibration_X_", None)
    if X is not None and np.asarray(X).shape[1] != len(STATISTICS):
        raise ValueError(f"{folder}: the saved self-calibration holds {np.asarray(X).shape[1]} RCA statistics "
                         f"but this version computes {len(STATISTICS)}; fit the monitor again with this version")
