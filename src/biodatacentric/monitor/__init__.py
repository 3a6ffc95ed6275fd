"""Stage 4: segmentation quality monitoring without ground truth (reverse classification accuracy)."""

from .drift import EmbeddingDrift
from .features import DEFAULT_SIGMAS, feature_names, pixel_features
from .plots import plot_rca_scatter
from .rca import RCAMonitor, evaluate_estimates

__all__ = ["RCAMonitor", "EmbeddingDrift", "evaluate_estimates", "pixel_features", "feature_names",
           "DEFAULT_SIGMAS", "plot_rca_scatter"]
