"""How well do quality estimates track the truth, and what to do with an estimate.

:func:`evaluate_estimates` compares estimated with true Dice (correlation, error, how many
poor segmentations are caught); :func:`decide` turns one estimate into accept / review / reject.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

__all__ = ["evaluate_estimates", "decide"]

def evaluate_estimates(true_dice: Any, estimated_dice: Any, threshold: float = 0.7,
                       review_margin: float | None = None) -> dict:
    """Pearson r, Spearman rho, MAE and pass/fail accuracy of Dice estimates (see :meth:`RCAMonitor.evaluate`).

    With ``review_margin``, estimates within it of ``threshold`` count as sent to review
    (:func:`decide`): ``review_share`` is their share and ``decided_accuracy`` the accuracy
    of the pass/fail decisions on the others (NaN when every estimate is in the band).
    ``accuracy``, sensitivity and specificity still count every estimate, flagged by
    ``threshold``.

    Examples
    --------
    >>> r = evaluate_estimates([0.9, 0.8, 0.5, 0.6], [0.85, 0.75, 0.6, 0.72], threshold=0.7)
    >>> round(r["mae"], 3), r["spearman_rho"], r["accuracy"], r["sensitivity"], r["n"]
    (0.08, 1.0, 0.75, 0.5, 4)
    >>> r = evaluate_estimates([0.9, 0.8, 0.5, 0.6], [0.85, 0.75, 0.6, 0.72], review_margin=0.05)
    >>> r["review_share"], r["decided_accuracy"]   # 0.72 is sent to review
    (0.25, 1.0)
    """
    t = np.asarray(true_dice, dtype=np.float64).ravel()
    e = np.asarray(estimated_dice, dtype=np.float64).ravel()
    if t.shape != e.shape:
        raise ValueError(f"true_dice has {t.size} values but estimated_dice has {e.size}")
    if t.size < 2:
        raise ValueError("evaluate needs at least 2 (true, estimated) pairs")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(e))):
        raise ValueError("true_dice and estimated_dice must be finite")
    fail_t, fail_e = t < threshold, e < threshold
    const = np.ptp(t) == 0 or np.ptp(e) == 0
    pearson = float("nan") if const else float(stats.pearsonr(t, e)[0])
    spearman = float("nan") if const else float(stats.spearmanr(t, e)[0])
    n_fail, n_pass = int(fail_t.sum()), int((~fail_t).sum())
    out = {
        "pearson_r": pearson,
        "spearman_rho": spearman,
        "mae": float(np.mean(np.abs(t - e))),
        "accuracy": float(np.mean(fail_t == fail_e)),
        "sensitivity": float(np.mean(fail_e[fail_t])) if n_fail else float("nan"),
        "specificity": float(np.mean(~fail_e[~fail_t])) if n_pass else float("nan"),
        "threshold": float(threshold),
        "n": int(t.size),
    }
    if review_margin is not None:
        _check_review_margin(review_margin)
        decided = ~_in_review_band(e, threshold, review_margin)
        out["review_margin"] = float(review_margin)
        out["review_share"] = float(np.mean(~decided))
        right = fail_t == fail_e
        out["decided_accuracy"] = float(np.mean(right[decided])) if decided.any() else float("nan")
    return out


def decide(estimate: float, threshold: float = 0.7, review_margin: float | None = None) -> str:
    """``"pass"``, ``"fail"`` or ``"review"`` for one estimated Dice.

    ``"fail"`` below ``threshold - review_margin``, ``"pass"`` at or above ``threshold +
    review_margin``, ``"review"`` in between; without a margin, ``"pass"`` at or above
    ``threshold`` and ``"fail"`` below it (the ``passed`` flag of :meth:`RCAMonitor.score`).

    Examples
    --------
    >>> [decide(d, 0.7, 0.1) for d in (0.55, 0.65, 0.7, 0.79, 0.8)]
    ['fail', 'review', 'review', 'review', 'pass']
    >>> decide(0.69), decide(0.7)
    ('fail', 'pass')
    """
    if _in_review_band(estimate, threshold, review_margin):
        return "review"
    return "pass" if estimate >= threshold else "fail"


def _in_review_band(estimates: Any, threshold: float, review_margin: float | None) -> np.ndarray:
    """Where ``threshold - review_margin <= estimate < threshold + review_margin`` (nowhere
    without a margin): the rule of :func:`decide`, for one estimate or an array."""
    m = 0.0 if review_margin is None else float(review_margin)
    e = np.asarray(estimates, dtype=np.float64)
    return (e >= threshold - m) & (e < threshold + m)


def _check_review_margin(review_margin: Any) -> None:
    if review_margin is None:
        return
    if isinstance(review_margin, bool) or not isinstance(review_margin, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(review_margin) <= 0.5:
        raise ValueError(f"review_margin must be None or a Dice difference in [0, 0.5], got {review_margin!r}")
