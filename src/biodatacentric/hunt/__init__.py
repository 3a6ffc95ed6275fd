"""Stage 3: hunt for the patches a fitted segmenter probably gets wrong, and curate them.

* :class:`MCDropoutHunter` -- disagreement of stochastic predictions (MC dropout, flips and
  rotations) per patch, ranking and diverse selection;
* :mod:`~biodatacentric.hunt.uncertainty` -- per-pixel measures (entropy, BALD, variance,
  variation ratio);
* :mod:`~biodatacentric.hunt.aggregate` -- per-patch scores (mean, sum, top-q, foreground,
  skeleton-branch structure score);
* :class:`CurationLog` -- export the critical set with the prediction as starting mask, read
  the corrections back, and record each round.
"""

from .aggregate import AGGREGATES, aggregate, skeleton_branches
from .curation import CurationLog, export_critical, model_fingerprint, starting_masks
from .hunter import MCDropoutHunter, dropout_modules, sampling_mode
from .uncertainty import (MEASURES, compute_measures, mutual_information, predictive_entropy, variance,
                          variation_ratio)

__all__ = ["MCDropoutHunter", "CurationLog", "export_critical", "starting_masks", "model_fingerprint",
           "dropout_modules", "sampling_mode", "aggregate", "skeleton_branches", "AGGREGATES", "MEASURES",
           "compute_measures", "predictive_entropy", "mutual_information", "variance", "variation_ratio"]
