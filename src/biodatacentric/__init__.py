"""biodatacentric: data-centric deep learning for bioimage analysis.

Implements the BioData-Centric framework of Cao et al. 2025 (npj Imaging 3:29) as
scikit-learn-style estimators: lazy :class:`Patches`, MAE pretraining
(:class:`MAEPretrainer`), max K-cover core sets (:class:`KCoverSelector`) and a dataset audit
(:class:`DatasetAuditor`), TransUNet segmentation (:class:`TransUNetSegmenter`), MC-dropout
error hunting (:class:`MCDropoutHunter`) and RCA quality monitoring (:class:`RCAMonitor`).
"""

from __future__ import annotations

from . import metrics
from ._version import __version__
from .assess import DatasetAuditor, KCenterSelector, KCoverSelector, RandomSelector
from .base import BaseHunter, BaseMonitor, BaseSelector, BioEstimator, register_estimator
from .data import DataFingerprint, Normalization, Patches, fingerprint, load_folder, load_sample, make_vessels
from .hunt import CurationLog, MCDropoutHunter
from .monitor import EmbeddingDrift, QualityMonitor, RCAMonitor
from .pretrain import MAEPretrainer
from .plan import Plan, plan
from .rank import ModelRanking, rank_models
from .segment import TransUNetSegmenter

__all__ = [
    "__version__",
    # data
    "Patches", "Normalization", "load_sample", "load_folder", "make_vessels", "fingerprint", "DataFingerprint",
    # stages
    "MAEPretrainer",
    "KCoverSelector", "KCenterSelector", "RandomSelector", "DatasetAuditor",
    "TransUNetSegmenter",
    "MCDropoutHunter", "CurationLog",
    "RCAMonitor", "QualityMonitor", "EmbeddingDrift",
    # choosing models and settings
    "rank_models", "ModelRanking", "plan", "Plan",
    # extension points
    "BioEstimator", "BaseSelector", "BaseHunter", "BaseMonitor", "register_estimator",
    "metrics",
]
