"""Stage 4: segmentation quality monitoring without ground truth (reverse classification accuracy)."""

from .corruptions import CORRUPTIONS, corrupt_mask, random_corruptions
from .drift import EmbeddingDrift
from .features import DEFAULT_SIGMAS, feature_names, pixel_features
from .plots import plot_rca_scatter
from .quality import QualityMonitor
from .rca import STATISTICS as RCA_STATISTICS
from .rca import RCAMonitor, decide, evaluate_estimates

__all__ = ["RCAMonitor", "QualityMonitor", "EmbeddingDrift", "evaluate_estimates", "decide", "pixel_features", "feature_names",
           "DEFAULT_SIGMAS", "plot_rca_scatter", "RCA_STATISTICS", "CORRUPTIONS", "corrupt_mask",
           "random_corruptions"]
