"""Plot helper: estimated vs true Dice with the pass/fail threshold lines."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .evaluation import evaluate_estimates

__all__ = ["plot_rca_scatter"]


def plot_rca_scatter(true_dice: Any, estimated_dice: Any, threshold: float = 0.7,
                     groups: Sequence[str] | None = None, ax: Any = None, title: str | None = None,
                     annotate: bool = True) -> Any:
    """Scatter of estimated against true Dice, with the identity and the threshold lines.

    The four quadrants cut by the two threshold lines are the correct passes (top right),
    correct flags (bottom left), missed failures (top left) and false alarms (bottom right).

    Parameters
    ----------
    true_dice, estimated_dice : array-like of float
        One value per segmentation.
    threshold : float
        Pass/fail Dice threshold (drawn on both axes).
    groups : sequence of str, optional
        A label per point (e.g. the kind of degradation); one colour per label.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    title : str, optional
        Axes title.
    annotate : bool
        Write Pearson r, Spearman rho, MAE and the accuracy in the corner.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_rca_scatter([0.9, 0.5, 0.2], [0.85, 0.6, 0.3])
    >>> ax.get_xlabel()
    'true Dice (against the manual mask)'
    """
    import matplotlib.pyplot as plt

    t = np.asarray(true_dice, dtype=np.float64).ravel()
    e = np.asarray(estimated_dice, dtype=np.float64).ravel()
    if t.shape != e.shape:
        raise ValueError(f"true_dice has {t.size} values but estimated_dice has {e.size}")
    if groups is None:
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 5.0))
        ax.scatter(t, e, s=18, alpha=0.8)
    else:
        g = np.asarray(list(groups), dtype=object)
        if g.shape != t.shape:
            raise ValueError(f"groups has {g.size} labels for {t.size} points")
        names = list(dict.fromkeys(g.tolist()))
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5 + 1.6 * (1 + len(names) // 24), 5.0))
        colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
        markers = "osD^vP*Xh<>"
        for i, name in enumerate(names):
            sel = g == name
            ax.scatter(t[sel], e[sel], s=20, alpha=0.85, label=str(name), color=colors[i % len(colors)],
                       marker=markers[(i // len(colors)) % len(markers)] if len(names) > len(colors)
                       else markers[i % 2 if len(names) > 10 else 0])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.8,
                  ncol=1 + len(names) // 24, borderaxespad=0.0)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":")
    ax.axvline(threshold, color="tab:red", lw=1, ls="--")
    ax.axhline(threshold, color="tab:red", lw=1, ls="--")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("true Dice (against the manual mask)")
    ax.set_ylabel("estimated Dice (no ground truth used)")
    kw = dict(fontsize=7, color="tab:red", alpha=0.8)
    ax.text(0.01, threshold + 0.01, "missed failures", va="bottom", ha="left", **kw)
    ax.text(1.0, threshold - 0.01, "false alarms", va="top", ha="right", **kw)
    if title:
        ax.set_title(title)
    if annotate and t.size >= 2:
        m = evaluate_estimates(t, e, threshold)
        ax.text(0.02, 0.98, f"correlation r = {m['pearson_r']:.2f}\nrank correlation = {m['spearman_rho']:.2f}\n"
                f"mean error = {m['mae']:.3f}\npass/fail right = {100 * m['accuracy']:.0f}%\n"
                f"(threshold {threshold:g}, n = {m['n']})", transform=ax.transAxes,
                va="top", ha="left", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    return ax
