"""biodatacentric: data-centric deep learning for bioimage analysis.

Implements the BioData-Centric framework of Cao et al. 2025 (npj Imaging 3:29) as
scikit-learn-style estimators: lazy :class:`Patches`, MAE pretraining, K-cover core sets,
TransUNet segmentation, MC-dropout error hunting and RCA quality monitoring.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from . import metrics
from .base import BaseHunter, BaseMonitor, BaseSelector, BioEstimator
from .data import Normalization, Patches, load_folder, load_sample, make_vessels

__all__ = ["__version__", "Patches", "Normalization", "load_sample", "load_folder", "make_vessels",
           "BioEstimator", "BaseSelector", "BaseHunter", "BaseMonitor", "metrics"]
