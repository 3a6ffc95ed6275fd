"""Reverse classification accuracy (RCA): segmentation quality without ground truth.

Valindria et al. (IEEE TMI 2017), Robinson et al. (JCMR 2019), as used by Cao et al. 2025:
train a *reverse classifier* on the new image with its predicted mask as labels, apply it
to reference images that have manual masks, and take the best Dice over the references as
the estimated Dice of the prediction. See ``ALGORITHMS.md`` section 5. Optionally the raw
statistics are self-calibrated on corrupted reference masks (``calibration=``).
"""

from __future__ import annotations

import os
import time
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

from .._params import Check, HasMethods, Interval, Options
from .._utils import check_random_state_int, progress, unit_rows
from .._validation import check_embeddings, check_image_and_mask
from ..base import BaseMonitor, register_estimator
from ..data._references import _as_references
from ..data.normalize import as_normalization
from ..data.patches import Patches, _positions
from ..parallel import map_items, read_array, resolve_client, worker_copy, write_table
from ._calibration import _CALIBRATIONS, _Calibration, calibrated, calibration_data
from ._sampling import reference_features, scale_training, training_sample
from ._statistics import (STATISTICS, _out_of_bag_probability, _statistics, aggregate_dice, mask_statistics,
                          reference_dice)
from .drift import drift_percentile, reference_knn_distances
from .evaluation import decide, evaluate_estimates
from .features import DEFAULT_SIGMAS, _check_sigmas, n_features

__all__ = ["RCAMonitor", "STATISTICS", "decide", "evaluate_estimates"]

_CLASSIFIERS = ("random_forest", "extra_trees", "hist_gradient_boosting")
_AGGREGATES = ("max", "mean", "top_k", "max_corrected")


class _Constant:
    """Predictor of one class everywhere (for single-class masks)."""

    def __init__(self, value: int) -> None:
        self.value = int(value)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.value, dtype=np.float32)


@register_estimator
class RCAMonitor(BaseMonitor):
    """Estimate the Dice of a segmentation without ground truth (reverse classification accuracy).

    For a new image and its predicted mask, a pixel classifier (the *reverse classifier*)
    is trained on the image with the prediction as labels, using an ilastik-like bank of
    49 filter features (:func:`~biodatacentric.monitor.features.pixel_features`) on a
    class-balanced pixel sample drawn from every slice. It then segments every reference
    image (annotated patches, e.g. the core set) or the ``n_references`` nearest by
    embedding, and the Dice against each reference mask is computed. If the prediction is
    good, a classifier trained on it segments at least one similar reference well; the
    aggregate (best Dice by default) is the estimated Dice.

    Parameters
    ----------
    classifier : {"random_forest", "extra_trees", "hist_gradient_boosting"} or estimator
        The reverse classifier; a scikit-learn classifier instance is cloned per image.
    n_pixels : int
        Pixels sampled to train it, half foreground and half background (fewer if a class
        has fewer pixels in the sampled tiles).
    n_estimators : int
        Trees (boosting iterations for ``"hist_gradient_boosting"``).
    max_features : float, int or str
        Features tried per split (forests). ``"sqrt"`` (7 of 49) trains about 8x faster
        than Cao et al.'s 0.7 with the same estimates in our benchmark
        (``benchmarks/bench_rca.py``); pass 0.7 for their setting.
    min_samples_leaf : int
        Smallest leaf of the forests; larger leaves give smaller, faster trees.
    max_samples : float or None
        Share of the pixel sample each tree is grown on (forests, bootstrap); None = all.
    prior_correction : bool
        The classifier is trained on a class-balanced sample, which shifts its decisions
        towards the foreground. With ``True`` a reference pixel is foreground when its
        probability exceeds ``1 - pi`` (``pi`` = foreground share of the predicted mask)
        instead of 0.5, which is the decision of a classifier trained at the image's own
        class frequencies: masks that miss vessels then teach the reverse classifier to
        miss them too.
    n_references : int, optional
        Use only the references nearest to the image in embedding space (needs reference
        embeddings at fit and image embeddings or an ``embedder`` at score); all by default.
    aggregate : {"max", "mean", "top_k", "max_corrected"}
        How per-reference Dice values become the estimate (``"top_k"``: mean of the
        ``top_k`` best; ``"max_corrected"``: the Dice on the reference where it beats chance
        the most, ``(D - D0) / (1 - D0)`` with ``D0 = 2 p t / (p + t)`` the Dice of a random
        prediction of the same foreground share ``p`` on a reference of share ``t``, so that
        references mostly covered by foreground cannot reward predicting everything).
        The maximum grows with the number of references (pitfall R7): compare runs at a
        fixed reference set.
    top_k : int
        ``k`` of ``aggregate="top_k"``.
    threshold : float
        A segmentation passes when its estimated Dice is at least this.
    review_margin : float, optional
        Width of a review band around ``threshold``: ``score`` returns ``decision="review"``
        for estimates within the band (``threshold - review_margin <= estimate <
        threshold + review_margin``), so that a person looks at the stacks the estimate
        cannot separate, and ``"pass"`` / ``"fail"`` outside it. ``None`` (default) or 0
        decides every estimate by ``threshold`` alone. The estimate's typical error on real
        data is about 0.1 (``benchmarks/results/rca.md``), a reasonable first margin.
    sigmas : sequence of float
        Scales of the feature bank (ilastik's defaults).
    normalize : str, (mean, std) or Normalization
        Intensity normalisation of the scored image, computed per image (stack). It must
        match how the reference patches were normalised (``"percentile"`` is the
        :class:`~biodatacentric.Patches` default); ``"none"`` if the image already is.
    feature_scaling : {"shared", "per_image", "none"}
        ``"shared"``: z-score features with the mean/std of the training sample and apply
        the same transform to the references (pitfall R8); ``"per_image"``: z-score every
        image with its own statistics (Cao et al.'s choice); ``"none"``.
    tile_size : int
        Side of the tiles that large stacks are sampled from.
    n_tiles : int or None
        When the image has more tiles than this, features are computed only on this many
        tiles (spread over all slices, more often where the rarer class is) plus their
        context margin, and pixels are sampled inside them. ``None`` always uses whole slices.
    reference_stride : int
        Reference pixels are classified on a grid with this step (1 = every pixel); the
        Dice on a 2x-subsampled grid differs from the full Dice by well under 0.01 for
        structures a few pixels wide and costs a quarter of the prediction time.
    single_class : {"raise", "constant"}
        What to do with a predicted mask holding one class only (blank or full): raise a
        ``ValueError``, or score it as a constant prediction on every reference.
    embedder : callable or object with ``transform``, optional
        Maps an ``(n, h, w)`` float32 array of normalised patches to ``(n, d)`` embeddings;
        used at fit (references) and score (tiles of the image) when embeddings are not given.
    drift_k : int
        Neighbour rank of the drift score.
    calibration : {None, "forest", "linear", "isotonic"}
        Self-calibration fitted in :meth:`fit` from the references alone. The raw RCA
        aggregate is a biased, compressed estimate (a reverse classifier forgives many
        label errors: dilated, noisy or brightness-threshold masks still segment some
        reference well). With a calibration, :meth:`fit` corrupts the references' own
        masks (:mod:`~biodatacentric.monitor.corruptions`: erosion, dilation, shift,
        dropped branches, flipped pixels, intensity thresholds, Otsu, inversion; random
        strengths), scores each corrupted mask against the references of the *other*
        source stacks exactly as :meth:`score` scores a new stack, and fits a map from the
        RCA statistics (:data:`STATISTICS`) to the known true Dice: ``"forest"``
        (extremely randomised regression trees on all statistics, recommended),
        ``"linear"`` (ridge) or ``"isotonic"`` (monotone map of the raw aggregate). The
        estimate and the pass/fail flag then use the calibrated value; the raw aggregate
        stays in ``raw_estimated_dice``. ``None``: no calibration (fast ``fit``).
    calibration_size : int
        Corrupted masks per fold of references (the calibration set has about
        ``calibration_size x min(calibration_folds, number of source stacks)`` entries).
    calibration_folds : int
        At most this many folds of source stacks; each fold is scored against the others.
    n_jobs : int
        Threads for the features and the classifier (-1 = all cores).
    random_state : int, optional
        Seed of the pixel sampling and the classifier; the same seed gives the same estimate.
    verbose : bool, optional
        Progress bars (``None``: when stderr is a terminal).

    Attributes
    ----------
    n_references_ : int
        Number of references.
    reference_images_, reference_masks_ : ndarray (n, h, w)
        The reference database (normalised float32 images, uint8 masks).
    reference_sources_ : list of str
        Provenance ``"source:z:y:x"`` of each reference.
    reference_groups_ : list
        Group (source stack) of each reference: ``groups`` of :meth:`fit` or its default.
    reference_embeddings_ : ndarray (n, d) or None
        L2-normalised reference embeddings for retrieval.
    drift_embeddings_, drift_reference_distances_ : ndarray or None
        Training embeddings and their k-NN distance distribution for the drift score.
    calibration_ : str or None
        The fitted calibration (``None`` without).
    calibration_X_, calibration_y_, calibration_raw_ : ndarray or None
        The self-calibration set: RCA statistics, true Dice and raw aggregate of each
        corrupted reference mask (the map is rebuilt from them after :meth:`load`).
    calibration_kinds_ : list of str
        Corruption of each calibration entry.
    calibration_seconds_ : float
        Time the self-calibration took in :meth:`fit`.

    Notes
    -----
    *Speed.* Features are computed only where pixels are sampled: a large stack is cut
    into ``tile_size`` tiles, ``n_tiles`` of them (spread over all slices, biased towards
    the rarer class) are filtered together with the context margin the largest kernel
    needs, so the sampled features equal those of the whole slice. Reference features are
    computed once in :meth:`fit` (and again after :meth:`load`). The forest defaults
    (``max_features="sqrt"``, ``max_samples=0.5``, ``min_samples_leaf=5``) and
    ``reference_stride=2`` keep one 7 x 1024 x 1024 stack with 25 references of 224 x 224
    within a few seconds on two cores; ``benchmarks/bench_rca.py`` measures the split.

    *Validity.* RCA checks that the prediction is *consistent with the annotated
    references*. Segmentations that are wrong on this image but behave like the reference
    annotations elsewhere (an intensity threshold on an image with dye leakage) are rated
    high, and references unlike the image rate good predictions low (pitfall R9): keep the
    reference set representative, use ``n_references`` retrieval, and watch ``drift``.
    References whose mask covers most of the patch reward predicting everything under
    ``aggregate="max"``; ``aggregate="max_corrected"`` guards against that.

    *Calibration.* The raw best-reference Dice is compressed towards high values: a forest
    trained on a dilated, noisy or brightness-threshold mask still segments some reference
    well. ``calibration="forest"`` learns, from corrupted copies of the references' own
    masks scored against references of other stacks (ground truth known there, none of the
    scored image used), how the RCA statistics map to the true Dice; the statistics add the
    mean over the references most similar to the image (feature means), the
    prior-corrected decision rule, the predicted-to-true foreground-share ratio and the
    reverse classifier's out-of-bag agreement with its own training mask (label noise
    cannot be learnt from the image, so it lowers that agreement), how well one intensity
    threshold explains the mask and how its shape (ridge fit, boundary share, fragments)
    departs from the references' masks. ``benchmarks/bench_rca.py``
    reports raw and calibrated estimates side by side. A subclass that overrides
    :meth:`_reverse_segment` gets statistics computed from its masks (both rules equal, no
    self-consistency or similarity terms; the calibration fills them with their mean).

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> from biodatacentric.monitor import RCAMonitor
    >>> refs = [make_vessels((96, 96), random_state=s) for s in range(3)]
    >>> ref_img = np.stack([r[0] for r in refs]); ref_msk = np.stack([r[1] for r in refs])
    >>> mon = RCAMonitor(n_pixels=2000, n_estimators=10, normalize="none",
    ...                  random_state=0).fit((ref_img, ref_msk))
    >>> img, truth = make_vessels((96, 96), random_state=7)
    >>> good = mon.score(img, truth)
    >>> bad = mon.score(img, np.roll(truth, 20, axis=1))
    >>> bool(good["estimated_dice"] > bad["estimated_dice"]), good["passed"]
    (True, True)
    """

    _fitted_attribute = "n_references_"
    _parameter_constraints: dict = {
        "classifier": [Options(_CLASSIFIERS), HasMethods(("fit", "predict"))],
        "n_pixels": [Interval(Integral, 2, None)],
        "n_estimators": [Interval(Integral, 1, None)],
        "max_features": [Options(("sqrt", "log2")), Interval(Integral, 1, None),
                         Interval(Real, 0.0, 1.0, closed="right"), None],
        "min_samples_leaf": [Interval(Integral, 1, None)],
        "max_samples": [None, Interval(Real, 0.0, 1.0, closed="right")],
        "prior_correction": ["boolean"],
        "n_references": [None, Interval(Integral, 1, None)],
        "aggregate": [Options(_AGGREGATES)],
        "top_k": [Interval(Integral, 1, None)],
        "threshold": [Interval(Real, 0.0, 1.0)],
        "review_margin": [None, Interval(Real, 0.0, 0.5)],
        "sigmas": [Check(_check_sigmas, "a non-empty sequence of positive numbers that increase strictly")],
        "normalize": [Check(as_normalization, "a normalisation: a method name such as 'percentile', "
                                               "a (mean, std) pair, a dict or a Normalization")],
        "feature_scaling": [Options(("shared", "per_image", "none"))],
        "tile_size": [Interval(Integral, 16, None)],
        "n_tiles": [None, Interval(Integral, 1, None)],
        "reference_stride": [Interval(Integral, 1, None)],
        "single_class": [Options(("raise", "constant"))],
        "embedder": [None, "callable", HasMethods(("transform",))],
        "drift_k": [Interval(Integral, 1, None)],
        "calibration": [None, Options(_CALIBRATIONS)],
        "calibration_size": [Interval(Integral, 1, None)],
        "calibration_folds": [Interval(Integral, 2, None)],
        "n_jobs": [None, Interval(Integral, None, None)],
        "random_state": ["random_state"],
        "verbose": [None, "boolean"],
    }

    def __init__(self, classifier: Any = "random_forest", n_pixels: int = 10000, n_estimators: int = 100,
                 max_features: Any = "sqrt", min_samples_leaf: int = 5, max_samples: float | None = 0.5,
                 prior_correction: bool = False, n_references: int | None = None, aggregate: str = "max", top_k: int = 3,
                 threshold: float = 0.7, review_margin: float | None = None,
                 sigmas: Sequence[float] = DEFAULT_SIGMAS,
                 normalize: Any = "percentile", feature_scaling: str = "shared", tile_size: int = 128,
                 n_tiles: int | None = 16, reference_stride: int = 2, single_class: str = "raise",
                 embedder: Any = None, drift_k: int = 5, calibration: str | None = None,
                 calibration_size: int = 16, calibration_folds: int = 8, n_jobs: int = -1,
                 random_state: int | None = None, verbose: bool | None = None) -> None:
        self.classifier = classifier
        self.n_pixels = n_pixels
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.min_samples_leaf = min_samples_leaf
        self.max_samples = max_samples
        self.prior_correction = prior_correction
        self.n_references = n_references
        self.aggregate = aggregate
        self.top_k = top_k
        self.threshold = threshold
        self.review_margin = review_margin
        self.sigmas = sigmas
        self.normalize = normalize
        self.feature_scaling = feature_scaling
        self.tile_size = tile_size
        self.n_tiles = n_tiles
        self.reference_stride = reference_stride
        self.single_class = single_class
        self.embedder = embedder
        self.drift_k = drift_k
        self.calibration = calibration
        self.calibration_size = calibration_size
        self.calibration_folds = calibration_folds
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    # ------------------------------------------------------------------ fit
    def fit(self, references: Patches | tuple[np.ndarray, np.ndarray], y: None = None, *, embeddings: Any = None,
            training_embeddings: Any = None, groups: Any = None) -> "RCAMonitor":
        """Store the reference database: annotated patches with their masks.

        Parameters
        ----------
        references : Patches with masks, or (images, masks) arrays of shape (n, h, w)
            The annotated references (e.g. the core set). Images must be normalised the way
            ``normalize`` normalises scored images. References whose mask is empty make
            the default ``aggregate="max"`` optimistic (an empty prediction scores 1.0 on
            them by the empty-mask convention); prefer references that contain foreground.
        y : None
            Ignored.
        embeddings : array (n, d), optional
            Embeddings of the references, for ``n_references`` retrieval. Computed with
            ``embedder`` when omitted and an embedder is set.
        training_embeddings : array (N, d), optional
            Embeddings of the segmenter's training patches, for the drift score.
        groups : array (n,), optional
            Source (stack) of each reference, for ``calibration`` and
            :meth:`reference_agreement`: references of one group are calibrated against the
            other groups only, as a new stack is scored against references of other stacks.
            Defaults to the source file of each patch (:class:`~biodatacentric.Patches`
            provenance); for plain arrays every reference is its own group (optimistic when
            several come from one stack: pass groups). Kept as ``reference_groups_``.
        """
        self._validate_params()
        images, masks, sources = _as_references(references)
        if embeddings is None and self.embedder is not None:
            embeddings = _embed(self.embedder, images)
        ref_emb = None
        if embeddings is not None:
            ref_emb = check_embeddings(embeddings, name="embeddings")
            if len(ref_emb) != len(images):
                raise ValueError(f"embeddings has {len(ref_emb)} rows for {len(images)} references; "
                                 "pass one embedding per reference")
            ref_emb = unit_rows(ref_emb)
        drift_emb = drift_dist = None
        if training_embeddings is not None:
            drift_emb = unit_rows(check_embeddings(training_embeddings, name="training_embeddings"))
            if len(drift_emb) < self.drift_k + 1:
                raise ValueError(f"training_embeddings needs at least drift_k + 1 = {self.drift_k + 1} rows")
            if ref_emb is not None and ref_emb.shape[1] != drift_emb.shape[1]:
                raise ValueError("embeddings and training_embeddings differ in dimension; use one embedder")
            drift_dist = reference_knn_distances(drift_emb, int(self.drift_k), 2000, 0)
        self.reference_images_ = images
        self.reference_masks_ = masks
        self.reference_sources_ = sources
        self.reference_embeddings_ = ref_emb
        self.drift_embeddings_ = drift_emb
        self.drift_reference_distances_ = drift_dist
        self.n_features_ = n_features(self.sigmas)
        self.n_references_ = len(images)
        self._ref_cache = None
        self._ref_mask_values = None
        reference_features(self)  # computed once, cached
        self.reference_groups_ = _reference_groups(groups, sources).tolist()
        self.calibration_ = None
        self.calibration_X_ = self.calibration_y_ = self.calibration_raw_ = None
        self._calibration_model = None
        if self.calibration is not None:
            groups = np.asarray(self.reference_groups_)
            t = time.perf_counter()
            seed = check_random_state_int(self.random_state)
            X, yv, kinds, raw = calibration_data(self, groups, seed)
            if len(yv) < 5:
                raise ValueError(f"self-calibration produced only {len(yv)} usable corrupted masks; use more "
                                 "references or calibration_size, or calibration=None")
            self.calibration_X_, self.calibration_y_, self.calibration_raw_ = X, yv, raw
            self.calibration_kinds_ = list(kinds)
            self.calibration_ = str(self.calibration)
            self._calibration_model = _Calibration(self.calibration_, X, yv, raw)
            self.calibration_seconds_ = time.perf_counter() - t
        return self

    def reference_agreement(self, groups: Any = None) -> list[dict]:
        """How well each group's expert masks agree with the annotations of the other groups.

        The references of each group (source stack) are scored with their own expert masks
        as the "prediction" against the references of the other groups, as :meth:`score`
        scores a new stack. An expert mask is right by definition, so a low score means that
        the group's annotators drew vessels differently from the others (thinner, fewer
        branches, another boundary), or that the group's images look unlike the others'.
        RCA can only measure agreement with the references' convention: on
        ``vesselnn_2pm`` the per-stack accuracy of the pass/fail flag followed this agreement
        of the stack's own labels closely (``benchmarks/results/rca.md``, "Flag accuracy
        follows the agreement of a stack's labels with the others'"). Check it before trusting
        estimates, and look at the references of the groups that score low.

        Parameters
        ----------
        groups : array (n,), optional
            Group of each reference (default: the groups of :meth:`fit`).

        Returns
        -------
        list of dict, one per group (in sorted order), with ``group``, ``n_references``,
        ``agreement`` (the best Dice over the other groups' references under the prior-corrected
        decision rule, the ``prior_max`` statistic), ``balanced_max`` (the same under the
        0.5 rule), ``best_reference_source`` and ``calibrated_estimate`` (the monitor's estimate
        of that Dice, which is 1 for an expert mask; ``None`` without a calibration). Groups
        whose masks hold one class only get NaN values.

        Examples
        --------
        >>> import numpy as np
        >>> from biodatacentric import make_vessels
        >>> pairs = [make_vessels((64, 64), random_state=s) for s in range(4)]
        >>> img = np.stack([p[0] for p in pairs]); msk = np.stack([p[1] for p in pairs])
        >>> msk[3] = np.roll(msk[3], 12, axis=1)          # one annotation is off by 12 pixels
        >>> mon = RCAMonitor(n_pixels=2000, n_estimators=20, normalize="none", random_state=0)
        >>> rows = mon.fit((img, msk)).reference_agreement()
        >>> [r["group"] for r in rows], int(np.argmin([r["agreement"] for r in rows]))
        ([0, 1, 2, 3], 3)
        """
        self._check_is_fitted()
        # a monitor saved before reference_groups_ existed has None: the default groups
        groups = _reference_groups(getattr(self, "reference_groups_", None) if groups is None else groups,
                                   self.reference_sources_)
        uniq = np.unique(groups)
        if len(uniq) < 2:
            raise ValueError("reference_agreement needs references from at least 2 groups; pass groups=")
        seed = check_random_state_int(self.random_state)
        emb = self.reference_embeddings_
        rows = []
        for g in progress(uniq, desc="RCA reference agreement", enabled=self.verbose, total=len(uniq)):
            inside = np.flatnonzero(groups == g)
            outside = self._select_references(None if emb is None else emb[inside], np.flatnonzero(groups != g))
            mask = self.reference_masks_[inside]
            row = {"group": g.item() if hasattr(g, "item") else g, "n_references": int(len(inside)),
                   "agreement": float("nan"), "balanced_max": float("nan"), "best_reference_source": None,
                   "calibrated_estimate": None}
            n_fg = int(np.count_nonzero(mask))
            if 0 < n_fg < mask.size:
                timings = {"features": 0.0, "training": 0.0, "references": 0.0}
                d, c, stats = self._run_rca(self.reference_images_[inside], mask, outside, seed, timings)
                raw, best = aggregate_dice(self, d, c)
                row.update(agreement=float(stats["prior_max"]), balanced_max=float(stats["balanced_max"]),
                           best_reference_source=self.reference_sources_[int(outside[best])])
                if getattr(self, "calibration_", None) is not None:
                    row["calibrated_estimate"] = float(calibrated(self, raw, stats, n_fg, mask.size))
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ score
    def score(self, image: Any, predicted_mask: Any, axes: str = "YX", *, embeddings: Any = None) -> dict:
        """Estimate the Dice of ``predicted_mask`` as a segmentation of ``image``.

        Parameters
        ----------
        image : array-like
            A 2-D image (``axes="YX"``) or a z-stack (``axes="ZYX"``), raw intensities
            (normalised with ``normalize``), finite values.
        predicted_mask : array-like
            Binary mask of the same shape (0/1, bool or 0/255), both classes present.
        axes : {"YX", "ZYX"}
            Axis order of both arrays.
        embeddings : array (m, d), optional
            Embeddings of the image's patches, for ``n_references`` retrieval and the drift
            score; computed with ``embedder`` when omitted and an embedder is set.

        Returns
        -------
        dict with
            ``estimated_dice`` (float), ``passed`` (estimate >= threshold), ``decision``
            (``"pass"``, ``"fail"``, or ``"review"`` inside ``review_margin``), ``threshold``,
            ``aggregate``, ``per_reference_dice`` (array, one per used reference),
            ``reference_indices`` (which references, nearest first when retrieved),
            ``best_reference`` (index into the references), ``best_reference_source``,
            ``drift`` (dict or None), ``timings`` (seconds: ``features``,
            ``training``, ``references``, ``total``), ``raw_estimated_dice`` (the
            ``aggregate`` before calibration), ``calibrated`` (bool) and ``statistics``
            (dict of the RCA statistics :data:`STATISTICS` used by the calibration).
        """
        self._check_is_fitted()
        img, mask = check_image_and_mask(image, predicted_mask, axes=axes)
        return self._score(img, mask, embeddings=embeddings)

    def _score(self, image: np.ndarray, mask: np.ndarray, embeddings: Any = None) -> dict:
        self._validate_params()
        t0 = time.perf_counter()
        n_fg = int(np.count_nonzero(mask))
        if n_fg == 0 or n_fg == mask.size:
            if self.single_class == "raise":
                which = "background (0)" if n_fg == 0 else "foreground (1)"
                raise ValueError(
                    f"predicted mask holds only {which}: the reverse classifier needs both classes. "
                    "A blank or full mask is a failed segmentation; pass single_class='constant' to "
                    "score it as a constant prediction instead of raising")
        img = self._normalize(image)
        if embeddings is None and self.embedder is not None and \
                (self.n_references is not None or self.drift_embeddings_ is not None):
            embeddings = self._embed_image(img)
        img_emb = check_embeddings(embeddings, name="embeddings") if embeddings is not None else None
        ref_idx = self._select_references(img_emb)
        seed = check_random_state_int(self.random_state)
        timings = {"features": 0.0, "training": 0.0, "references": 0.0}
        dices, chance, stats = self._run_rca(img, mask, ref_idx, seed, timings)
        raw, best_pos = aggregate_dice(self, dices, chance)
        est = calibrated(self, raw, stats, n_fg, mask.size)
        best = int(ref_idx[best_pos])
        drift = None
        if img_emb is not None and self.drift_embeddings_ is not None:
            drift = drift_percentile(img_emb, self.drift_embeddings_, self.drift_reference_distances_,
                                     int(self.drift_k))
        timings["total"] = time.perf_counter() - t0
        return {
            "estimated_dice": float(est),
            "raw_estimated_dice": float(raw),
            "calibrated": bool(getattr(self, "calibration_", None) is not None),
            "statistics": stats,
            "passed": bool(est >= float(self.threshold)),
            "decision": decide(est, float(self.threshold), self.review_margin),
            "threshold": float(self.threshold),
            "aggregate": self.aggregate,
            "per_reference_dice": dices,
            "reference_indices": ref_idx,
            "best_reference": best,
            "best_reference_source": self.reference_sources_[best],
            "drift": drift,
            "timings": timings,
        }

    def score_many(self, images: Sequence[Any], predicted_masks: Sequence[Any], axes: str = "YX",
                   embeddings: Sequence[Any] | None = None, *, client: Any = None, out: Any = None) -> list[dict]:
        """:meth:`score` for each (image, mask) pair, with a progress bar; returns the list of results.

        Parameters
        ----------
        images, predicted_masks : sequences of arrays or paths
            Paths (TIFF, ``.npy``, Zarr arrays) are read where the scoring runs.
        axes : {"YX", "ZYX"}
        embeddings : sequence of arrays, optional
            One ``(m, d)`` array per image (see :meth:`score`).
        client : dask.distributed.Client, None or False
            Score the pairs in parallel on this Dask cluster (``None``: the active client,
            if any; ``False``: in this process), one task per pair; the monitor (with its
            cached reference features) is sent to each worker once. Results are identical
            to a single-process run (except ``timings``).
        out : path, optional
            Also write one row per pair (``index``, ``image``, the scalar results, the drift
            percentile and the total time) to a ``.csv`` or ``.json`` table, atomically.
        """
        self._check_is_fitted()
        images, predicted_masks = list(images), list(predicted_masks)
        if len(images) != len(predicted_masks):
            raise ValueError(f"{len(images)} images but {len(predicted_masks)} predicted masks")
        if embeddings is not None and len(embeddings) != len(images):
            raise ValueError(f"{len(embeddings)} embedding arrays for {len(images)} images")
        if out is not None and not str(out).lower().endswith((".csv", ".json")):
            raise ValueError(f"out={str(out)!r} must end in .csv or .json")
        jobs = [(images[i], predicted_masks[i], None if embeddings is None else embeddings[i])
                for i in range(len(images))]
        dask_client = resolve_client(client)
        if dask_client is None:
            results = [self._score_job(job, axes=axes)
                       for job in progress(jobs, desc="RCA", enabled=self.verbose, total=len(jobs))]
        else:
            results = map_items(worker_copy(self)._score_job, jobs, client=dask_client, axes=axes)
        if out is not None:
            write_table(out, _result_rows(results, images))
        return results

    def _score_job(self, job: tuple, axes: str = "YX") -> dict:
        """One (image, mask, embeddings) pair of :meth:`score_many`, in this process."""
        image, mask, emb = job
        return self.score(read_array(image), read_array(mask), axes=axes, embeddings=emb)

    # ------------------------------------------------------------------ statistics / calibration
    def _run_rca(self, img: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray, seed: int,
                 timings: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        """Reverse-segment the references: per-reference Dice and chance Dice under the
        configured decision rule, and the RCA statistics of both rules (:data:`STATISTICS`)."""
        n_fg = int(np.count_nonzero(mask))
        pi = n_fg / mask.size
        info = {"self_balanced": float("nan"), "self_prior": float("nan")}
        per_rule: dict[str, tuple] = {}
        if type(self)._reverse_segment is not RCAMonitor._reverse_segment:
            pred = self._reverse_segment(img, mask, ref_idx, seed, timings)
            t = time.perf_counter()
            d, c = reference_dice(self, pred, ref_idx)
            per_rule = {"balanced": (d, c, pred), "prior": (d, c, pred)}
            used = "balanced"
        else:
            scores, info = self._reverse_scores(img, mask, ref_idx, seed, timings)
            t = time.perf_counter()
            for rule, cut in (("balanced", 0.5), ("prior", 1.0 - pi if 0 < n_fg < mask.size else 0.5)):
                pred = (scores > cut).astype(np.uint8)
                per_rule[rule] = (*reference_dice(self, pred, ref_idx), pred)
            used = "prior" if self.prior_correction else "balanced"
        info = {**info, **mask_statistics(self, img, mask, ref_idx)}
        desc = info.pop("descriptor", None)
        if desc is not None:
            # the references that look most like the image (feature means), pitfall R9
            _, _, means = reference_features(self)
            scale = means.std(axis=0) + 1e-6
            dist = np.sqrt(np.mean(((means[ref_idx] - desc) / scale) ** 2, axis=1))
            k = int(min(len(ref_idx), max(3, round(np.sqrt(len(ref_idx))))))
            near = np.argsort(dist, kind="stable")[:k]
            info["near"], info["near_distance"] = near, float(dist[near].mean())
        stats = _statistics(per_rule, self.reference_masks_[ref_idx], pi, info, int(self.top_k))
        timings["references"] += time.perf_counter() - t
        dices, chance, _ = per_rule[used]
        return dices, chance, stats

    # ------------------------------------------------------------------ hooks
    def _fit_reverse(self, features: np.ndarray, labels: np.ndarray, seed: int) -> Any:
        """Hook: train the reverse classifier on ``features`` (n, F) float32 and ``labels`` (n,) uint8.

        Returns a predictor: an object with ``predict(features) -> labels`` or a callable.
        Override this one method to plug in another pixel classifier.
        """
        clf = self.classifier
        if isinstance(clf, str):
            n_jobs = self.n_jobs
            if clf == "hist_gradient_boosting":
                model = HistGradientBoostingClassifier(max_iter=int(self.n_estimators), early_stopping=False,
                                                       min_samples_leaf=int(self.min_samples_leaf),
                                                       class_weight="balanced", random_state=seed)
            else:
                klass = RandomForestClassifier if clf == "random_forest" else ExtraTreesClassifier
                bootstrap = self.max_samples is not None or clf == "random_forest"
                # the self-consistency statistic uses out-of-bag predictions (_out_of_bag_probability)
                model = klass(n_estimators=int(self.n_estimators), max_features=self.max_features,
                              min_samples_leaf=int(self.min_samples_leaf), bootstrap=bootstrap,
                              max_samples=self.max_samples, class_weight="balanced",
                              n_jobs=n_jobs, random_state=seed)
        else:
            model = clone(clf)
            if "random_state" in model.get_params():
                model.set_params(random_state=seed)
        return model.fit(features, labels)

    def _predict_reverse(self, predictor: Any, features: np.ndarray) -> np.ndarray:
        """Apply a predictor from :meth:`_fit_reverse` to ``features`` (m, F).

        Returns (m,) foreground probabilities (``predict_proba`` where the predictor has
        it) or 0/1 labels; :meth:`_reverse_segment` thresholds them.
        """
        if hasattr(predictor, "predict_proba") and hasattr(predictor, "classes_"):
            proba = predictor.predict_proba(features)
            classes = list(predictor.classes_)
            if 1 in classes:
                return np.asarray(proba[:, classes.index(1)], dtype=np.float32)
            return np.zeros(len(features), dtype=np.float32)
        out = predictor.predict(features) if hasattr(predictor, "predict") else predictor(features)
        return np.asarray(out, dtype=np.float32).ravel()

    def _reverse_segment(self, image: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray, seed: int,
                         timings: dict) -> np.ndarray:
        """Hook: segment the references ``ref_idx`` with a classifier trained on (image, mask).

        ``image`` is the normalised float32 (Z, Y, X) stack, ``mask`` the uint8 prediction.
        Returns predicted masks for the chosen references, either (k, h, w) at full
        resolution or (k, m) on the ``reference_stride`` grid. Override this method for a
        reverse classifier that does not use pixel features (a small CNN, an atlas);
        override :meth:`_fit_reverse` for another pixel classifier.
        """
        scores, _ = self._reverse_scores(image, mask, ref_idx, seed, timings)
        t = time.perf_counter()
        n_fg = int(np.count_nonzero(mask))
        cut = 0.5
        if self.prior_correction and 0 < n_fg < mask.size:
            cut = 1.0 - n_fg / mask.size
        pred = (scores > cut).astype(np.uint8)
        timings["references"] += time.perf_counter() - t
        return pred

    def _reverse_scores(self, image: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray, seed: int,
                        timings: dict) -> tuple[np.ndarray, dict]:
        """Foreground scores (k, m) of the references on the stride grid, and self-consistency.

        The second value holds ``self_balanced`` / ``self_prior``: the Dice between the
        reverse classifier's out-of-bag predictions on its own training pixels (in-sample
        predictions for classifiers without out-of-bag estimates) and the predicted mask,
        re-weighted from the class-balanced sample to the mask's own class shares, under
        the 0.5 and the prior-corrected decision rules (NaN for single-class masks).
        """
        t = time.perf_counter()
        n_fg = int(np.count_nonzero(mask))
        ref_feats, _, _ = reference_features(self)
        info = {"self_balanced": float("nan"), "self_prior": float("nan")}
        if n_fg == 0 or n_fg == mask.size:
            predictor: Any = _Constant(1 if n_fg else 0)
            timings["features"] += time.perf_counter() - t
        else:
            X, y = training_sample(self, image, mask, seed)
            timings["features"] += time.perf_counter() - t
            t = time.perf_counter()
            if self.feature_scaling != "per_image" and y.min() != y.max():
                # mean features of the image (classes re-weighted to the mask's shares)
                pi_ = n_fg / mask.size
                info["descriptor"] = pi_ * X[y == 1].mean(axis=0, dtype=np.float64) + \
                    (1 - pi_) * X[y == 0].mean(axis=0, dtype=np.float64)
            X, mu, sd = scale_training(self, X)
            predictor = self._fit_reverse(X, y, seed)
            timings["training"] += time.perf_counter() - t
            info.update(_self_consistency(self, predictor, X, y, n_fg / mask.size))
        t = time.perf_counter()
        sel = ref_feats[ref_idx]
        k, m, F = sel.shape
        Xr = sel.reshape(k * m, F)
        if self.feature_scaling == "shared" and not isinstance(predictor, _Constant):
            Xr = (Xr - mu) / sd
        scores = self._predict_reverse(predictor, Xr).reshape(k, m)
        timings["references"] += time.perf_counter() - t
        return scores, info

    # ------------------------------------------------------------------ internals
    def _normalize(self, image: np.ndarray) -> np.ndarray:
        norm = as_normalization(self.normalize)
        off, scale, clip = norm.compute(image, source="image")
        out = (image - np.float32(off)) * np.float32(scale)
        if clip:
            np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)

    def _embed_image(self, image: np.ndarray) -> np.ndarray:
        """Embeddings of reference-sized tiles covering every slice of ``image``."""
        _, ph, pw = self.reference_images_.shape
        Z, H, W = image.shape
        if H < ph or W < pw:
            raise ValueError(f"the image ({H}x{W}) is smaller than the references ({ph}x{pw}); pass "
                             "embeddings= explicitly")
        tiles = [image[z, y:y + ph, x:x + pw] for z in range(Z)
                 for y in _positions(H, ph, ph) for x in _positions(W, pw, pw)]
        return _embed(self.embedder, np.stack(tiles))

    def _select_references(self, img_emb: np.ndarray | None, candidates: np.ndarray | None = None) -> np.ndarray:
        """The references an image is scored against: all ``candidates`` (default: every
        reference), or the ``n_references`` of them nearest to any of the image's patch embeddings."""
        cand = np.arange(self.n_references_) if candidates is None else np.asarray(candidates, dtype=np.int64)
        n = len(cand)
        if self.n_references is None or self.n_references >= n:
            return cand
        if self.reference_embeddings_ is None:
            raise ValueError(f"n_references={self.n_references} needs reference embeddings: pass "
                             "embeddings= to fit (or set embedder), or use n_references=None")
        if img_emb is None:
            raise ValueError(f"n_references={self.n_references} needs the image's patch embeddings: pass "
                             "embeddings= to score (or set embedder), or use n_references=None")
        ref = self.reference_embeddings_[cand]
        if img_emb.shape[1] != ref.shape[1]:
            raise ValueError(f"image embeddings have {img_emb.shape[1]} dimensions but the reference "
                             f"embeddings have {ref.shape[1]}; use the same embedder")
        q = unit_rows(img_emb)
        # cosine distance of each reference to its nearest image patch; start at +inf (R5)
        best = np.full(n, np.inf)
        for start in range(0, len(q), 4096):
            d = 1.0 - q[start:start + 4096] @ ref.T
            np.minimum(best, d.min(axis=0), out=best)
        return cand[np.argsort(best, kind="stable")[: int(self.n_references)]]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, true_dice: Any, estimated_dice: Any, threshold: float | None = None,
                 review_margin: float | None = None) -> dict:
        """Agreement of estimated and true Dice values (needs no fitting).

        A *positive* is a failed segmentation (Dice below ``threshold``): sensitivity is the
        share of true failures flagged, specificity the share of good segmentations passed.
        ``threshold`` and ``review_margin`` default to the monitor's.

        Returns
        -------
        dict with ``pearson_r``, ``spearman_rho``, ``mae``, ``accuracy``, ``sensitivity``,
        ``specificity``, ``threshold`` and ``n`` (NaN where undefined, e.g. no failures);
        with a review margin also ``review_margin``, ``review_share`` (estimates sent to
        review) and ``decided_accuracy`` (accuracy of the pass/fail decisions outside the
        band). See :func:`evaluate_estimates`.

        Examples
        --------
        >>> r = RCAMonitor().evaluate([0.9, 0.8, 0.3, 0.1], [0.85, 0.75, 0.4, 0.2])
        >>> round(r["pearson_r"], 3), r["accuracy"], round(r["mae"], 3)
        (0.998, 1.0, 0.075)
        """
        return evaluate_estimates(true_dice, estimated_dice,
                                  self.threshold if threshold is None else threshold,
                                  review_margin=self.review_margin if review_margin is None else review_margin)

    # ------------------------------------------------------------------ persistence / checks
    def _load_extra(self, folder: Any, config: dict) -> None:
        for name in ("reference_embeddings_", "reference_groups_", "drift_embeddings_",
                     "drift_reference_distances_",
                     "calibration_", "calibration_X_", "calibration_y_", "calibration_raw_"):
            if not hasattr(self, name):
                setattr(self, name, None)
        self._ref_cache = None
        self._ref_mask_values = None
        self._calibration_model = None
        X = getattr(self, "calibration_X_", None)
        if X is not None and np.asarray(X).shape[1] != len(STATISTICS):
            raise ValueError(f"{folder}: the saved self-calibration holds {np.asarray(X).shape[1]} RCA statistics "
                             f"but this version computes {len(STATISTICS)}; fit the monitor again with this version")


# ---------------------------------------------------------------------- helpers


def _self_consistency(mon: "RCAMonitor", predictor: Any, X: np.ndarray, y: np.ndarray, pi: float) -> dict:
    """Dice of the reverse classifier's out-of-bag (else in-sample) predictions against the
    training labels, re-weighted from the class-balanced sample to the class shares ``pi``."""
    p = _out_of_bag_probability(predictor, X)
    if p is None:
        p = mon._predict_reverse(predictor, X)
    fg = np.asarray(y) == 1
    n1, n0 = max(int(fg.sum()), 1), max(int((~fg).sum()), 1)
    w = np.where(fg, pi / n1, (1.0 - pi) / n0)
    out = {}
    for name, cut in (("self_balanced", 0.5), ("self_prior", 1.0 - pi)):
        pr = p > cut
        tp, fp, fn = w[pr & fg].sum(), w[pr & ~fg].sum(), w[~pr & fg].sum()
        den = 2 * tp + fp + fn
        out[name] = float(2 * tp / den) if den > 0 else 1.0
    return out


def _reference_groups(groups: Any, sources: list[str]) -> np.ndarray:
    """``groups`` checked against the references' ``sources``, or the default when None: each
    reference's source file, or every reference its own group when they all come from one."""
    if groups is None:
        groups = np.array([src.rsplit(":", 3)[0] for src in sources])
        if len(np.unique(groups)) == 1:
            groups = np.arange(len(sources))
    groups = np.asarray(groups).ravel()
    if len(groups) != len(sources):
        raise ValueError(f"groups has {len(groups)} entries for {len(sources)} references")
    return groups


def _embed(embedder: Any, images: np.ndarray) -> np.ndarray:
    if hasattr(embedder, "transform"):
        out = embedder.transform(images)
    elif callable(embedder):
        out = embedder(images)
    else:
        raise TypeError("embedder must be callable or have a transform method mapping (n, h, w) patches "
                        "to (n, d) embeddings")
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = check_embeddings(out, name="embedder output")
    if len(out) != len(images):
        raise ValueError(f"embedder returned {len(out)} embeddings for {len(images)} patches")
    return out


def _result_rows(results: list[dict], images: list) -> list[dict]:
    """Flat table rows of :meth:`RCAMonitor.score_many` results (scalars only)."""
    rows = []
    for i, (res, image) in enumerate(zip(results, images)):
        row: dict = {"index": i, "image": os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image{i}"}
        for key, value in res.items():
            if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
                row[key] = value.item() if hasattr(value, "item") else value
        drift = res.get("drift")
        if isinstance(drift, dict) and "percentile" in drift:
            row["drift_percentile"] = float(drift["percentile"])
        timings = res.get("timings")
        if isinstance(timings, dict) and "total" in timings:
            row["seconds"] = float(timings["total"])
        rows.append(row)
    return rows

