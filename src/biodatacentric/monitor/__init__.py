"""Stage 4: segmentation quality monitoring without ground truth (reverse classification accuracy)."""

from .corruptions import CORRUPTIONS, corrupt_mask, random_corruptions
from .drift import EmbeddingDrift
from .features import DEFAULT_SIGMAS, feature_names, pixel_features
from .plots import plot_rca_scatter
from ._statistics import STATISTICS as RCA_STATISTICS
from .evaluation import decide, evaluate_estimates
from .quality import QualityMonitor
from .rca import RCAMonitor

__all__ = ["RCAMonitor", "QualityMonitor", "EmbeddingDrift", "evaluate_estimates", "decide", "pixel_features", "feature_names",
           "DEFAULT_SIGMAS", "plot_rca_scatter", "RCA_STATISTICS", "CORRUPTIONS", "corrupt_mask",
           "random_corruptions"]
