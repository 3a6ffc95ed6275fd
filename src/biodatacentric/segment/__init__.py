"""Segmentation: :class:`TransUNetSegmenter`, losses and sliding-window inference."""

from ._card import ModelCard
from .losses import segmentation_loss, soft_dice_loss
from .segmenter import TransUNetSegmenter
from .sliding import gaussian_weights, sliding_window_predict, window_starts

__all__ = ["TransUNetSegmenter", "ModelCard", "segmentation_loss", "soft_dice_loss", "gaussian_weights",
           "sliding_window_predict", "window_starts"]
