"""QualityMonitor: a Dice estimate from the segmenter's own agreement, RCA and drift, calibrated.

A thin estimator over :mod:`._agreement` (sampling and statistics), :mod:`._conformal`
(calibration and interval), :class:`~biodatacentric.monitor.RCAMonitor` and
:class:`~biodatacentric.monitor.EmbeddingDrift`.
"""

from __future__ import annotations

import time
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from .._params import Check, HasMethods, Interval, Options
from .._utils import check_random_state_int
from .._validation import check_image_and_mask
from ..base import BioEstimator, register_estimator
from ..data.normalize import as_normalization
from ..data._references import _as_references
from ..data.patches import Patches
from ._agreement import (AGREEMENT_STATISTICS, MONOTONE_STATISTICS, SAMPLINGS, agreement_counts,
                         agreement_statistics, check_module, cut, sample_foreground, sample_tiles,
                         statistics_from_counts, statistics_vector)
from ._conformal import (conformal_halfwidth, cross_fitted, dice_from_counts, fit_map, pooled_rows,
                         triangle_bounds)
from .corruptions import random_corruptions
from .drift import EmbeddingDrift
from .rca import RCAMonitor

__all__ = ["QualityMonitor", "FOREIGN_MARGIN", "combine_estimates"]

#: a scored mask is "foreign" (unlike the model's own output) when its Dice with the vote of the
#: model's samples is lower than their mean pairwise Dice by more than this
FOREIGN_MARGIN = 0.05


def _check_normalize(spec: Any) -> Any:
    return as_normalization(spec)


def combine_estimates(combine: str, estimates: dict[str, float], bounds: tuple[float, float],
                      foreign: bool) -> tuple[float, str]:
    """The estimate of ``QualityMonitor(combine=combine)`` from its signals, and the signal behind it.

    ``estimates`` holds ``"agreement"`` and, with an RCA monitor, ``"rca"``; ``bounds`` and
    ``foreign`` are ``assess``'s ``signals["bounds"]`` and ``signals["foreign"]``. The benchmark
    computes every combination from one record's signals with it.

    Examples
    --------
    >>> combine_estimates("min", {"agreement": 0.6, "rca": 0.9}, (0.5, 0.7), False)
    (0.6, 'agreement')
    >>> combine_estimates("auto", {"agreement": 0.6, "rca": 0.9}, (0.5, 0.7), True)
    (0.9, 'rca')
    >>> combine_estimates("bounded", {"agreement": 0.6, "rca": 0.9}, (0.5, 0.7), False)
    (0.7, 'rca')
    """
    if combine == "bounded":
        source = "rca" if "rca" in estimates else "agreement"
        est = float(np.clip(estimates[source], *bounds))
    elif combine == "auto":
        source = "rca" if foreign and "rca" in estimates else "agreement"
        est = estimates[source]
    else:
        source = min(estimates, key=estimates.get)
        est = estimates[source] if combine == "min" else float(np.mean(list(estimates.values())))
    return float(np.clip(est, 0.0, 1.0)), source


def _embed(embedder: Any, images: np.ndarray) -> np.ndarray:
    out = embedder.transform(images) if hasattr(embedder, "transform") else embedder(images)
    return np.asarray(out, dtype=np.float32).reshape(len(images), -1)


@register_estimator
class QualityMonitor(BioEstimator):
    """Estimate the Dice of a segmentation without ground truth from several signals.

    Signals, per scored image or stack:

    * **the model's own agreement**: ``n_samples`` stochastic passes of the segmenter over
      ``n_tiles`` tiles of the image (test-time flips and 90 degree rotations, MC dropout, or
      both): mean pairwise Dice among the samples, Dice of the samples and of their vote with the
      scored mask, the predictive entropy inside and outside the mask, and the mask's
      foreground share against the vote's (:data:`~biodatacentric.monitor._agreement.AGREEMENT_STATISTICS`);
    * optionally **RCA** (a :class:`~biodatacentric.monitor.RCAMonitor` given as ``rca``,
      fitted on the same references) and the **drift** of the tiles' embeddings from the
      references' (:class:`~biodatacentric.monitor.EmbeddingDrift`, with an ``embedder``).

    :meth:`fit` learns the map from agreement statistics to Dice on the references: the
    segmenter predicts every reference patch, and that prediction and ``n_corruptions``
    corrupted versions of it (:mod:`~biodatacentric.monitor.corruptions`) give calibration rows
    with their true Dice. The map (extremely randomised trees) is cross-fitted by source stack,
    so each row's residual is that of a stack the map has not seen; the split-conformal
    quantile of those residuals at ``coverage`` is the interval half-width. No label of a
    scored image is ever used. The references should be patches the segmenter was **not**
    trained on (e.g. its validation patches): on its own training patches a model agrees
    with the annotators more than it will on new data, and the estimate is optimistic.

    A blank or full mask is a failed segmentation: estimate 0, decision ``"fail"``.

    Parameters
    ----------
    segmenter : TransUNetSegmenter or torch.nn.Module
        The fitted model whose predictions are scored (any module mapping ``(B, 1, h, w)``
        to class logits ``(B, C, h, w)``; class 0 is background).
    n_samples : int
        Stochastic samples per tile.
    sampling : {"both", "flips", "dropout"}
        ``"flips"``: the eight symmetries of the square in turn; ``"dropout"``: MC dropout;
        ``"both"``: symmetries with dropout on.
    n_tiles : int
        Tiles per scored image (spread over the slices); the cost of :meth:`assess` does
        not grow with the stack beyond this.
    tile_size : int, optional
        Side of the tiles; the segmenter's training patch side by default (else 128).
    n_corruptions : int
        Corrupted versions of each reference prediction added to the calibration.
    rca : RCAMonitor, optional
        An RCA monitor whose estimate is combined with the agreement estimate. An unfitted one
        is cloned and fitted on the references in :meth:`fit`; a fitted one is used as it is
        (with its own references and calibration).
    embedder : callable or object with ``transform``, optional
        Maps ``(n, h, w)`` normalised tiles to ``(n, d)`` embeddings, for the drift score.
    combine : {"min", "mean", "bounded", "auto"}
        How the agreement and RCA estimates become one: the lower (conservative), the mean, or
        ``"bounded"``: the model's agreement gives the Dice of its own prediction with the truth,
        and the triangle inequality of the Jaccard distance bounds the scored mask's Dice from
        that and the mask's distance to the model's prediction
        (:func:`~biodatacentric.monitor._conformal.triangle_bounds`); the RCA estimate (or,
        without RCA, the agreement estimate) is clipped to those bounds. The model's own
        prediction is then scored by its agreement, and a mask unlike it (a manual
        annotation, another tool's output), about which the model's agreement says little,
        by RCA within what the agreement allows. ``"auto"``: the agreement estimate for a mask
        that agrees with the model's vote at least as well as the model's samples agree with
        each other (within :data:`FOREIGN_MARGIN`), the RCA estimate for a mask unlike the
        model's output (``signals["foreign"]``). On the benchmark
        (``benchmarks/results/monitor.md``) ``"min"`` scored the model's own predictions best
        and stays the default; ``"auto"`` scored corrupted manual masks far better (accuracy
        0.95 vs 0.73 at 0.7) at a small cost on the model's own predictions (MAE +0.006), so
        use it for masks made by a person or another tool; ``"bounded"`` was worse on the
        model's own predictions.
    threshold : float
        A segmentation passes when its estimated Dice is at least this.
    review_margin : float
        Estimates within ``threshold +/- review_margin`` get ``decision="review"``.
    coverage : float
        Target coverage of the conformal interval.
    drift_review : float
        A passing image whose drift percentile is at least this is sent to review.
    normalize : str, (mean, std) or Normalization
        Intensity normalisation of the scored image (as the segmenter's training patches).
    n_estimators : int
        Trees of the calibration map.
    calibration_unit : {"pooled", "patch"}
        ``"patch"``: one calibration row per reference patch and candidate mask;
        ``"pooled"`` (default): those rows plus as many rows pooled over ``n_tiles``
        references of one source (mixtures of predictions and corruptions), the unit a
        scored stack is measured in. Chosen by a pre-registered rule on the benchmark
        (``benchmarks/results/monitor.md``): with ``monotone`` it lowered the held-out
        error and raised the balanced accuracy on real predictions.
    monotone : bool
        Constrain the calibration map to rise with the Dice-like agreement statistics
        (:data:`~biodatacentric.monitor._agreement.MONOTONE_STATISTICS`); default True.
    random_state : int, optional
        Seed of tiles, dropout masks, corruptions and the map.

    Attributes
    ----------
    n_references_ : int
    tile_shape_ : tuple of int
    calibration_X_, calibration_y_, calibration_oof_ : ndarray
        Calibration rows (agreement statistics), their true Dice and cross-fitted estimates.
    calibration_groups_ : ndarray of str
    calibration_counts_, calibration_truth_ : ndarray
        Additive agreement counts of every candidate mask of every reference (the segmenter's
        prediction and its corruptions) and ``(|candidate & truth|, |candidate|, |truth|)``.
    calibration_sources_ : ndarray of str
    calibration_is_prediction_ : ndarray of bool
    halfwidth_ : float
        Conformal half-width of the interval.
    reference_statistics_ : dict
        Median agreement statistics of the segmenter's own predictions on the references.
    rca_ : RCAMonitor or None
    drift_ : EmbeddingDrift or None

    Examples
    --------
    >>> from biodatacentric import Patches, TransUNetSegmenter, make_vessels
    >>> from biodatacentric.monitor import QualityMonitor
    >>> img, mask = make_vessels((4, 64, 64), random_state=0)
    >>> p = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    >>> seg = TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=2, precision="fp32",
    ...                          random_state=0, progress=False).fit(p)
    >>> mon = QualityMonitor(seg, n_samples=4, n_tiles=4, n_estimators=20, random_state=0).fit(p)
    >>> est = mon.score(img, mask, axes="ZYX")            # the estimated Dice, a float
    >>> 0.0 <= est <= 1.0
    True
    >>> rec = mon.assess(img, 0 * mask, axes="ZYX")       # a blank mask: failed, no exception
    >>> rec["estimated_dice"], rec["decision"]
    (0.0, 'fail')
    """

    _fitted_attribute = "n_references_"
    _parameter_constraints: dict = {
        "segmenter": [None, HasMethods(("parameters",)), HasMethods(("predict_image",))],
        "n_samples": [Interval(Integral, 2, None)],
        "sampling": [Options(SAMPLINGS)],
        "n_tiles": [Interval(Integral, 1, None)],
        "tile_size": [None, Interval(Integral, 8, None)],
        "n_corruptions": [Interval(Integral, 0, None)],
        "rca": [None, HasMethods(("fit", "score"))],
        "embedder": [None, "callable", HasMethods(("transform",))],
        "combine": [Options(("min", "mean", "bounded", "auto"))],
        "threshold": [Interval(Real, 0.0, 1.0)],
        "review_margin": [Interval(Real, 0.0, 1.0)],
        "coverage": [Interval(Real, 0.0, 1.0, closed="neither")],
        "drift_review": [Interval(Real, 0.0, 100.0)],
        "normalize": [Check(_check_normalize, "a normalisation: 'percentile', 'minmax', 'none', (mean, std) "
                                              "or a Normalization")],
        "n_estimators": [Interval(Integral, 1, None)],
        "calibration_unit": [Options(("patch", "pooled"))],
        "monotone": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, segmenter: Any = None, n_samples: int = 8, sampling: str = "both", n_tiles: int = 16,
                 tile_size: int | None = None, n_corruptions: int = 4, rca: Any = None, embedder: Any = None,
                 combine: str = "min", threshold: float = 0.7, review_margin: float = 0.05,
                 coverage: float = 0.9, drift_review: float = 95.0, normalize: Any = "percentile",
                 n_estimators: int = 100, calibration_unit: str = "pooled", monotone: bool = True,
                 random_state: int | None = None) -> None:
        self.segmenter = segmenter
        self.n_samples = n_samples
        self.sampling = sampling
        self.n_tiles = n_tiles
        self.tile_size = tile_size
        self.n_corruptions = n_corruptions
        self.rca = rca
        self.embedder = embedder
        self.combine = combine
        self.threshold = threshold
        self.review_margin = review_margin
        self.coverage = coverage
        self.drift_review = drift_review
        self.normalize = normalize
        self.n_estimators = n_estimators
        self.calibration_unit = calibration_unit
        self.monotone = monotone
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, references: Patches | tuple[np.ndarray, np.ndarray], y: None = None, *, groups: Any = None,
            training_embeddings: Any = None) -> "QualityMonitor":
        """Calibrate on annotated references the segmenter was not trained on.

        Parameters
        ----------
        references : Patches with masks, or (images, masks) arrays (n, h, w)
            Normalised like the segmenter's training patches.
        y : None
            Ignored.
        groups : array (n,), optional
            Source (stack) of each reference, for cross-fitting; default: the source file of
            each patch (every reference its own group for plain arrays).
        training_embeddings : array (N, d), optional
            Embeddings of the segmenter's training patches for the drift score (default: the
            references embedded with ``embedder``).
        """
        self._validate_params()
        if self.segmenter is None:
            raise ValueError("QualityMonitor needs segmenter=: the fitted model whose predictions are scored")
        module = check_module(self.segmenter)
        images, masks, sources = _as_references(references, name_by="file")
        if groups is None:
            groups = np.asarray(sources).astype(str)
            if len(np.unique(groups)) == 1:  # one source: every reference its own group
                groups = np.arange(len(images)).astype(str)
        groups = np.asarray(groups).ravel().astype(str)
        if len(groups) != len(images):
            raise ValueError(f"groups has {len(groups)} entries for {len(images)} references")
        seed = check_random_state_int(self.random_state)
        t0 = time.perf_counter()
        probs = sample_foreground(module, images, int(self.n_samples), self.sampling, seed)
        preds = sample_foreground(module, images, 1, "flips", seed)[0] > 0.5
        rng = np.random.default_rng(seed)
        counts, truth, row_groups, is_pred = [], [], [], []
        for i in range(len(images)):
            candidates = [("prediction", preds[i].astype(np.uint8))]
            if self.n_corruptions:
                candidates += random_corruptions(images[i][None], preds[i][None].astype(np.uint8),
                                                 int(self.n_corruptions), rng)
            m = masks[i].astype(bool)
            for kind, cand in candidates:
                cand = np.asarray(cand).reshape(images[i].shape).astype(bool)
                counts.append(agreement_counts(probs[:, i], cand))
                truth.append((float((cand & m).sum()), float(cand.sum()), float(m.sum())))
                row_groups.append(groups[i])
                is_pred.append(kind == "prediction")
        # per-candidate additive counts: the calibration rows (per patch, or pooled) are built from them
        self.calibration_counts_ = np.asarray(counts)
        self.calibration_truth_ = np.asarray(truth)
        self.calibration_sources_ = np.asarray(row_groups).astype(str)
        self.calibration_is_prediction_ = np.asarray(is_pred, dtype=bool)
        self._calibrate(seed)
        own = np.asarray([statistics_vector(statistics_from_counts(c, int(self.n_samples)))
                          for c in self.calibration_counts_[self.calibration_is_prediction_]])
        self.reference_statistics_ = {k: float(v) for k, v in zip(AGREEMENT_STATISTICS, np.median(own, axis=0))}
        self.reference_statistics_spread_ = {
            k: float(v) for k, v in zip(AGREEMENT_STATISTICS,
                                        np.maximum(np.subtract(*np.percentile(own, [75, 25], axis=0)) / 1.35,
                                                   1e-3))}
        size = self.tile_size or (getattr(self.segmenter, "patch_shape_", None) or (128, 128))[0]
        self.tile_shape_ = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
        self.rca_ = None
        if self.rca is not None:
            fitted = getattr(self.rca, "__sklearn_is_fitted__", None)
            if callable(fitted) and fitted():
                self.rca_ = self.rca  # a fitted RCA monitor is used as it is (its own references)
            else:
                self.rca_ = clone(self.rca).fit((images, masks), groups=groups)
        self.drift_ = None
        if self.embedder is not None:
            emb = training_embeddings if training_embeddings is not None else _embed(self.embedder, images)
            self.drift_ = EmbeddingDrift(random_state=seed).fit(emb)
        self.fit_seconds_ = time.perf_counter() - t0
        self.n_references_ = len(images)
        return self

    # ------------------------------------------------------------------ scoring
    def score(self, image: Any, predicted_mask: Any, axes: str = "YX") -> float:
        """The estimated Dice of ``predicted_mask`` as a segmentation of ``image`` (a float).

        :meth:`assess` returns the full record (interval, decision, reasons, signals).
        """
        return float(self.assess(image, predicted_mask, axes=axes)["estimated_dice"])

    def assess(self, image: Any, predicted_mask: Any, axes: str = "YX") -> dict:
        """Estimate, interval, decision and the signals behind them.

        Parameters
        ----------
        image : array-like
            A 2-D image (``axes="YX"``) or z-stack (``axes="ZYX"``), raw intensities.
        predicted_mask : array-like
            Binary mask of the same shape.
        axes : {"YX", "ZYX"}

        Returns
        -------
        dict with ``estimated_dice``, ``interval`` (low, high), ``coverage``, ``decision``
        (``"pass"``, ``"fail"`` or ``"review"``), ``passed``, ``reasons`` (list of str),
        ``driver`` (the signal behind the decision), ``signals`` (``agreement``,
        ``rca`` and ``drift`` estimates or None; ``own``: the estimated Dice of the model's own
        prediction of the tiles; ``own_mask_dice``: its Dice with the scored mask; ``bounds``:
        the Dice range the triangle inequality allows the scored mask; ``foreign``: whether
        the mask is unlike the model's output; see ``combine``),
        ``statistics`` (agreement statistics),
        ``reference_statistics`` and ``timings``.
        """
        self._check_is_fitted()
        self._validate_params()
        t0 = time.perf_counter()
        img, mask = check_image_and_mask(image, predicted_mask, axes=axes)
        thr = float(self.threshold)
        n_fg = int(np.count_nonzero(mask))
        if n_fg == 0 or n_fg == mask.size:
            which = "blank (no foreground)" if n_fg == 0 else "full (foreground everywhere)"
            return {"estimated_dice": 0.0, "interval": (0.0, 0.0), "coverage": float(self.coverage),
                    "decision": "fail", "passed": False, "driver": "mask",
                    "reasons": [f"the mask is {which}: a failed segmentation"],
                    "signals": {"agreement": None, "rca": None, "drift": None, "own": None,
                                "own_mask_dice": None, "bounds": None, "foreign": None}, "statistics": None,
                    "reference_statistics": dict(self.reference_statistics_), "threshold": thr,
                    "timings": {"total": time.perf_counter() - t0}}
        seed = check_random_state_int(self.random_state)
        norm = _check_normalize(self.normalize)
        off, scale, clip = norm.compute(img[:: max(1, len(img) // 16)], source="image")
        tiles, windows = sample_tiles(img, self.tile_shape_, int(self.n_tiles), seed)
        tiles = (tiles - np.float32(off)) * np.float32(scale)
        if clip:
            np.clip(tiles, 0.0, 1.0, out=tiles)
        t1 = time.perf_counter()
        module = check_module(self.segmenter)
        probs = sample_foreground(module, tiles, int(self.n_samples), self.sampling, seed)
        mask_tiles = cut(mask, windows).astype(bool)
        stats = agreement_statistics(probs, mask_tiles)
        t2 = time.perf_counter()
        agree = float(np.clip(self._calibration_map().predict(statistics_vector(stats)[None])[0], 0.0, 1.0))
        signals: dict[str, Any] = {"agreement": agree, "rca": None, "drift": None}
        timings = {"sampling": t2 - t1}
        if self.rca_ is not None:
            r = self.rca_.score(img, mask, axes="ZYX")
            signals["rca"] = float(r["estimated_dice"])
            timings["rca"] = float(r["timings"]["total"])
        if self.drift_ is not None:
            signals["drift"] = float(self.drift_.score(_embed(self.embedder, tiles))["percentile"])
        ests = {k: v for k, v in (("agreement", agree), ("rca", signals["rca"])) if v is not None}
        q = float(self.halfwidth_)
        # the model's own prediction of the tiles (one deterministic pass, as for the calibration's
        # prediction rows), its estimated Dice, and the triangle bounds these put on the scored
        # mask's Dice: recorded for every combination, used by "bounded"
        det = sample_foreground(module, tiles, 1, "flips", seed)[0] > 0.5
        own = float(np.clip(self._calibration_map().predict(
            statistics_vector(agreement_statistics(probs, det))[None])[0], 0.0, 1.0))
        own_mask = dice_from_counts((det & mask_tiles).sum(), det.sum(), mask_tiles.sum())
        bounds = triangle_bounds((own, own), own_mask)
        wide = triangle_bounds((max(0.0, own - q), min(1.0, own + q)), own_mask)
        signals.update(own=own, own_mask_dice=own_mask, bounds=bounds)
        foreign = bool(stats["mean_mask_dice"] < stats["pairwise_dice"] - FOREIGN_MARGIN)
        signals["foreign"] = foreign
        est, source = combine_estimates(self.combine, ests, bounds, foreign)
        m = float(self.review_margin)
        decision = "pass" if est >= thr + m else "fail" if est < thr - m else "review"
        driver = source if decision != "pass" else "all"
        reasons = [f"estimated Dice {est:.3f} ({', '.join(f'{k} {v:.3f}' for k, v in ests.items())}) "
                   f"against threshold {thr:g}" + (f" +/- {m:g}" if m else "")]
        # said only where the combination acts on it: under "min" / "mean" the model's own
        # predictions (the intended use) would get it whenever they differ from one tile pass
        if self.combine in ("auto", "bounded") and (foreign or wide[1] - wide[0] > 2 * q + 0.1):
            reasons.append(f"the mask differs from the model's own prediction (Dice {own_mask:.3f} with it; the "
                           f"model's own prediction has an estimated Dice of {own:.3f}): the model's agreement "
                           f"only bounds this mask's Dice to [{wide[0]:.2f}, {wide[1]:.2f}]"
                           + ("" if "rca" in ests else "; add an RCA monitor (rca=) to score such masks"))
        z = {k: (stats[k] - self.reference_statistics_[k]) / self.reference_statistics_spread_[k]
             for k in ("pairwise_dice", "sample_mask_dice", "uncertainty_in", "share_ratio")}
        worst = min(("pairwise_dice", "sample_mask_dice"), key=lambda k: z[k])
        if z[worst] < -2:
            reasons.append(f"{worst} {stats[worst]:.3f} against {self.reference_statistics_[worst]:.3f} on the "
                           "references: the model disagrees with itself more than on annotated data")
        if signals["drift"] is not None and signals["drift"] >= float(self.drift_review):
            reasons.append(f"drift percentile {signals['drift']:.0f}: the image is unlike the references")
            if decision == "pass":
                decision, driver = "review", "drift"
        timings["total"] = time.perf_counter() - t0
        low, high = (max(wide[0], est - q), min(wide[1], est + q)) if self.combine == "bounded" else \
            (max(0.0, est - q), min(1.0, est + q))
        return {"estimated_dice": est, "interval": (min(low, est), max(high, est)),
                "coverage": float(self.coverage), "decision": decision, "passed": bool(est >= thr),
                "driver": driver, "reasons": reasons, "signals": signals, "statistics": stats,
                "reference_statistics": dict(self.reference_statistics_), "threshold": thr, "timings": timings}

    # ------------------------------------------------------------------ internals
    def _calibrate(self, seed: int) -> None:
        """Calibration rows from the stored counts (``calibration_unit``), the cross-fitted
        estimates, the conformal half-width and the map (``monotone``)."""
        T = int(self.n_samples)
        counts, truth = self.calibration_counts_, self.calibration_truth_
        sources, is_pred = self.calibration_sources_, self.calibration_is_prediction_
        if self.calibration_unit == "pooled":
            extra, extra_truth, extra_groups = pooled_rows(counts, truth, sources, is_pred, int(self.n_tiles),
                                                           np.random.default_rng(seed + 1))
            counts = np.concatenate([counts, extra])
            truth = np.concatenate([truth, extra_truth])
            sources = np.concatenate([sources, extra_groups])
        X = np.asarray([statistics_vector(statistics_from_counts(c, T)) for c in counts])
        yv = np.asarray([dice_from_counts(*t) for t in truth])
        cst = self._monotonic_cst()
        self.calibration_X_, self.calibration_y_ = X, yv
        self.calibration_groups_ = np.asarray(sources).astype(str)
        self.calibration_oof_ = cross_fitted(X, yv, self.calibration_groups_, int(self.n_estimators), seed,
                                             monotonic_cst=cst)
        self.halfwidth_ = conformal_halfwidth(yv - self.calibration_oof_, float(self.coverage))
        self._map = fit_map(X, yv, int(self.n_estimators), seed, monotonic_cst=cst)

    def _monotonic_cst(self) -> list[int] | None:
        if not self.monotone:
            return None
        return [1 if k in MONOTONE_STATISTICS else 0 for k in AGREEMENT_STATISTICS]

    def _calibration_map(self) -> Any:
        if getattr(self, "_map", None) is None:
            self._map = fit_map(self.calibration_X_, self.calibration_y_, int(self.n_estimators),
                                check_random_state_int(self.random_state), monotonic_cst=self._monotonic_cst())
        return self._map

    def _save_extra(self, folder: Path) -> None:
        if self.rca_ is not None:
            self.rca_.save(folder / "rca")
        if self.drift_ is not None:
            self.drift_.save(folder / "drift")

    def _load_extra(self, folder: Path, config: dict) -> None:
        self._map = None
        self.tile_shape_ = tuple(int(s) for s in self.tile_shape_)
        self.calibration_groups_ = np.asarray(self.calibration_groups_).astype(str)
        self.rca_ = RCAMonitor.load(folder / "rca") if (folder / "rca").is_dir() else None
        self.drift_ = EmbeddingDrift.load(folder / "drift") if (folder / "drift").is_dir() else None
        if self.rca_ is not None and self.rca is not None:
            self.rca_.set_params(embedder=getattr(self.rca, "embedder", None))
