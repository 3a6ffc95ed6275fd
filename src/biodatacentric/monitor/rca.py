"""Reverse classification accuracy (RCA): segmentation quality without ground truth.

Valindria et al. (IEEE TMI 2017), Robinson et al. (JCMR 2019), as used by Cao et al. 2025:
train a *reverse classifier* on the new image with its predicted mask as labels, apply it
to reference images that have manual masks, and take the best Dice over the references as
the estimated Dice of the prediction. See ``ALGORITHMS.md`` section 5. Optionally the raw
statistics are self-calibrated on corrupted reference masks (``calibration=``).
"""

from __future__ import annotations

import time
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from .._params import Check, HasMethods, Interval, Options
from .._utils import check_random_state_int, progress
from .._validation import check_embeddings, check_image_and_mask
from ..base import BaseMonitor, register_estimator
from .drift import _l2_normalize, drift_percentile, reference_knn_distances
from .features import DEFAULT_SIGMAS, _check_sigmas, feature_margin, n_features, pixel_features

__all__ = ["RCAMonitor", "STATISTICS", "decide", "evaluate_estimates"]

_CLASSIFIERS = ("random_forest", "extra_trees", "hist_gradient_boosting")
_AGGREGATES = ("max", "mean", "top_k", "max_corrected")
_CALIBRATIONS = ("forest", "linear", "isotonic")


def _as_normalization(spec: Any) -> Any:
    from ..data.normalize import as_normalization

    return as_normalization(spec)


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
        "normalize": [Check(_as_normalization, "a normalisation: a method name such as 'percentile', "
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
    def fit(self, references: Any, y: None = None, *, embeddings: Any = None,
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
            ref_emb = _l2_normalize(ref_emb)
        drift_emb = drift_dist = None
        if training_embeddings is not None:
            drift_emb = _l2_normalize(check_embeddings(training_embeddings, name="training_embeddings"))
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
        self._reference_features()  # computed once, cached
        self.reference_groups_ = _reference_groups(groups, sources).tolist()
        self.calibration_ = None
        self.calibration_X_ = self.calibration_y_ = self.calibration_raw_ = None
        self._calibration_model = None
        if self.calibration is not None:
            groups = np.asarray(self.reference_groups_)
            t = time.perf_counter()
            seed = check_random_state_int(self.random_state)
            X, yv, kinds, raw = self._calibration_data(groups, seed)
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
                raw, best = self._aggregate(d, c)
                row.update(agreement=float(stats["prior_max"]), balanced_max=float(stats["balanced_max"]),
                           best_reference_source=self.reference_sources_[int(outside[best])])
                if getattr(self, "calibration_", None) is not None:
                    row["calibrated_estimate"] = float(self._calibrated(raw, stats, n_fg, mask.size))
            rows.append(row)
        return rows

    def _reference_features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Cached reference features on the stride grid: (n, m, F), masks (n, m), per-ref stats."""
        cache = getattr(self, "_ref_cache", None)
        key = (tuple(_check_sigmas(self.sigmas)), int(self.reference_stride), self.feature_scaling)
        if cache is not None and cache[0] == key:
            return cache[1]
        s = int(self.reference_stride)
        imgs = self.reference_images_
        n, h, w = imgs.shape
        gh, gw = len(range(0, h, s)), len(range(0, w, s))
        F = n_features(self.sigmas)
        feats = np.empty((n, gh * gw, F), dtype=np.float32)
        chunk = 8
        for start in progress(range(0, n, chunk), desc="reference features", enabled=self.verbose,
                              total=(n + chunk - 1) // chunk):
            block = pixel_features(imgs[start:start + chunk], self.sigmas, n_jobs=self.n_jobs)
            block = block[:, :, ::s, ::s]
            feats[start:start + len(block)] = block.reshape(len(block), F, -1).transpose(0, 2, 1)
        means = feats.mean(axis=1, dtype=np.float64)   # appearance descriptor of each reference
        if self.feature_scaling == "per_image":
            mu = feats.mean(axis=1, keepdims=True)
            sd = feats.std(axis=1, keepdims=True)
            feats -= mu
            feats /= np.maximum(sd, 1e-6)
        masks = self.reference_masks_[:, ::s, ::s].reshape(n, -1)
        out = (feats, masks, means)
        self._ref_cache = (key, out)
        return out

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
        raw, best_pos = self._aggregate(dices, chance)
        est = self._calibrated(raw, stats, n_fg, mask.size)
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
        from ..parallel import map_items, resolve_client, worker_copy

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
            from ..parallel import write_table

            write_table(out, _result_rows(results, images))
        return results

    def _score_job(self, job: tuple, axes: str = "YX") -> dict:
        """One (image, mask, embeddings) pair of :meth:`score_many`, in this process."""
        from ..parallel import read_array

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
            d, c = self._reference_dice(pred, ref_idx)
            per_rule = {"balanced": (d, c, pred), "prior": (d, c, pred)}
            used = "balanced"
        else:
            scores, info = self._reverse_scores(img, mask, ref_idx, seed, timings)
            t = time.perf_counter()
            for rule, cut in (("balanced", 0.5), ("prior", 1.0 - pi if 0 < n_fg < mask.size else 0.5)):
                pred = (scores > cut).astype(np.uint8)
                per_rule[rule] = (*self._reference_dice(pred, ref_idx), pred)
            used = "prior" if self.prior_correction else "balanced"
        info = {**info, **self._mask_statistics(img, mask, ref_idx)}
        desc = info.pop("descriptor", None)
        if desc is not None:
            # the references that look most like the image (feature means), pitfall R9
            _, _, means = self._reference_features()
            scale = means.std(axis=0) + 1e-6
            dist = np.sqrt(np.mean(((means[ref_idx] - desc) / scale) ** 2, axis=1))
            k = int(min(len(ref_idx), max(3, round(np.sqrt(len(ref_idx))))))
            near = np.argsort(dist, kind="stable")[:k]
            info["near"], info["near_distance"] = near, float(dist[near].mean())
        stats = _statistics(per_rule, self.reference_masks_[ref_idx], pi, info, int(self.top_k))
        timings["references"] += time.perf_counter() - t
        dices, chance, _ = per_rule[used]
        return dices, chance, stats

    def _mask_statistics(self, img: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray) -> dict:
        """How well the image explains the mask, and how its shape departs from the references' masks.

        *Intensity.* A segmenter that follows image brightness instead of the annotators'
        convention produces masks that RCA rates highly (its reverse classifier learns "bright
        is foreground", which also fits the references; pitfall R9). Such masks are explained by
        one intensity threshold better than expert masks are: ``intensity_auc`` (ROC AUC of the
        smoothed intensity for the mask) and ``intensity_dice`` (Dice of the best single
        threshold), see :func:`_intensity_fit`.

        *Shape.* Expert vessel masks cover ridges of the image (tubes) and have the references'
        typical width and few loose fragments. A mask that also covers bright blobs (leaked
        dye), that is thicker or thinner, or that is broken into specks differs from the
        references in these values even where RCA rates it highly: the ROC AUC of a ridge
        measure (:func:`_ridge_auc`), the boundary share (:func:`_boundary_share`) and the share
        of foreground in 2-D fragments of fewer than 16 pixels (:func:`_fragment_share`).

        Returns ``intensity_auc``, ``intensity_dice``, ``boundary_share`` and, for those and the
        ridge AUC and fragment share, the value minus its median over the used references'
        expert masks (``*_excess``; the shape values enter the calibration only as excesses).
        """
        values = _mask_values(img, mask)
        ref = self._reference_mask_values()
        # NaN where a reference has no foreground; no warnings.catch_warnings (not thread-safe)
        excess = {f"{k}_excess": v - _finite_median(ref[k][ref_idx]) for k, v in values.items()}
        kept = ("intensity_auc", "intensity_dice", "boundary_share")
        return {**{k: values[k] for k in kept}, **excess}

    def _reference_mask_values(self) -> dict[str, np.ndarray]:
        """Per-reference values of :meth:`_mask_statistics` for the expert masks (cached; NaN
        where a reference has no foreground): keys ``intensity_auc``, ``intensity_dice``,
        ``ridge_auc``, ``boundary_share`` and ``fragment_share``."""
        cache = getattr(self, "_ref_mask_values", None)
        if cache is None:
            rows = [_mask_values(im[None], m[None]) for im, m in zip(self.reference_images_, self.reference_masks_)]
            cache = self._ref_mask_values = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        return cache

    def _calibration_data(self, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """Self-calibration set: corrupted reference masks scored against the other references.

        References are split into folds by ``groups`` (their source stack), at most
        ``calibration_folds`` folds; the references of one fold, stacked like the slices of
        an image, are given ``calibration_size`` corrupted versions of their true masks
        (:func:`~biodatacentric.monitor.corruptions.random_corruptions`), and each is scored
        with the references of the OTHER folds as the database, exactly as :meth:`score`
        does (with ``n_references``, against the ``n_references`` of them nearest to the
        fold's references by embedding). Returns the statistics (n, len(STATISTICS)), the
        true Dice (n,), the kinds and the raw aggregate (n,).
        """
        from ..metrics import dice
        from .corruptions import random_corruptions

        rng = np.random.default_rng(seed)
        uniq = np.unique(groups)
        n_folds = min(len(uniq), int(self.calibration_folds))
        if n_folds < 2:
            raise ValueError("calibration needs references from at least 2 groups (source stacks); pass "
                             "groups= to fit or calibration=None")
        fold_of_group = {g: i % n_folds for i, g in enumerate(rng.permutation(uniq))}
        folds = np.array([fold_of_group[g] for g in groups])
        X, y, kinds, raw = [], [], [], []
        jobs = [(f, j) for f in range(n_folds) for j in range(int(self.calibration_size))]
        corrupted = {}
        for f in range(n_folds):
            inside = np.flatnonzero(folds == f)
            img = self.reference_images_[inside]
            truth = self.reference_masks_[inside]
            corrupted[f] = random_corruptions(img, truth, int(self.calibration_size), rng)
        # each fold is scored against the references score() would use for it: the n_references
        # of the other folds nearest to the fold's own references (all of them without retrieval)
        emb = self.reference_embeddings_
        used = {f: self._select_references(None if emb is None else emb[folds == f], np.flatnonzero(folds != f))
                for f in range(n_folds)}
        for f, j in progress(jobs, desc="RCA self-calibration", enabled=self.verbose, total=len(jobs)):
            inside, outside = np.flatnonzero(folds == f), used[f]
            kind, cm = corrupted[f][j]
            n_fg = int(np.count_nonzero(cm))
            if n_fg == 0 or n_fg == cm.size:
                continue
            timings = {"features": 0.0, "training": 0.0, "references": 0.0}
            d, c, stats = self._run_rca(self.reference_images_[inside], cm, outside,
                                        int(rng.integers(2**31 - 1)), timings)
            X.append([stats[k] for k in STATISTICS])
            y.append(dice(cm, self.reference_masks_[inside]))
            kinds.append(kind)
            raw.append(self._aggregate(d, c)[0])
        return np.asarray(X, np.float64), np.asarray(y, np.float64), kinds, np.asarray(raw, np.float64)

    def _calibrated(self, raw: float, stats: dict, n_fg: int, size: int) -> float:
        """The calibrated estimate (the raw aggregate without calibration or for single-class masks)."""
        model = getattr(self, "_calibration_model", None)
        if getattr(self, "calibration_", None) is None or n_fg == 0 or n_fg == size:
            return float(raw)
        if model is None:
            model = self._calibration_model = _Calibration(self.calibration_, self.calibration_X_,
                                                          self.calibration_y_, self.calibration_raw_)
        return model.predict(np.array([stats[k] for k in STATISTICS], dtype=np.float64), raw)

    # ------------------------------------------------------------------ hooks
    def _fit_reverse(self, features: np.ndarray, labels: np.ndarray, seed: int) -> Any:
        """Hook: train the reverse classifier on ``features`` (n, F) float32 and ``labels`` (n,) uint8.

        Returns a predictor: an object with ``predict(features) -> labels`` or a callable.
        Override this one method to plug in another pixel classifier.
        """
        from sklearn.base import clone

        clf = self.classifier
        if isinstance(clf, str):
            n_jobs = self.n_jobs
            if clf == "hist_gradient_boosting":
                from sklearn.ensemble import HistGradientBoostingClassifier

                model = HistGradientBoostingClassifier(max_iter=int(self.n_estimators), early_stopping=False,
                                                       min_samples_leaf=int(self.min_samples_leaf),
                                                       class_weight="balanced", random_state=seed)
            else:
                from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

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
        ref_feats, _, _ = self._reference_features()
        info = {"self_balanced": float("nan"), "self_prior": float("nan")}
        if n_fg == 0 or n_fg == mask.size:
            predictor: Any = _Constant(1 if n_fg else 0)
            timings["features"] += time.perf_counter() - t
        else:
            X, y = self._training_sample(image, mask, seed)
            timings["features"] += time.perf_counter() - t
            t = time.perf_counter()
            if self.feature_scaling != "per_image" and y.min() != y.max():
                # mean features of the image (classes re-weighted to the mask's shares)
                pi_ = n_fg / mask.size
                info["descriptor"] = pi_ * X[y == 1].mean(axis=0, dtype=np.float64) + \
                    (1 - pi_) * X[y == 0].mean(axis=0, dtype=np.float64)
            X, mu, sd = self._scale_training(X)
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
        from ..data.normalize import as_normalization

        norm = as_normalization(self.normalize)
        off, scale, clip = norm.compute(image, source="image")
        out = (image - np.float32(off)) * np.float32(scale)
        if clip:
            np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)

    def _embed_image(self, image: np.ndarray) -> np.ndarray:
        """Embeddings of reference-sized tiles covering every slice of ``image``."""
        from ..data.patches import _positions

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
        q = _l2_normalize(img_emb)
        # cosine distance of each reference to its nearest image patch; start at +inf (R5)
        best = np.full(n, np.inf)
        for start in range(0, len(q), 4096):
            d = 1.0 - q[start:start + 4096] @ ref.T
            np.minimum(best, d.min(axis=0), out=best)
        return cand[np.argsort(best, kind="stable")[: int(self.n_references)]]

    def _training_sample(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Class-balanced pixel sample from all slices and the features of those pixels."""
        rng = np.random.default_rng(seed)
        regions = self._plan_regions(mask, rng)
        # candidate pixels = interiors of the regions; sample per class
        counts = []
        for (z, y0, y1, x0, x1, *_rest) in regions:
            m = mask[z, y0:y1, x0:x1]
            fg = int(np.count_nonzero(m))
            counts.append((fg, m.size - fg))
        counts_arr = np.asarray(counts, dtype=np.int64).reshape(-1, 2)
        half = int(self.n_pixels) // 2
        picks: list[list[np.ndarray]] = [[] for _ in regions]
        for cls_col, cls_val in ((0, 1), (1, 0)):
            total = int(counts_arr[:, cls_col].sum())
            take = min(half if cls_val == 1 else int(self.n_pixels) - half, total)
            if take == 0:
                continue
            chosen = np.sort(rng.choice(total, take, replace=False))
            bounds = np.concatenate([[0], np.cumsum(counts_arr[:, cls_col])])
            for r in range(len(regions)):
                lo, hi = np.searchsorted(chosen, [bounds[r], bounds[r + 1]])
                if hi > lo:
                    z, y0, y1, x0, x1, *_ = regions[r]
                    flat = np.flatnonzero(mask[z, y0:y1, x0:x1].ravel() == cls_val)
                    picks[r].append(flat[chosen[lo:hi] - bounds[r]])
        F = n_features(self.sigmas)
        feats_out, labels_out = [], []
        stats = []

        def work(r: int) -> tuple[np.ndarray, np.ndarray, tuple | None]:
            z, y0, y1, x0, x1, cy0, cy1, cx0, cx1 = regions[r]
            need = self.feature_scaling == "per_image"
            if not picks[r] and not need:
                return np.empty((0, F), np.float32), np.empty(0, np.uint8), None
            crop = image[z, cy0:cy1, cx0:cx1]
            f = pixel_features(crop, self.sigmas)[:, y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            f = f.reshape(F, -1)
            st = (f.sum(axis=1, dtype=np.float64), np.square(f, dtype=np.float64).sum(axis=1), f.shape[1]) \
                if need else None
            idx = np.concatenate(picks[r]) if picks[r] else np.empty(0, np.int64)
            lab = mask[z, y0:y1, x0:x1].ravel()[idx]
            return np.ascontiguousarray(f[:, idx].T), lab, st

        workers = _n_workers(self.n_jobs)
        if workers > 1 and len(regions) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                results = list(ex.map(work, range(len(regions))))
        else:
            results = [work(r) for r in range(len(regions))]
        for f, lab, st in results:
            feats_out.append(f)
            labels_out.append(lab)
            if st is not None:
                stats.append(st)
        X = np.concatenate(feats_out)
        y = np.concatenate(labels_out).astype(np.uint8)
        if self.feature_scaling == "per_image":
            s1 = sum(s[0] for s in stats)
            s2 = sum(s[1] for s in stats)
            cnt = sum(s[2] for s in stats)
            mu = s1 / cnt
            sd = np.sqrt(np.maximum(s2 / cnt - mu * mu, 0.0))
            X = ((X - mu) / np.maximum(sd, 1e-6)).astype(np.float32)
        return X, y

    def _plan_regions(self, mask: np.ndarray, rng: np.random.Generator) -> list[tuple[int, ...]]:
        """Regions (z, y0, y1, x0, x1, cy0, cy1, cx0, cx1): interiors to sample and crops to filter."""
        from ..data.patches import _positions

        Z, H, W = mask.shape
        T = int(self.tile_size)
        ty = _positions(H, min(T, H), min(T, H))
        tx = _positions(W, min(T, W), min(T, W))
        n_all = Z * len(ty) * len(tx)
        if self.n_tiles is None or n_all <= self.n_tiles or (len(ty) == 1 and len(tx) == 1):
            return [(z, 0, H, 0, W, 0, H, 0, W) for z in range(Z)]
        margin = feature_margin(self.sigmas)
        th, tw = min(T, H), min(T, W)
        # spread the tiles over the slices as evenly as possible
        n_tiles = int(self.n_tiles)
        per_slice = np.full(Z, n_tiles // Z)
        per_slice[rng.permutation(Z)[: n_tiles % Z]] += 1
        minority = 1 if np.count_nonzero(mask) * 2 <= mask.size else 0
        regions = []
        for z in range(Z):
            k = int(min(per_slice[z], len(ty) * len(tx)))
            if k == 0:
                continue
            cand = [(y, x) for y in ty for x in tx]
            counts = np.array([np.count_nonzero(mask[z, y:y + th, x:x + tw] == minority) for y, x in cand],
                              dtype=np.float64)
            p = np.full(len(cand), 1.0 / len(cand))
            if counts.sum() > 0:
                p = 0.5 * p + 0.5 * counts / counts.sum()
            for j in rng.choice(len(cand), k, replace=False, p=p):
                y, x = cand[int(j)]
                regions.append((z, y, y + th, x, x + tw, max(0, y - margin), min(H, y + th + margin),
                                max(0, x - margin), min(W, x + tw + margin)))
        return regions

    def _scale_training(self, X: np.ndarray) -> tuple[np.ndarray, Any, Any]:
        if self.feature_scaling != "shared":
            return X, None, None
        mu = X.mean(axis=0).astype(np.float32)
        sd = np.maximum(X.std(axis=0), 1e-6).astype(np.float32)
        return (X - mu) / sd, mu, sd

    def _reference_dice(self, pred: np.ndarray, ref_idx: np.ndarray) -> np.ndarray:
        from ..metrics import dice_per_sample

        pred = np.asarray(pred)
        full = self.reference_masks_[ref_idx]
        if pred.shape == full.shape:
            truth = full
        else:
            _, grid_masks, _ = self._reference_features()
            truth = grid_masks[ref_idx]
            if pred.shape != truth.shape:
                raise RuntimeError(f"{type(self).__name__}._reverse_segment returned shape {pred.shape}; "
                                   f"expected {full.shape} or {truth.shape}")
        p = pred.reshape(len(pred), -1)
        t = truth.reshape(len(truth), -1)
        pf = np.count_nonzero(p, axis=1) / p.shape[1]
        tf = np.count_nonzero(t, axis=1) / t.shape[1]
        chance = np.where(pf + tf > 0, 2 * pf * tf / np.maximum(pf + tf, 1e-12), 1.0)
        return dice_per_sample(p, t), chance

    def _aggregate(self, dices: np.ndarray, chance: np.ndarray) -> tuple[float, int]:
        """The estimate and the position of the best reference."""
        best = int(np.argmax(dices))
        if self.aggregate == "max":
            return float(dices[best]), best
        if self.aggregate == "mean":
            return float(dices.mean()), best
        if self.aggregate == "max_corrected":
            gain = np.where(chance < 1.0, (dices - chance) / np.maximum(1.0 - chance, 1e-12), dices)
            pos = int(np.argmax(gain))
            return float(dices[pos]), pos
        k = min(int(self.top_k), len(dices))
        return float(np.sort(dices)[::-1][:k].mean()), best

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

    @classmethod
    def _test_cases(cls) -> list:
        from .._testing import EstimatorCase
        from ..data import make_vessels

        pairs = [make_vessels((48, 48), random_state=s) for s in range(3)]
        ref_img = np.stack([p[0] for p in pairs])
        ref_msk = np.stack([p[1] for p in pairs])
        img, truth = make_vessels((2, 48, 48), random_state=11)

        def result(est: "RCAMonitor") -> tuple:
            r = est.score(img, truth, axes="ZYX")
            return {"estimated": r["estimated_dice"], "per_reference": r["per_reference_dice"]}

        return [
            EstimatorCase(make=lambda: cls(n_pixels=600, n_estimators=5, n_jobs=1, normalize="none",
                                           calibration="forest", calibration_size=3, random_state=0),
                          fit=lambda est: est.fit((ref_img, ref_msk)),
                          use=lambda est: est.score(img, truth, axes="ZYX"),
                          result=result, name="random_forest"),
            EstimatorCase(make=lambda: cls(classifier="extra_trees", n_pixels=600, n_estimators=5, n_jobs=1,
                                           aggregate="top_k", top_k=2, reference_stride=1,
                                           feature_scaling="per_image", sigmas=(0.7, 1.6, 3.5),
                                           random_state=1),
                          fit=lambda est: est.fit((ref_img, ref_msk)),
                          use=lambda est: est.score(img, truth, axes="ZYX"),
                          result=result, name="extra_trees_per_image"),
        ]


# ---------------------------------------------------------------------- helpers
#: names of the RCA statistics computed for every score (the calibration's inputs)
STATISTICS: tuple[str, ...] = tuple(
    f"{rule}_{agg}" for rule in ("balanced", "prior") for agg in ("max", "mean", "top_k", "max_corrected", "share")
) + ("balanced_near_mean", "prior_near_mean", "near_distance", "self_balanced", "self_prior",
     "foreground_share", "boundary_share", "intensity_auc", "intensity_dice", "intensity_auc_excess",
     "intensity_dice_excess", "ridge_auc_excess", "boundary_share_excess", "fragment_share_excess")


class _Calibration:
    """Map from RCA statistics to Dice, rebuilt deterministically from the stored calibration set.

    ``"forest"``: extremely randomised regression trees on all :data:`STATISTICS`;
    ``"linear"``: ridge regression on them; ``"isotonic"``: monotone map of the raw aggregate.
    """

    def __init__(self, kind: str, X: np.ndarray, y: np.ndarray, raw: np.ndarray) -> None:
        self.kind = kind
        X = np.asarray(X, dtype=np.float64)
        ok = ~np.isnan(X)
        n_ok = ok.sum(axis=0)
        self.fill = np.divide(np.where(ok, X, 0.0).sum(axis=0), n_ok, out=np.zeros(X.shape[1]), where=n_ok > 0)
        Xf = np.where(np.isnan(X), self.fill, X)
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self.model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        elif kind == "linear":
            from sklearn.linear_model import RidgeCV

            self.model = RidgeCV(alphas=np.logspace(-3, 2, 12)).fit(Xf, y)
        else:
            from sklearn.ensemble import ExtraTreesRegressor

            self.model = ExtraTreesRegressor(n_estimators=200, min_samples_leaf=3, random_state=0,
                                             n_jobs=1).fit(Xf, y)

    def predict(self, x: np.ndarray, raw: float) -> float:
        if self.kind == "isotonic":
            return float(np.clip(self.model.predict([raw])[0], 0.0, 1.0))
        x = np.where(np.isnan(x), self.fill, x)[None]
        return float(np.clip(self.model.predict(x)[0], 0.0, 1.0))


def _statistics(per_rule: dict, ref_masks: np.ndarray, pi: float, info: dict, top_k: int) -> dict:
    """RCA statistics of one score: aggregates of the per-reference Dice under both decision
    rules, the median log ratio of predicted to true reference foreground share, and the
    self-consistency of the reverse classifier on its own training pixels."""
    out: dict[str, float] = {}
    tf = ref_masks.reshape(len(ref_masks), -1).mean(axis=1)
    for rule, (d, chance, pred) in per_rule.items():
        d = np.asarray(d, dtype=np.float64)
        gain = np.where(chance < 1.0, (d - chance) / np.maximum(1.0 - chance, 1e-12), d)
        pf = np.asarray(pred).reshape(len(pred), -1).mean(axis=1)
        out[f"{rule}_max"] = float(d.max())
        out[f"{rule}_mean"] = float(d.mean())
        out[f"{rule}_top_k"] = float(np.sort(d)[::-1][:min(top_k, len(d))].mean())
        out[f"{rule}_max_corrected"] = float(d[int(np.argmax(gain))])
        out[f"{rule}_share"] = float(np.median(np.log((pf + 1e-3) / (tf + 1e-3))))
        near = info.get("near")
        out[f"{rule}_near_mean"] = float(d[near].mean()) if near is not None else float("nan")
    out["self_balanced"] = float(info.get("self_balanced", float("nan")))
    out["self_prior"] = float(info.get("self_prior", float("nan")))
    out["near_distance"] = float(info.get("near_distance", float("nan")))
    out["foreground_share"] = float(pi)
    out["boundary_share"] = float(info.get("boundary_share", float("nan")))
    for k in ("intensity_auc", "intensity_dice", "intensity_auc_excess", "intensity_dice_excess",
              "ridge_auc_excess", "boundary_share_excess", "fragment_share_excess"):
        out[k] = float(info.get(k, float("nan")))
    return {k: out[k] for k in STATISTICS}


def _mask_values(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The intensity and shape values of a (Z, Y, X) image and mask that
    :meth:`RCAMonitor._mask_statistics` compares with the references' expert masks."""
    auc, best = _intensity_fit(image, mask)
    return {"intensity_auc": auc, "intensity_dice": best, "ridge_auc": _ridge_auc(image, mask),
            "boundary_share": _boundary_share(mask), "fragment_share": _fragment_share(mask)}


def _intensity_fit(image: np.ndarray, mask: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """ROC AUC of the per-slice smoothed (sigma 1) intensity for ``mask``, and the Dice of the
    best single intensity threshold; from two histograms, so O(pixels). NaN for single-class masks.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((1, 16, 16), np.float32); img[0, 4:12, 4:12] = 1.0
    >>> _intensity_fit(img, img > 0.5)                      # a mask that follows brightness
    (1.0, 1.0)
    >>> auc, best = _intensity_fit(img, np.roll(img > 0.5, 2, axis=2))  # one that does not
    >>> round(auc, 2), round(best, 2)
    (0.93, 0.75)
    """
    m = np.asarray(mask, dtype=bool)
    n_fg = int(np.count_nonzero(m))
    if n_fg == 0 or n_fg == m.size:
        return float("nan"), float("nan")
    return _histogram_fit(ndi.gaussian_filter(np.asarray(image, dtype=np.float32), (0, 1.0, 1.0)), m, bins)


def _histogram_fit(values: np.ndarray, mask: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """ROC AUC of ``values`` for ``mask`` and the Dice of the best threshold ``values >= t``,
    from two ``bins``-bin histograms (O(pixels)); NaN for single-class masks."""
    m = np.asarray(mask, dtype=bool)
    n_fg = int(np.count_nonzero(m))
    if n_fg == 0 or n_fg == m.size:
        return float("nan"), float("nan")
    sm = np.asarray(values, dtype=np.float32)
    lo, hi = float(sm.min()), float(sm.max())
    if hi <= lo:
        return 0.5, float(2 * n_fg / (n_fg + m.size))  # flat image: the all-foreground threshold
    b = np.minimum(((sm - lo) * (bins / (hi - lo))).astype(np.int64), bins - 1)
    fg = np.bincount(b[m], minlength=bins).astype(np.float64)
    bg = np.bincount(b[~m], minlength=bins).astype(np.float64)
    n_bg = float(m.size - n_fg)
    bg_below = np.concatenate([[0.0], np.cumsum(bg)[:-1]])
    auc = float((fg * (bg_below + 0.5 * bg)).sum() / (n_fg * n_bg))
    tp = np.cumsum(fg[::-1])[::-1]        # foreground at or above each bin
    fp = np.cumsum(bg[::-1])[::-1]
    best = float(np.max(2 * tp / (tp + fp + n_fg)))
    return auc, best


def _ridge_auc(image: np.ndarray, mask: np.ndarray, sigma: float = 2.0) -> float:
    """ROC AUC, for ``mask``, of the per-slice ridge strength ``max(0, -l_min)`` of the Hessian
    of the (Z, Y, X) image at ``sigma`` pixels: high on bright tubes, low on flat bright blobs.

    Computed on 2x2 block means (Hessian at ``sigma / 2``; the mask by majority) to cost a
    quarter; NaN for single-class masks.
    """
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)
    h, w = (img.shape[1] // 2) * 2, (img.shape[2] // 2) * 2
    if h == 0 or w == 0:
        return float("nan")

    def half(a: np.ndarray) -> np.ndarray:
        return a[:, :h, :w].reshape(len(a), h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    img, m = half(img), half(m) >= 0.5
    ridge = np.empty_like(img)
    s = sigma / 2.0
    for z, sl in enumerate(img):
        hyy = ndi.gaussian_filter(sl, s, order=(2, 0))
        hxx = ndi.gaussian_filter(sl, s, order=(0, 2))
        hxy = ndi.gaussian_filter(sl, s, order=(1, 1))
        ridge[z] = np.maximum(np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy ** 2) - 0.5 * (hxx + hyy), 0.0)
    return _histogram_fit(ridge, m)[0]


def _fragment_share(mask: np.ndarray, min_size: int = 16) -> float:
    """Share of foreground pixels in 2-D (per slice, 8-connected) fragments of fewer than
    ``min_size`` pixels: high for speckled masks (NaN without foreground)."""
    m = np.asarray(mask, dtype=bool)
    n = int(np.count_nonzero(m))
    if n == 0:
        return float("nan")
    small = 0
    for sl in m:
        labels, k = ndi.label(sl, structure=np.ones((3, 3), bool))
        if k:
            sizes = np.bincount(labels.ravel())[1:]
            small += int(sizes[sizes < min_size].sum())
    return small / n


def _boundary_share(mask: np.ndarray) -> float:
    """Share of foreground pixels with a background 4-neighbour in their slice (high for thin
    structures, where a one-pixel boundary error costs more Dice)."""
    m = np.asarray(mask, dtype=bool)
    n = int(np.count_nonzero(m))
    if n == 0:
        return float("nan")
    inner = m.copy()
    inner[:, 1:, :] &= m[:, :-1, :]
    inner[:, :-1, :] &= m[:, 1:, :]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    return 1.0 - np.count_nonzero(inner) / n


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


def _finite_median(values: np.ndarray) -> float:
    """Median of the non-NaN values (NaN when there are none), without a warning."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def _out_of_bag_probability(predictor: Any, X: np.ndarray) -> np.ndarray | None:
    """Foreground probability of each training row ``X`` from the trees of a bagged forest that
    did not see it (0.5 for a row every tree saw); None for other predictors.

    The same sums as scikit-learn's ``oob_decision_function_``, computed here so that fitting
    the forest never warns about rows without out-of-bag trees: ``warnings.catch_warnings``
    is not thread-safe, so silencing that warning fails under threaded schedulers."""
    classes = list(getattr(predictor, "classes_", []))
    if 1 not in classes:
        return None
    col = classes.index(1)
    oob = getattr(predictor, "oob_decision_function_", None)    # a user's forest with oob_score=True
    if oob is not None:
        return np.nan_to_num(np.asarray(oob)[:, col], nan=0.5)
    if not getattr(predictor, "bootstrap", False) or not hasattr(predictor, "estimators_samples_"):
        return None
    X = np.ascontiguousarray(X, dtype=np.float32)
    total = np.zeros(len(X))
    count = np.zeros(len(X), dtype=np.int64)
    for tree, inbag in zip(predictor.estimators_, predictor.estimators_samples_):
        out = np.ones(len(X), dtype=bool)
        out[inbag] = False
        total[out] += tree.predict_proba(X[out], check_input=False)[:, col]
        count[out] += 1
    return np.divide(total, count, out=np.full(len(X), 0.5), where=count > 0)


def evaluate_estimates(true_dice: Any, estimated_dice: Any, threshold: float = 0.7,
                       review_margin: float | None = None) -> dict:
    """Pearson r, Spearman rho, MAE and pass/fail accuracy of Dice estimates (see :meth:`RCAMonitor.evaluate`).

    With ``review_margin``, estimates within it of ``threshold`` count as sent to review
    (:func:`decide`): ``review_share`` is their share and ``decided_accuracy`` the accuracy
    of the pass/fail decisions on the others (NaN when every estimate is in the band).
    ``accuracy``, sensitivity and specificity still count every estimate, flagged by
    ``threshold``.

    Examples
    --------
    >>> r = evaluate_estimates([0.9, 0.8, 0.5, 0.6], [0.85, 0.75, 0.6, 0.72], threshold=0.7)
    >>> round(r["mae"], 3), r["spearman_rho"], r["accuracy"], r["sensitivity"], r["n"]
    (0.08, 1.0, 0.75, 0.5, 4)
    >>> r = evaluate_estimates([0.9, 0.8, 0.5, 0.6], [0.85, 0.75, 0.6, 0.72], review_margin=0.05)
    >>> r["review_share"], r["decided_accuracy"]   # 0.72 is sent to review
    (0.25, 1.0)
    """
    from scipy import stats

    t = np.asarray(true_dice, dtype=np.float64).ravel()
    e = np.asarray(estimated_dice, dtype=np.float64).ravel()
    if t.shape != e.shape:
        raise ValueError(f"true_dice has {t.size} values but estimated_dice has {e.size}")
    if t.size < 2:
        raise ValueError("evaluate needs at least 2 (true, estimated) pairs")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(e))):
        raise ValueError("true_dice and estimated_dice must be finite")
    fail_t, fail_e = t < threshold, e < threshold
    const = np.ptp(t) == 0 or np.ptp(e) == 0
    pearson = float("nan") if const else float(stats.pearsonr(t, e)[0])
    spearman = float("nan") if const else float(stats.spearmanr(t, e)[0])
    n_fail, n_pass = int(fail_t.sum()), int((~fail_t).sum())
    out = {
        "pearson_r": pearson,
        "spearman_rho": spearman,
        "mae": float(np.mean(np.abs(t - e))),
        "accuracy": float(np.mean(fail_t == fail_e)),
        "sensitivity": float(np.mean(fail_e[fail_t])) if n_fail else float("nan"),
        "specificity": float(np.mean(~fail_e[~fail_t])) if n_pass else float("nan"),
        "threshold": float(threshold),
        "n": int(t.size),
    }
    if review_margin is not None:
        _check_review_margin(review_margin)
        decided = ~_in_review_band(e, threshold, review_margin)
        out["review_margin"] = float(review_margin)
        out["review_share"] = float(np.mean(~decided))
        right = fail_t == fail_e
        out["decided_accuracy"] = float(np.mean(right[decided])) if decided.any() else float("nan")
    return out


def decide(estimate: float, threshold: float = 0.7, review_margin: float | None = None) -> str:
    """``"pass"``, ``"fail"`` or ``"review"`` for one estimated Dice.

    ``"fail"`` below ``threshold - review_margin``, ``"pass"`` at or above ``threshold +
    review_margin``, ``"review"`` in between; without a margin, ``"pass"`` at or above
    ``threshold`` and ``"fail"`` below it (the ``passed`` flag of :meth:`RCAMonitor.score`).

    Examples
    --------
    >>> [decide(d, 0.7, 0.1) for d in (0.55, 0.65, 0.7, 0.79, 0.8)]
    ['fail', 'review', 'review', 'review', 'pass']
    >>> decide(0.69), decide(0.7)
    ('fail', 'pass')
    """
    if _in_review_band(estimate, threshold, review_margin):
        return "review"
    return "pass" if estimate >= threshold else "fail"


def _in_review_band(estimates: Any, threshold: float, review_margin: float | None) -> np.ndarray:
    """Where ``threshold - review_margin <= estimate < threshold + review_margin`` (nowhere
    without a margin): the rule of :func:`decide`, for one estimate or an array."""
    m = 0.0 if review_margin is None else float(review_margin)
    e = np.asarray(estimates, dtype=np.float64)
    return (e >= threshold - m) & (e < threshold + m)


def _check_review_margin(review_margin: Any) -> None:
    if review_margin is None:
        return
    if isinstance(review_margin, bool) or not isinstance(review_margin, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(review_margin) <= 0.5:
        raise ValueError(f"review_margin must be None or a Dice difference in [0, 0.5], got {review_margin!r}")


def _as_references(references: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from .._validation import check_binary_mask
    from ..data.patches import Patches

    if isinstance(references, Patches):
        if not references.has_masks:
            raise ValueError("references need masks: build the Patches with masks=... or read an "
                             "annotation folder with Patches.read_annotations")
        if len(references) == 0:
            raise ValueError("references is empty")
        images = references.images()
        masks = references.masks()
        prov = references.provenance()
        sources = [f"{s}:{z}:{y}:{x}" for s, z, y, x in zip(prov.source, prov.z, prov.y, prov.x)]
    elif isinstance(references, (tuple, list)) and len(references) == 2:
        images = np.asarray(references[0])
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or not np.issubdtype(images.dtype, np.number):
            raise ValueError(f"reference images must be a numeric (n, h, w) array, got shape {images.shape}")
        masks = np.asarray(references[1])
        if masks.ndim == 2:
            masks = masks[None]
        masks = check_binary_mask(masks, name="reference masks")
        if masks.shape != images.shape:
            raise ValueError(f"reference masks have shape {masks.shape} but the images have {images.shape}")
        sources = [f"reference:{i}" for i in range(len(images))]
    else:
        raise TypeError("references must be a Patches with masks or an (images, masks) pair of (n, h, w) arrays")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if len(images) == 0:
        raise ValueError("references is empty")
    if not np.all(np.isfinite(images)):
        raise ValueError("reference images hold NaN or inf values")
    if min(images.shape[1:]) < 2:
        raise ValueError(f"references of {images.shape[1]}x{images.shape[2]} pixels are too small")
    return images, np.ascontiguousarray(masks, dtype=np.uint8), sources


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
    import os

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


def _n_workers(n_jobs: int | None) -> int:
    from .features import _n_workers as nw

    return nw(n_jobs)
