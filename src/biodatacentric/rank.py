"""Choose among stored segmenters for new data: :func:`rank_models`.

Every saved :class:`~biodatacentric.TransUNetSegmenter` carries a model card
(:mod:`biodatacentric.segment._card`) with a summary of its training patches under a
label-free descriptor. For new patches, each model gets two label-free numbers:

* **drift** -- how far the new patches lie from the model's training patches: the median
  distance of the new patches' descriptors to the nearest training centroid, in units of the
  training patches' own distance (about 1: like the training data; see
  :func:`biodatacentric.data._descriptor.drift`);
* **estimate** -- the model's agreement with itself on a sample of the new patches: the
  mean pairwise Dice of its predictions under the eight flips and rotations of the square
  (the label-free signal of :mod:`biodatacentric.monitor._agreement`); 1 when every view
  gives the same mask.

The rule, fixed before it was benchmarked: ``fit = estimate / max(drift, 1)``; models are
ranked by ``fit``, highest first. A model *fits* when ``drift <= max_drift`` and
``estimate >= min_estimate``; when none does, the ranking says that fine-tuning on a few
annotated patches of the new data is needed. ``benchmarks/bench_rank.py`` measures how often
the top model is the best by true Dice on held-out vesselnn stacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import Patches, as_patches
from .data._descriptor import describe, drift
from .monitor._agreement import agreement_statistics, check_module, sample_foreground
from .segment import TransUNetSegmenter
from .segment._card import CARD_FILE, ModelCard

__all__ = ["rank_models", "ModelRanking"]


@dataclass
class ModelRanking:
    """The result of :func:`rank_models`: one row per model, best first (printable).

    Attributes
    ----------
    rows : list of dict
        ``model``, ``drift``, ``estimate``, ``fit``, ``rank`` (1 = best), ``fits`` and
        ``reason`` per model.
    none_fit : bool
        True when no model fits the new data (fine-tuning needed).
    """

    rows: list
    none_fit: bool
    max_drift: float
    min_estimate: float
    n_patches: int
    notes: list = field(default_factory=list)

    @property
    def best(self) -> str | None:
        """The name of the top-ranked model (None without models)."""
        return self.rows[0]["model"] if self.rows else None

    def to_dict(self) -> dict:
        return {"rows": self.rows, "none_fit": self.none_fit, "max_drift": self.max_drift,
                "min_estimate": self.min_estimate, "n_patches": self.n_patches, "notes": self.notes}

    def __str__(self) -> str:
        w = max([5] + [len(r["model"]) for r in self.rows])
        lines = [f"{'rank':>4}  {'model':<{w}}  {'drift':>6}  {'estimate':>8}  {'fit':>5}  reason"]
        for r in self.rows:
            d = "  n/a " if r["drift"] is None else f"{r['drift']:6.2f}"
            e = "    n/a " if r["estimate"] is None else f"{r['estimate']:8.3f}"
            lines.append(f"{r['rank']:>4}  {r['model']:<{w}}  {d}  {e}  {r['fit']:5.3f}  {r['reason']}")
        if self.none_fit:
            lines.append(f"No model fits these {self.n_patches} patches (drift <= {self.max_drift:g} and "
                         f"estimate >= {self.min_estimate:g}): fine-tune the best one on a few annotated "
                         "patches of the new data (TransUNetSegmenter.fine_tune with replay).")
        else:
            lines.append(f"Best fit: {self.best}.")
        lines += self.notes
        return "\n".join(lines)


def _model_folders(models: Any) -> list:
    """Model folders, (name, segmenter) pairs or segmenters from what the user gave."""
    if isinstance(models, (str, os.PathLike)):
        root = Path(models)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder; pass a folder of saved segmenters, or a list of "
                                    "model folders or fitted segmenters")
        if (root / "config.json").is_file():
            return [root]
        found = sorted(p for p in root.iterdir() if (p / "config.json").is_file())
        if not found:
            raise FileNotFoundError(f"{root} holds no saved models (sub-folders with config.json); save "
                                    "segmenters there with seg.save(folder / name)")
        return found
    if isinstance(models, TransUNetSegmenter):
        return [models]
    items = list(models)
    if not items:
        raise ValueError("models is empty; pass at least one saved segmenter")
    for m in items:
        if isinstance(m, (str, os.PathLike)) and not (Path(m) / "config.json").is_file():
            raise FileNotFoundError(f"{m} is not a saved model folder (no config.json)")
    return items


def _fit_to(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop or reflect-pad ``(n, h, w)`` patches to ``shape``."""
    n, h, w = images.shape
    th, tw = shape
    if h < th or w < tw:
        py, px = max(th - h, 0), max(tw - w, 0)
        images = np.pad(images, ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2)), mode="reflect")
        n, h, w = images.shape
    y, x = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(images[:, y:y + th, x:x + tw])


def rank_models(models: str | os.PathLike | Sequence[Any], patches: Patches | np.ndarray, *,
                n_sample: int = 16, n_views: int = 4, max_drift: float = 10.0, min_estimate: float = 0.5,
                estimate: bool = True, random_state: int = 0) -> ModelRanking:
    """Order stored segmenters by their expected fit to new ``patches`` (no labels needed).

    Parameters
    ----------
    models : folder, or list of model folders / fitted segmenters
        A folder of saved segmenters (each a sub-folder written by ``seg.save``), one model
        folder, or a list. Only ``model_card.json`` and the weights are read (no code runs).
    patches : Patches or (n, h, w) array
        The new data, normalised as the models' training patches were.
    n_sample : int
        Patches sampled (evenly spread) for the agreement estimate; 4 x as many (at most all)
        are described for the drift.
    n_views : int
        Flips/rotations per sampled patch (2 to 8).
    max_drift, min_estimate : float
        A model fits when its drift is at most ``max_drift`` and its estimate at least
        ``min_estimate``.
    estimate : bool
        Compute the agreement estimate (loads each model); ``False`` ranks by drift alone
        from the cards.
    random_state : int
        Seed of the sampled views.

    Returns
    -------
    ModelRanking
        Printable; ``rows`` best first, ``best``, ``none_fit``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from biodatacentric import Patches, TransUNetSegmenter, make_vessels, rank_models
    >>> img, mask = make_vessels((4, 64, 64), random_state=0)
    >>> p = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for e in (1, 2):
    ...     seg = TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=e, precision="fp32",
    ...                              random_state=0, progress=False).fit(p)
    ...     _ = seg.save(pathlib.Path(tmp.name) / f"epochs{e}")
    >>> ranking = rank_models(tmp.name, p, n_sample=4)
    >>> sorted(r["model"] for r in ranking.rows), [r["rank"] for r in ranking.rows]
    (['epochs1', 'epochs2'], [1, 2])
    >>> tmp.cleanup()
    """
    if int(n_sample) < 1:
        raise ValueError(f"n_sample={n_sample}; pass at least 1")
    if not 2 <= int(n_views) <= 8:
        raise ValueError(f"n_views={n_views}; pass 2 to 8 (flips and 90 degree rotations of the square)")
    p = as_patches(patches, name="patches")
    n = len(p)
    desc_idx = np.unique(np.linspace(0, n - 1, min(n, 4 * int(n_sample))).round().astype(int))
    est_idx = desc_idx[np.unique(np.linspace(0, len(desc_idx) - 1, min(len(desc_idx), int(n_sample)))
                                 .round().astype(int))]
    images = p.images(desc_idx)
    new_desc = describe(images)
    est_images = p.images(est_idx)
    rows = []
    for i, item in enumerate(_model_folders(models)):
        name, seg, card = _open(item, i)
        row: dict[str, Any] = {"model": name, "drift": None, "estimate": None}
        reasons = []
        emb = (card.training_data.get("embedding") if card is not None else None)
        if emb:
            try:
                row["drift"] = drift(emb, new_desc)
            except ValueError as exc:
                reasons.append(f"drift not comparable ({exc})")
        else:
            reasons.append("no model card with a training-data summary")
        if estimate:
            if seg is None:
                seg = TransUNetSegmenter.load(item)
            shape = tuple(int(v) for v in seg.patch_shape_)
            tiles = _fit_to(est_images, shape)
            probs = sample_foreground(check_module(seg), tiles, int(n_views), "flips", int(random_state))
            row["estimate"] = float(agreement_statistics(probs, probs.mean(0) > 0.5)["pairwise_dice"])
            if shape != tuple(p.patch_shape):
                reasons.append(f"patches cut to its {shape[0]}x{shape[1]}")
        d = row["drift"]
        e = row["estimate"]
        row["fit"] = 0.0 if d is None and e is None else float((1.0 if e is None else e) / max(d or 1.0, 1.0))
        far = d is None or d > max_drift
        unsure = e is not None and e < min_estimate
        row["fits"] = bool(not far and not unsure)
        if d is not None:
            reasons.insert(0, "like its training data" if d <= 1.5 else
                           ("somewhat unlike its training data" if d <= max_drift else "unlike its training data"))
        if e is not None:
            reasons.append("consistent under flips" if e >= 0.8 else
                           ("unsure under flips" if e >= min_estimate else "inconsistent under flips"))
        row["reason"] = "; ".join(reasons)
        rows.append(row)
    rows.sort(key=lambda r: -r["fit"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return ModelRanking(rows=rows, none_fit=not any(r["fits"] for r in rows), max_drift=float(max_drift),
                        min_estimate=float(min_estimate), n_patches=n)


def _open(item: Any, i: int) -> tuple[str, Any, ModelCard | None]:
    """(name, segmenter or None, card or None) of a model folder, a fitted segmenter or a
    ``(name, segmenter)`` pair."""
    name, seg = (f"model{i}", item) if isinstance(item, TransUNetSegmenter) else \
        (str(item[0]), item[1]) if isinstance(item, tuple) and len(item) == 2 else (None, None)
    if seg is not None:
        seg._check_is_fitted()
        card = getattr(seg, "card_", None)
        return str(name), seg, card if isinstance(card, ModelCard) else None
    folder = Path(item)
    card = ModelCard.load(folder) if (folder / CARD_FILE).is_file() else None
    return folder.name, None, card
