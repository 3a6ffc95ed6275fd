"""Tiny configurations of :class:`MCDropoutHunter` for the shared estimator checks."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def tiny_segmenter():
    """A tiny fitted TransUNetSegmenter with BatchNorm and dropout (two short epochs)."""
    from ..data import Patches, make_vessels
    from ..segment import TransUNetSegmenter

    img, mask = make_vessels((2, 64, 64), random_state=5)
    train = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    return TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=2, batch_size=4, norm="batch",
                              decoder_dropout=0.2, mlp_dropout=0.1, precision="fp32", device="cpu",
                              random_state=0, progress=False).fit(train)


@functools.lru_cache(maxsize=1)
def tiny_patches():
    from ..data import Patches, make_vessels

    img, mask = make_vessels((3, 64, 64), random_state=0)
    return Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)


def hunter_test_cases() -> list:
    from .._testing import EstimatorCase
    from .hunter import MCDropoutHunter

    pool = tiny_patches()

    def fingerprint(h):
        return {"scores": h.scores_, "ranking": h.ranking_.astype(float)}

    return [
        EstimatorCase(make=lambda: MCDropoutHunter(tiny_segmenter(), n_samples=4, batch_size=6, random_state=0),
                      fit=lambda h: h.fit(pool), use=lambda h: h.select(2),
                      result=fingerprint, name="full-mi-topq"),
        EstimatorCase(make=lambda: MCDropoutHunter(tiny_segmenter(), n_samples=3, mode="decoder_only",
                                                   measure="variance", aggregate="structure", radius=1,
                                                   random_state=1),
                      fit=lambda h: h.fit(pool), use=lambda h: h.select(1, diversity="one_per_slice"),
                      result=fingerprint, name="decoder-variance-structure"),
    ]
