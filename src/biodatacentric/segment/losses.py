"""Segmentation losses: cross-entropy plus soft Dice (ALGORITHMS.md §3.4, pitfall T4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "segmentation_loss"]

_EPS = 1e-5


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: str = "foreground",
                   eps: float = _EPS) -> torch.Tensor:
    """Batch-global soft Dice loss with squared denominators (TransUNet's form).

    ``Dice_c = 1 - (2 Σ p_c g_c + eps) / (Σ p_c² + Σ g_c² + eps)``, sums over the whole batch,
    averaged over the classes ``1..C-1`` (``classes="foreground"``, the default: with sparse
    vessels the background term is ~1 whatever the model does, so it only dilutes the
    gradient) or over all classes including background (``classes="all"``, the reference).

    Parameters
    ----------
    logits : tensor (B, C, H, W)
    target : integer tensor (B, H, W)
    classes : {"foreground", "all"}

    Examples
    --------
    >>> import torch
    >>> t = torch.tensor([[[0, 1], [1, 0]]])
    >>> perfect = torch.nn.functional.one_hot(t, 2).permute(0, 3, 1, 2).float() * 40 - 20
    >>> round(float(soft_dice_loss(perfect, t)), 4)
    0.0
    """
    if classes not in ("foreground", "all"):
        raise ValueError(f"dice={classes!r} must be 'foreground' or 'all'")
    n_classes = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).to(prob.dtype)
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = (prob * prob).sum(dims) + (onehot * onehot).sum(dims)
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)
    if classes == "foreground":
        dice = dice[1:]
    return dice.mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, loss: str = "ce+dice",
                      dice: str = "foreground") -> torch.Tensor:
    """``"ce+dice"`` = 0.5 CE + 0.5 soft Dice (reference weights), ``"ce"`` or ``"dice"``.

    Examples
    --------
    >>> import torch
    >>> t = torch.tensor([[[0, 1], [1, 0]]])              # (B, H, W) labels
    >>> flat = torch.zeros(1, 2, 2, 2)                    # (B, C, H, W) logits, p = 0.5 everywhere
    >>> round(float(segmentation_loss(flat, t, loss="ce")), 4)   # log 2
    0.6931
    >>> round(float(segmentation_loss(flat, t)), 4)
    0.5132
    """
    target = target.long()
    if loss == "ce":
        return F.cross_entropy(logits.float(), target)
    if loss == "dice":
        return soft_dice_loss(logits, target, dice)
    if loss == "ce+dice":
        return 0.5 * F.cross_entropy(logits.float(), target) + 0.5 * soft_dice_loss(logits, target, dice)
    raise ValueError(f"loss={loss!r} must be 'ce+dice', 'ce' or 'dice'")
