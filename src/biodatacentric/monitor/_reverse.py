"""RCA's reverse classifier: the classifier factory, training on the scored image, the
foreground scores it gives the references and the per-reference Dice of both decision rules.

:class:`~biodatacentric.monitor.RCAMonitor` keeps the hooks (``_fit_reverse``,
``_predict_reverse``, ``_reverse_scores``) and calls the functions here through them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

from ._sampling import reference_features, scale_training, training_sample
from ._statistics import _out_of_bag_probability, _statistics, mask_statistics, reference_dice

CLASSIFIERS = ("random_forest", "extra_trees", "hist_gradient_boosting")


class _Constant:
    """Predictor of one class everywhere (for single-class masks)."""

    def __init__(self, value: int) -> None:
        self.value = int(value)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.value, dtype=np.float32)


def make_classifier(mon: Any, seed: int) -> Any:
    """The unfitted reverse classifier of ``mon.classifier``: one of :data:`CLASSIFIERS`
    configured from the monitor's parameters, or a clone of the given estimator (seeded)."""
    clf = mon.classifier
    if not isinstance(clf, str):
        model = clone(clf)
        if "random_state" in model.get_params():
            model.set_params(random_state=seed)
        return model
    if clf == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(max_iter=int(mon.n_estimators), early_stopping=False,
                                              min_samples_leaf=int(mon.min_samples_leaf),
                                              class_weight="balanced", random_state=seed)
    klass = RandomForestClassifier if clf == "random_forest" else ExtraTreesClassifier
    # bootstrap: the self-consistency statistic uses out-of-bag predictions (_out_of_bag_probability)
    bootstrap = mon.max_samples is not None or clf == "random_forest"
    return klass(n_estimators=int(mon.n_estimators), max_features=mon.max_features,
                 min_samples_leaf=int(mon.min_samples_leaf), bootstrap=bootstrap,
                 max_samples=mon.max_samples, class_weight="balanced", n_jobs=mon.n_jobs, random_state=seed)


def predict_scores(predictor: Any, features: np.ndarray) -> np.ndarray:
    """(m,) foreground probabilities of a fitted predictor (``predict_proba`` where it has
    one), else its 0/1 labels (``predict`` or a call)."""
    if hasattr(predictor, "predict_proba") and hasattr(predictor, "classes_"):
        proba = predictor.predict_proba(features)
        classes = list(predictor.classes_)
        if 1 in classes:
            return np.asarray(proba[:, classes.index(1)], dtype=np.float32)
        return np.zeros(len(features), dtype=np.float32)
    out = predictor.predict(features) if hasattr(predictor, "predict") else predictor(features)
    return np.asarray(out, dtype=np.float32).ravel()


def reverse_scores(mon: Any, image: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray, seed: int,
                   timings: dict) -> tuple[np.ndarray, dict]:
    """The default of ``RCAMonitor._reverse_scores``: train a pixel classifier on (image, mask)
    through ``mon._fit_reverse`` and score the references' stride-grid pixels with
    ``mon._predict_reverse``; (k, m) scores and the self-consistency values (and the image's
    feature descriptor when the features are shared)."""
    t = time.perf_counter()
    n_fg = int(np.count_nonzero(mask))
    ref_feats, _, _ = reference_features(mon)
    info: dict = {"self_balanced": float("nan"), "self_prior": float("nan")}
    if n_fg == 0 or n_fg == mask.size:
        predictor: Any = _Constant(1 if n_fg else 0)
        timings["features"] += time.perf_counter() - t
    else:
        X, y = training_sample(mon, image, mask, seed)
        timings["features"] += time.perf_counter() - t
        t = time.perf_counter()
        if mon.feature_scaling != "per_image" and y.min() != y.max():
            # mean features of the image (classes re-weighted to the mask's shares)
            pi_ = n_fg / mask.size
            info["descriptor"] = pi_ * X[y == 1].mean(axis=0, dtype=np.float64) + \
                (1 - pi_) * X[y == 0].mean(axis=0, dtype=np.float64)
        X, mu, sd = scale_training(mon, X)
        predictor = mon._fit_reverse(X, y, seed)
        timings["training"] += time.perf_counter() - t
        info.update(self_consistency(mon, predictor, X, y, n_fg / mask.size))
    t = time.perf_counter()
    sel = ref_feats[ref_idx]
    k, m, F = sel.shape
    Xr = sel.reshape(k * m, F)
    if mon.feature_scaling == "shared" and not isinstance(predictor, _Constant):
        Xr = (Xr - mu) / sd
    scores = mon._predict_reverse(predictor, Xr).reshape(k, m)
    timings["references"] += time.perf_counter() - t
    return scores, info


def self_consistency(mon: Any, predictor: Any, X: np.ndarray, y: np.ndarray, pi: float) -> dict:
    """Dice of the reverse classifier's out-of-bag (else in-sample) predictions against the
    training labels, re-weighted from the class-balanced sample to the class shares ``pi``."""
    p = _out_of_bag_probability(predictor, X)
    if p is None:
        p = mon._predict_reverse(predictor, X)
    fg = np.asarray(y) == 1
    n1, n0 = max(int(fg.sum()), 1), max(int((~fg).sum()), 1)
    w = np.where(fg, pi / n1, (1.0 - pi) / n0)
    out = {}
    for name, cut in (("self_balanced", 0.5), ("self_prior", 1.0 - pi)):
        pr = p > cut
        tp, fp, fn = w[pr & fg].sum(), w[pr & ~fg].sum(), w[~pr & fg].sum()
        den = 2 * tp + fp + fn
        out[name] = float(2 * tp / den) if den > 0 else 1.0
    return out


def run_rca(mon: Any, img: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray, seed: int,
            timings: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Reverse-segment the references ``ref_idx``: per-reference Dice and chance Dice under the
    configured decision rule, and the RCA statistics of both rules (:data:`STATISTICS`).

    The scores of ``mon._reverse_scores`` are cut at 0.5 (balanced rule) and at ``1 - pi``
    (prior rule, ``pi`` the mask's foreground share); 0/1 masks from a reverse classifier
    without scores give the same masks under both rules.
    """
    n_fg = int(np.count_nonzero(mask))
    pi = n_fg / mask.size
    scores, returned = mon._reverse_scores(img, mask, ref_idx, seed, timings)
    info = {"self_balanced": float("nan"), "self_prior": float("nan"), **returned}
    t = time.perf_counter()
    per_rule: dict[str, tuple] = {}
    for rule, cut in (("balanced", 0.5), ("prior", 1.0 - pi if 0 < n_fg < mask.size else 0.5)):
        pred = (np.asarray(scores) > cut).astype(np.uint8)
        per_rule[rule] = (*reference_dice(mon, pred, ref_idx), pred)
    used = "prior" if mon.prior_correction else "balanced"
    info.update(mask_statistics(mon, img, mask, ref_idx))
    desc = info.pop("descriptor", None)
    if desc is not None:
        # the references that look most like the image (feature means), pitfall R9
        _, _, means = reference_features(mon)
        scale = means.std(axis=0) + 1e-6
        dist = np.sqrt(np.mean(((means[ref_idx] - desc) / scale) ** 2, axis=1))
        k = int(min(len(ref_idx), max(3, round(np.sqrt(len(ref_idx))))))
        near = np.argsort(dist, kind="stable")[:k]
        info["near"], info["near_distance"] = near, float(dist[near].mean())
    stats = _statistics(per_rule, mon.reference_masks_[ref_idx], pi, info, int(mon.top_k))
    timings["references"] += time.perf_counter() - t
    dices, chance, _ = per_rule[used]
    return dices, chance, stats
