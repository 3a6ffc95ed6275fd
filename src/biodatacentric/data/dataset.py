"""A torch ``Dataset`` adapter over :class:`~biodatacentric.Patches`."""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import default_augment

if TYPE_CHECKING:  # only for type hints: patches.py imports this module
    from .patches import Patches

__all__ = ["PatchDataset"]


class PatchDataset(Dataset):
    """Items are ``image`` (1, h, w) float32 tensors, or ``(image, mask)`` with int64 masks.

    Parameters
    ----------
    patches : Patches
    augment : None, bool or callable
        ``True`` uses flips, 90-degree rotations and mild intensity jitter; a callable
        ``fn(image, mask_or_None, rng) -> (image, mask)`` is the augmentation hook.
    with_masks : bool, optional
        Return masks too (default: when the patches have them).
    seed : int
        Item ``i`` in epoch ``e`` is augmented with ``default_rng([seed, e, i])``, so results do
        not depend on the number of DataLoader workers. Call :meth:`set_epoch` each epoch.

    Examples
    --------
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.data import PatchDataset
    >>> image, mask = make_vessels((64, 64), random_state=0)
    >>> patches = Patches.from_arrays(image, masks=mask, patch_shape=(32, 32))
    >>> ds = PatchDataset(patches, augment=True, seed=0)
    >>> x, y = ds[0]
    >>> len(ds), tuple(x.shape), x.dtype, tuple(y.shape), y.dtype
    (4, (1, 32, 32), torch.float32, (32, 32), torch.int64)
    """

    def __init__(self, patches: Patches, augment: Any = None, with_masks: bool | None = None, seed: int = 0) -> None:
        self.patches = patches
        self.augment = default_augment if augment is True else (augment or None)
        if self.augment is not None and not callable(self.augment):
            raise TypeError("augment must be None, True or a callable(image, mask, rng)")
        self.with_masks = patches.has_masks if with_masks is None else with_masks
        if self.with_masks and not patches.has_masks:
            raise ValueError("with_masks=True but the patches have no masks")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int):
        img = self.patches.images([i])[0]
        mask = self.patches.masks([i])[0] if self.with_masks else None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            img, mask = self.augment(img, mask, rng)
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
        if mask is None:
            return x
        return x, torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
