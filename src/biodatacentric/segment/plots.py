"""Figures of a segmentation for a biologist: the prediction over the image, with its false
positives and false negatives marked against a manual mask.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot
state, works headless); save them with ``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..metrics import dice

__all__ = ["overlay_rgb", "plot_prediction_overlays"]

#: colour-blind-safe overlay colours (Okabe-Ito): found, false positive, false negative
OVERLAY_COLORS = {"true positive": (0.0, 0.62, 0.45), "false positive": (0.8, 0.47, 0.65),
                  "false negative": (0.94, 0.89, 0.26)}


def overlay_rgb(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None,
                alpha: float = 0.55) -> np.ndarray:
    """An RGB ``(Y, X, 3)`` picture of ``image`` in grey with the prediction coloured over it.

    With ``truth``, true positives, false positives and false negatives get the colours of
    :data:`OVERLAY_COLORS`; without it the prediction is drawn in the true-positive colour.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    >>> pred = np.zeros((4, 4), np.uint8); pred[0] = 1
    >>> truth = np.zeros((4, 4), np.uint8); truth[:, 0] = 1
    >>> overlay_rgb(img, pred, truth).shape
    (4, 4, 3)
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5)) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    p = np.asarray(prediction) > 0
    layers = {"true positive": p}
    if truth is not None:
        t = np.asarray(truth) > 0
        layers = {"true positive": p & t, "false positive": p & ~t, "false negative": ~p & t}
    for name, where in layers.items():
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(OVERLAY_COLORS[name])
    return rgb


def plot_prediction_overlays(image: np.ndarray, predictions: dict[str, np.ndarray], truth: np.ndarray | None = None,
                             *, where: str = "", panel_size: float = 3.6,
                             intensity_label: str = "normalised intensity") -> Figure:
    """One row: the image (with a colour bar), then each model's prediction over it.

    Parameters
    ----------
    image : array (Y, X)
        The slice shown.
    predictions : dict name -> array (Y, X)
        Binary predictions, e.g. ``{"M0": pred0[z], "M1": pred1[z]}``; each panel title gives
        the model and, with ``truth``, its Dice on this slice.
    truth : array (Y, X), optional
        Manual mask: false positives and false negatives are marked and a legend explains the
        colours.
    where : str
        What the slice is (stack name and z), shown in the figure title.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> img, mask = make_vessels((64, 64), random_state=0)
    >>> fig = plot_prediction_overlays(img, {"model": np.roll(mask, 2, axis=1)}, mask, where="sample, z 0")
    >>> len(fig.axes)          # image, its colour bar, one prediction
    3
    """
    n = 1 + len(predictions)
    fig = Figure(figsize=(panel_size * n + 0.6, panel_size + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    axes: Sequence[Any] = fig.subplots(1, n, squeeze=False)[0]
    im = axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image")
    cbar = fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.02)
    cbar.set_label(intensity_label)
    for ax, (name, pred) in zip(axes[1:], predictions.items()):
        ax.imshow(overlay_rgb(image, pred, truth))
        ax.set_title(f"{name}: Dice {dice(pred, truth):.2f}" if truth is not None else name)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    names = list(OVERLAY_COLORS) if truth is not None else ["true positive"]
    labels = {"true positive": "vessel found" if truth is not None else "predicted vessel",
              "false positive": "false positive (predicted, not in manual mask)",
              "false negative": "false negative (in manual mask, missed)"}
    fig.legend(handles=[Patch(color=OVERLAY_COLORS[k], label=labels[k]) for k in names],
               loc="lower center", ncol=len(names), frameon=False, fontsize=8)
    if where:
        fig.suptitle(where)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
