"""The hunter's stochastic passes: which dropout is sampled (flags restored afterwards), the
seeds of the masks, and the test-time transforms -- the 8 symmetries of the square (flips and
90-degree rotations, the ones ``data/augment.py`` trains with), applied to the input of one
pass and undone on its output.

Transform ``k`` (0..7) rotates by ``k % 4`` quarter turns and then, for ``k >= 4``, flips left
to right; transform 0 is the identity. Sample ``t`` of ``T`` uses transform ``t % 8``
(``transforms="dihedral"``) or the identity (``"none"``).

Examples
--------
>>> import torch
>>> from biodatacentric.hunt._sampling import apply, invert
>>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
>>> all(torch.equal(invert(apply(x, k), k), x) for k in range(8))
True
>>> tuple(apply(x, 1).shape)          # a quarter turn swaps the image axes
(1, 1, 3, 2)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TRANSFORMS", "N_DIHEDRAL", "sample_transforms", "apply", "invert", "dropout_modules", "sampling_mode",
           "set_training", "batch_seed", "take_tree", "needs_labels", "pad_input"]

TRANSFORMS = ("none", "dihedral")
N_DIHEDRAL = 8


def sample_transforms(transforms: str, n_samples: int) -> list[int]:
    """The transform of each of the ``n_samples`` passes (cycled through the 8 for ``"dihedral"``).

    Examples
    --------
    >>> sample_transforms("dihedral", 10)
    [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    >>> sample_transforms("none", 3)
    [0, 0, 0]
    """
    if transforms == "none":
        return [0] * int(n_samples)
    if transforms == "dihedral":
        return [t % N_DIHEDRAL for t in range(int(n_samples))]
    raise ValueError(f"transforms={transforms!r} is not one of {TRANSFORMS}")


def apply(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` of a ``(..., H, W)`` tensor."""
    y = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return y.flip(-1) if k >= 4 else y


def invert(y: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`apply` (``invert(apply(x, k), k) == x``)."""
    x = y.flip(-1) if k >= 4 else y
    return torch.rot90(x, -(k % 4), dims=(-2, -1)) if k % 4 else x


_DROPOUT_TYPES = (nn.modules.dropout._DropoutNd,)


def dropout_modules(module: nn.Module, active_only: bool = True) -> list[nn.Module]:
    """Every dropout module (``nn.Dropout``, ``Dropout1d/2d/3d``, alpha dropouts) in ``module``.

    With ``active_only`` only those with a rate ``p > 0`` are returned.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout2d(0.2), nn.Dropout(0.0))
    >>> [type(m).__name__ for m in dropout_modules(net)]
    ['Dropout2d']
    >>> len(dropout_modules(net, active_only=False))
    2
    """
    return [m for m in module.modules() if isinstance(m, _DROPOUT_TYPES) and (not active_only or m.p > 0)]


@contextlib.contextmanager
def sampling_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore every submodule's train/eval flag on exit.

    Inside, switch chosen dropout modules on with ``m.train(True)``; BatchNorm, GroupNorm
    and every other module stay in eval mode, so no running statistic changes (pitfall U1).
    The flags are restored even when an exception escapes.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout2d(0.2))  # in train mode
    >>> with sampling_mode(net):
    ...     for m in dropout_modules(net):
    ...         _ = m.train(True)                      # MC dropout on
    ...     print(net[1].training, net[2].training)    # BatchNorm frozen, dropout sampling
    False True
    >>> net.training, net[1].training                  # flags restored on exit
    (True, True)
    """
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def pad_input(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Pad ``(..., H, W)`` at the bottom and right (replicate) to a multiple of ``module.patch_size``,
    as ``TransUNetSegmenter``'s inference does."""
    mult = int(getattr(module, "patch_size", 1) or 1)
    ph, pw = (-x.shape[-2]) % mult, (-x.shape[-1]) % mult
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def set_training(mods: list[nn.Module], on: bool) -> None:
    for m in mods:
        m.training = on


def needs_labels(how: str, branch_score: str) -> bool:
    """Whether the per-patch rule needs every sample's arg-max labels."""
    return how == "pairwise_dice" or (how == "structure" and branch_score == "disconnect")


def batch_seed(seed: int, position: int) -> int:
    """Seed of the dropout masks of the batch starting at patch ``position``."""
    return int(np.random.SeedSequence([int(seed), int(position)]).generate_state(1)[0])


def take_tree(obj: Any, index: torch.Tensor, batch: int) -> Any:
    """Rows ``index`` of every tensor with leading batch size ``batch`` (e.g. each patch's
    encoder features once per sample)."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0 or obj.shape[0] != batch:
            raise ValueError(f"cannot repeat an encoder output of shape {tuple(obj.shape)} along the "
                             f"batch axis (batch size {batch})")
        return obj.index_select(0, index.to(obj.device))
    if isinstance(obj, dict):
        return {k: take_tree(v, index, batch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_tree(v, index, batch) for v in obj)
    return obj
