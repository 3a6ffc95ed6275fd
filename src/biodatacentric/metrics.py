"""Overlap metrics as plain functions.

Empty-mask convention: when prediction and truth are both empty for a class, its Dice and
IoU are 1.0 (nothing to find, nothing found); when exactly one is empty they are 0.0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.morphology import skeletonize

__all__ = ["dice", "iou", "dice_per_sample", "multiclass_dice", "cldice"]


def _overlap(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(true).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} does not match truth shape {t.shape}")
    inter = float(np.count_nonzero(p & t))
    return inter, float(np.count_nonzero(p)), float(np.count_nonzero(t))


def dice(pred: np.ndarray, true: np.ndarray, empty_score: float = 1.0) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` of two binary masks.

    Examples
    --------
    >>> import numpy as np
    >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.6666666666666666
    >>> dice(np.zeros(4), np.zeros(4))  # both empty: 1.0 by convention
    1.0
    """
    inter, sp, st = _overlap(pred, true)
    if sp + st == 0:
        return float(empty_score)
    return 2.0 * inter / (sp + st)


def iou(pred: np.ndarray, true: np.ndarray, empty_score: float = 1.0) -> float:
    """Intersection over union (Jaccard) of two binary masks; both empty gives ``empty_score``.

    Examples
    --------
    >>> import numpy as np
    >>> iou(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.5
    >>> iou(np.zeros(4), np.zeros(4))  # both empty: 1.0 by convention
    1.0
    """
    inter, sp, st = _overlap(pred, true)
    union = sp + st - inter
    if union == 0:
        return float(empty_score)
    return inter / union


def dice_per_sample(pred: np.ndarray, true: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """Dice of each sample along the first axis of two ``(n, ...)`` binary arrays.

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    >>> true = np.array([[1, 0, 0, 0], [0, 0, 0, 0]])
    >>> dice_per_sample(pred, true).round(3).tolist()  # second sample: both empty
    [0.667, 1.0]
    """
    p = np.asarray(pred).astype(bool).reshape(len(pred), -1)
    t = np.asarray(true).astype(bool).reshape(len(true), -1)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {np.shape(pred)} does not match truth shape {np.shape(true)}")
    inter = np.count_nonzero(p & t, axis=1).astype(np.float64)
    denom = (np.count_nonzero(p, axis=1) + np.count_nonzero(t, axis=1)).astype(np.float64)
    out = np.full(len(p), float(empty_score))
    nz = denom > 0
    out[nz] = 2.0 * inter[nz] / denom[nz]
    return out


def multiclass_dice(pred: np.ndarray, true: np.ndarray, labels: Sequence[int] | None = None,
                    empty_score: float = 1.0) -> dict[int, float]:
    """Dice of each label of two integer label maps (``labels`` defaults to those present).

    Examples
    --------
    >>> import numpy as np
    >>> d = multiclass_dice(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    >>> {c: round(v, 3) for c, v in d.items()}
    {0: 1.0, 1: 0.667, 2: 0.667}
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if labels is None:
        labels = np.union1d(np.unique(pred), np.unique(true)).tolist()
    return {int(c): dice(pred == c, true == c, empty_score) for c in labels}


def _skeleton(mask: np.ndarray, per_slice: bool) -> np.ndarray:
    if mask.ndim == 3 and per_slice:
        return np.stack([skeletonize(sl) for sl in mask])
    return skeletonize(mask).astype(bool, copy=False)


def cldice(pred: np.ndarray, true: np.ndarray, per_slice: bool = False, empty_score: float = 1.0) -> float:
    """Centreline Dice (clDice) of two binary masks: how well the vessel network is kept.

    clDice (Shit et al., CVPR 2021) compares each mask's centreline with the other mask:
    topology precision ``Tprec = |S(P) ∩ T| / |S(P)|`` (how much of the predicted centreline
    lies inside the true vessels) and topology sensitivity ``Tsens = |S(T) ∩ P| / |S(T)|``
    (how much of the true centreline is covered), combined as their harmonic mean. A thin
    vessel missed or broken in two costs little Dice but much clDice; a thick vessel drawn a
    little too wide costs Dice but not clDice. Skeletons come from
    :func:`skimage.morphology.skeletonize`.

    Parameters
    ----------
    pred, true : array-like of the same shape, 2-D or 3-D
        Binary masks (non-zero = vessel).
    per_slice : bool
        For a ``(Z, Y, X)`` stack, skeletonise each slice in 2-D instead of the volume in 3-D
        (for stacks whose z step is much coarser than the pixel size).
    empty_score : float
        Returned when both masks are empty. When exactly one is empty the score is 0.

    Returns
    -------
    float
        In ``[0, 1]``; 1 when each centreline lies entirely inside the other mask.

    Examples
    --------
    >>> import numpy as np
    >>> true = np.zeros((20, 40), bool)
    >>> true[2:10, 2:38] = True                                # a thick vessel
    >>> true[14, 2:38] = True                                  # and a thin one
    >>> missed = true.copy(); missed[14] = False               # the thin vessel is missed
    >>> wide = true.copy(); wide[1:11, 2:38] = True            # the thick one drawn too wide
    >>> round(dice(missed, true), 2), round(cldice(missed, true), 2)
    (0.94, 0.63)
    >>> round(dice(wide, true), 2), round(cldice(wide, true), 2)
    (0.9, 1.0)
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(true).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} does not match truth shape {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"cldice takes 2-D or 3-D masks, got shape {p.shape}")
    if not p.any() and not t.any():
        return float(empty_score)
    if not p.any() or not t.any():
        return 0.0
    sp, st = _skeleton(p, per_slice), _skeleton(t, per_slice)
    tprec = np.count_nonzero(sp & t) / max(np.count_nonzero(sp), 1)
    tsens = np.count_nonzero(st & p) / max(np.count_nonzero(st), 1)
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))
