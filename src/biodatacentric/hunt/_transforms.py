"""Test-time transforms of the hunter: the 8 symmetries of the square (flips and 90-degree
rotations, the ones ``data/augment.py`` trains with), applied to the input of one stochastic
pass and undone on its output.

Transform ``k`` (0..7) rotates by ``k % 4`` quarter turns and then, for ``k >= 4``, flips left
to right; transform 0 is the identity. Sample ``t`` of ``T`` uses transform ``t % 8``
(``transforms="dihedral"``) or the identity (``"none"``).

Examples
--------
>>> import torch
>>> from biodatacentric.hunt._transforms import apply, invert
>>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
>>> all(torch.equal(invert(apply(x, k), k), x) for k in range(8))
True
>>> tuple(apply(x, 1).shape)          # a quarter turn swaps the image axes
(1, 1, 3, 2)
"""

from __future__ import annotations

import torch

__all__ = ["TRANSFORMS", "N_DIHEDRAL", "sample_transforms", "apply", "invert"]

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
