"""Metrics that vessel users ask for."""

import numpy as np
import pytest


def test_cldice_sees_topology_that_dice_misses():
    from biodatacentric.metrics import cldice, dice

    true = np.zeros((3, 32, 32), bool)
    true[:, 8:11, 2:30] = True
    assert cldice(true, true) == 1.0 and cldice(true, true, per_slice=True) == 1.0
    gap = true.copy()
    gap[:, :, 15:17] = False                      # a vessel cut in two: small Dice loss
    assert dice(gap, true) > 0.9
    assert cldice(np.zeros_like(true), true) == 0.0 and cldice(np.zeros_like(true), np.zeros_like(true)) == 1.0
    with pytest.raises(ValueError, match="does not match truth shape"):
        cldice(true[0], true)
