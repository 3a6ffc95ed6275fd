"""Reverse classification accuracy (RCA): segmentation quality without ground truth.

Valindria et al. (IEEE TMI 2017), Robinson et al. (JCMR 2019), as used by Cao et al. 2025:
train a *reverse classifier* on the new image with its predicted mask as labels, apply it
to reference images that have manual masks, and take the best Dice over the references as
the estimated Dice of the prediction. See ``ALGORITHMS.md`` section 5. Optionally the raw
statistics are self-calibrated on corrupted reference masks (``calibration=``).

The estimator keeps its parameters, its verbs and the hooks; the machinery lives beside it:
``_reverse`` (the reverse classifier and the per-reference Dice), ``_sampling`` (pixel
sample and cached reference features), ``_statistics`` (the RCA statistics),
``_calibration`` (self-calibration, reference agreement, state after loading),
``_retrieval`` (embeddings, retrieval, drift reference, normalisation, groups) and
``_scoring`` (one image, and ``score_many`` with its Dask tasks and result table).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np

from .._params import Check, HasMethods, Interval, Options
from .._validation import check_image_and_mask
from ..base import BaseMonitor, register_estimator
from ..data._references import _as_references
from ..data.normalize import as_normalization
from ..data.patches import Patches
from . import _scoring
from ._calibration import _CALIBRATIONS, fit_calibration, reference_agreement, restore_after_load
from ._retrieval import fit_embeddings, reference_groups
from ._reverse import CLASSIFIERS, make_classifier, predict_scores, reverse_scores
from ._sampling import reference_features
from ._statistics import STATISTICS
from .evaluation import decide, evaluate_estimates
from .features import DEFAULT_SIGMAS, _check_sigmas, n_features

__all__ = ["RCAMonitor", "STATISTICS", "decide", "evaluate_estimates"]

_AGGREGATES = ("max", "mean", "top_k", "max_corrected")


@register_estimator
class RCAMonitor(BaseMonitor):
    """Estimate the Dice of a segmentation without ground truth (reverse classification accuracy).

    A pixel classifier (the *reverse classifier*) is trained on the new image with its
    predicted mask as labels (49 ilastik-like filter features,
    :func:`~biodatacentric.monitor.features.pixel_features`, of a class-balanced pixel sample
    from every slice) and segments the references (annotated patches, e.g. the core set, or
    the ``n_references`` nearest by embedding). A good prediction teaches a classifier that
    segments at least one similar reference well: the aggregate of the Dice against the
    reference masks (best by default) is the estimated Dice.

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
        Features tried per split (forests). ``"sqrt"`` (7 of 49) trains about 8x faster than
        Cao et al.'s 0.7 with the same estimates (``benchmarks/bench_rca.py``).
    min_samples_leaf : int
        Smallest leaf of the forests; larger leaves give smaller, faster trees.
    max_samples : float or None
        Share of the pixel sample each tree is grown on (forests, bootstrap); None = all.
    prior_correction : bool
        A reference pixel is foreground when its probability exceeds ``1 - pi`` (``pi`` =
        foreground share of the predicted mask) instead of 0.5: the decision of a classifier
        trained at the image's own class frequencies, not on the balanced sample, so that
        masks that miss vessels teach the reverse classifier to miss them too.
    n_references : int, optional
        Use only the references nearest to the image in embedding space (needs reference
        embeddings at fit and image embeddings or an ``embedder`` at score); all by default.
    aggregate : {"max", "mean", "top_k", "max_corrected"}
        How per-reference Dice values become the estimate (``"top_k"``: mean of the ``top_k``
        best; ``"max_corrected"``: the Dice where ``(D - D0) / (1 - D0)`` is largest, ``D0 =
        2 p t / (p + t)`` the Dice of chance, so that references mostly covered by foreground
        cannot reward predicting everything). The maximum grows with the number of
        references (pitfall R7): compare runs at a fixed reference set.
    top_k : int
        ``k`` of ``aggregate="top_k"``.
    threshold : float
        A segmentation passes when its estimated Dice is at least this.
    review_margin : float, optional
        Half-width of a review band: ``score`` returns ``decision="review"`` for estimates in
        ``[threshold - review_margin, threshold + review_margin)`` (a person looks), else
        ``"pass"`` / ``"fail"``; ``None`` or 0: ``threshold`` alone. The estimate's typical
        error on real data, about 0.1 (``benchmarks/results/rca.md``), is a first margin.
    sigmas : sequence of float
        Scales of the feature bank (ilastik's defaults).
    normalize : str, (mean, std) or Normalization
        Intensity normalisation of the scored image, per stack; it must match the references'
        (``"percentile"``, the :class:`~biodatacentric.Patches` default; ``"none"`` if done).
    feature_scaling : {"shared", "per_image", "none"}
        ``"shared"``: z-score features with the mean/std of the training sample and apply
        the same transform to the references (pitfall R8); ``"per_image"``: z-score every
        image with its own statistics (Cao et al.'s choice); ``"none"``.
    tile_size : int
        Side of the tiles that large stacks are sampled from.
    n_tiles : int or None
        Above this many tiles, features are computed on this many (spread over the slices,
        more where the rarer class is) and pixels sampled in them; ``None``: whole slices.
    reference_stride : int
        Reference pixels are classified on a grid with this step (1 = all); step 2 changes the
        Dice by well under 0.01 for structures a few pixels wide, at a quarter of the time.
    single_class : {"raise", "constant"}
        What to do with a predicted mask holding one class only (blank or full): raise a
        ``ValueError``, or score it as a constant prediction on every reference.
    embedder : callable or object with ``transform``, optional
        Maps an ``(n, h, w)`` float32 array of normalised patches to ``(n, d)`` embeddings;
        used at fit (references) and score (tiles of the image) when embeddings are not given.
    drift_k : int
        Neighbour rank of the drift score.
    calibration : {None, "forest", "linear", "isotonic"}
        Self-calibration in :meth:`fit`, from the references alone (the raw aggregate is
        biased and compressed): corrupted copies of the references' masks
        (:mod:`~biodatacentric.monitor.corruptions`) are scored against the *other* source
        stacks as :meth:`score` scores a new stack, and the RCA statistics
        (:data:`STATISTICS`) mapped to their known Dice by ``"forest"`` (extremely randomised
        trees, recommended), ``"linear"`` (ridge) or ``"isotonic"`` (of the raw aggregate).
        The estimate and flag use the calibrated value; ``None``: none (fast ``fit``).
    calibration_size : int
        Corrupted masks per fold (about ``calibration_size x min(calibration_folds, stacks)``).
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
    reference_sources_, reference_groups_ : list
        Provenance ``"source:z:y:x"`` and group (source stack, ``groups`` of :meth:`fit`) of
        each reference.
    reference_embeddings_ : ndarray (n, d) or None
        L2-normalised reference embeddings for retrieval.
    drift_embeddings_, drift_reference_distances_ : ndarray or None
        Training embeddings and their k-NN distance distribution for the drift score.
    calibration_ : str or None
        The fitted calibration (``None`` without).
    calibration_X_, calibration_y_, calibration_raw_ : ndarray or None
        The self-calibration set: RCA statistics, true Dice and raw aggregate of each
        corrupted reference mask (the map is rebuilt from them after :meth:`load`).
    calibration_kinds_, calibration_seconds_ : list of str, float
        Corruption of each calibration entry; seconds the self-calibration took.

    Notes
    -----
    *Speed.* Features are computed only where pixels are sampled (``n_tiles`` tiles with the
    context margin of the largest kernel, so they equal the whole slice's), the references'
    once in :meth:`fit`: one 7 x 1024 x 1024 stack against 25 references of 224 x 224 takes a
    few seconds on two cores with the defaults (``benchmarks/bench_rca.py``).

    *Validity.* RCA checks that the prediction is *consistent with the annotated
    references*: a mask that is wrong on this image but behaves like the annotations
    elsewhere (an intensity threshold on dye leakage) is rated high, and references unlike
    the image rate good masks low (pitfall R9). Keep the references representative, and
    watch ``drift``. What a calibration can and cannot see, and the measured accuracy, are in
    the user guide's monitoring page and ``benchmarks/results/rca.md``.

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

    _parameter_constraints: dict = {
        "classifier": [Options(CLASSIFIERS), HasMethods(("fit", "predict"))],
        "n_pixels": [Interval(Integral, 2, None)], "n_estimators": [Interval(Integral, 1, None)],
        "max_features": [Options(("sqrt", "log2")), Interval(Integral, 1, None),
                         Interval(Real, 0.0, 1.0, closed="right"), None],
        "min_samples_leaf": [Interval(Integral, 1, None)],
        "max_samples": [None, Interval(Real, 0.0, 1.0, closed="right")], "prior_correction": ["boolean"],
        "n_references": [None, Interval(Integral, 1, None)], "aggregate": [Options(_AGGREGATES)],
        "top_k": [Interval(Integral, 1, None)], "threshold": [Interval(Real, 0.0, 1.0)],
        "review_margin": [None, Interval(Real, 0.0, 0.5)],
        "sigmas": [Check(_check_sigmas, "a non-empty sequence of positive numbers that increase strictly")],
        "normalize": [Check(as_normalization, "a normalisation: a method name such as 'percentile', "
                                               "a (mean, std) pair, a dict or a Normalization")],
        "feature_scaling": [Options(("shared", "per_image", "none"))],
        "tile_size": [Interval(Integral, 16, None)], "n_tiles": [None, Interval(Integral, 1, None)],
        "reference_stride": [Interval(Integral, 1, None)],
        "single_class": [Options(("raise", "constant"))],
        "embedder": [None, "callable", HasMethods(("transform",))],
        "drift_k": [Interval(Integral, 1, None)], "calibration": [None, Options(_CALIBRATIONS)],
        "calibration_size": [Interval(Integral, 1, None)], "calibration_folds": [Interval(Integral, 2, None)],
        "n_jobs": [None, Interval(Integral, None, None)], "random_state": ["random_state"],
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

    # ------------------------------------------------------------------ fit
    def fit(self, references: Patches | tuple[np.ndarray, np.ndarray], y: None = None, *, embeddings: Any = None,
            training_embeddings: Any = None, groups: Any = None) -> "RCAMonitor":
        """Store the reference database: annotated patches with their masks.

        Parameters
        ----------
        references : Patches with masks, or (images, masks) arrays of shape (n, h, w)
            The annotated references (e.g. the core set), normalised as ``normalize``
            normalises scored images. Prefer references with foreground: an empty mask
            rewards an empty prediction with Dice 1.0 (optimistic ``aggregate="max"``).
        y : None
            Ignored.
        embeddings : array (n, d), optional
            Embeddings of the references, for ``n_references`` retrieval. Computed with
            ``embedder`` when omitted and an embedder is set.
        training_embeddings : array (N, d), optional
            Embeddings of the segmenter's training patches, for the drift score.
        groups : array (n,), optional
            Source stack of each reference (``reference_groups_``): ``calibration`` and
            :meth:`reference_agreement` score a group against the other groups only. Default:
            each patch's source file (:class:`~biodatacentric.Patches`); for plain arrays every
            reference is its own group (optimistic for several from one stack).
        """
        self._validate_params()
        images, masks, sources = _as_references(references)
        self.reference_embeddings_, self.drift_embeddings_, self.drift_reference_distances_ = \
            fit_embeddings(self, images, embeddings, training_embeddings)
        self.reference_images_, self.reference_masks_, self.reference_sources_ = images, masks, sources
        self.n_features_ = n_features(self.sigmas)
        self.n_references_ = len(images)
        self._ref_cache = None
        self._ref_mask_values = None
        reference_features(self)  # computed once, cached
        self.reference_groups_ = reference_groups(groups, sources).tolist()
        fit_calibration(self)
        return self

    def reference_agreement(self, groups: Any = None) -> list[dict]:
        """How well each group's expert masks agree with the annotations of the other groups.

        The references of each group (source stack) are scored with their own expert masks
        as the "prediction" against the references of the other groups, as :meth:`score`
        scores a new stack. An expert mask is right by definition, so a low score means that
        the group's annotators drew vessels differently from the others, or that its images
        look unlike the others'. On ``vesselnn_2pm`` the per-stack accuracy of the pass/fail
        flag followed this agreement closely (``benchmarks/results/rca.md``): check it before
        trusting estimates, and look at the references of the groups that score low.

        Parameters
        ----------
        groups : array (n,), optional
            Group of each reference (default: the groups of :meth:`fit`).

        Returns
        -------
        list of dict, one per group (sorted): ``group``, ``n_references``, ``agreement`` (best
        Dice over the other groups' references, prior-corrected rule: ``prior_max``),
        ``balanced_max`` (0.5 rule), ``best_reference_source`` and ``calibrated_estimate``
        (the estimate of a Dice that is 1 for expert masks; ``None`` without a calibration).
        Groups with single-class masks get NaN.

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
        return reference_agreement(self, groups)

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
            ``estimated_dice``, ``passed`` (estimate >= threshold), ``decision`` (``"pass"``,
            ``"fail"``, or ``"review"`` inside ``review_margin``), ``threshold``,
            ``aggregate``, ``per_reference_dice`` (one per used reference),
            ``reference_indices`` (nearest first when retrieved), ``best_reference`` (index)
            and ``best_reference_source``, ``drift`` (dict or None), ``timings`` (seconds:
            ``features``, ``training``, ``references``, ``total``), ``raw_estimated_dice``
            (before calibration), ``calibrated`` and ``statistics`` (:data:`STATISTICS`).
        """
        self._check_is_fitted()
        self._validate_params()   # parameters set after fit are checked where they are used
        img, mask = check_image_and_mask(image, predicted_mask, axes=axes)
        return self._score(img, mask, embeddings=embeddings)

    def _score(self, image: np.ndarray, mask: np.ndarray, embeddings: Any = None) -> dict:
        return _scoring.score_image(self, image, mask, embeddings)

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
            Score on this Dask cluster, one task per pair (``None``: the active client, if
            any; ``False``: here); the monitor is sent to each worker once. Results equal a
            single-process run's (except ``timings``).
        out : path, optional
            Also write one row per pair (``index``, ``image``, scalar results, drift
            percentile, seconds) to a ``.csv`` or ``.json`` table, atomically.
        """
        self._check_is_fitted()
        self._validate_params()   # once for the whole batch
        return _scoring.score_many(self, images, predicted_masks, axes, embeddings, client, out)

    # ------------------------------------------------------------------ hooks
    def _fit_reverse(self, features: np.ndarray, labels: np.ndarray, seed: int) -> Any:
        """Hook: train the reverse classifier on ``features`` (n, F) float32 and ``labels`` (n,) uint8.

        Returns a predictor: an object with ``predict(features) -> labels`` or a callable.
        Override this one method to plug in another pixel classifier.
        """
        return make_classifier(self, seed).fit(features, labels)

    def _predict_reverse(self, predictor: Any, features: np.ndarray) -> np.ndarray:
        """Hook: apply a predictor from :meth:`_fit_reverse` to ``features`` (m, F).

        Returns (m,) foreground probabilities (``predict_proba`` where it has it) or 0/1 labels.
        """
        return predict_scores(predictor, features)

    def _reverse_scores(self, image: np.ndarray, mask: np.ndarray, ref_idx: np.ndarray, seed: int,
                        timings: dict) -> tuple[np.ndarray, dict]:
        """Hook: foreground scores of the references ``ref_idx`` from a reverse classifier
        trained on ``image`` (normalised float32, Z x Y x X) and ``mask`` (uint8), and a dict.

        Scores are (k, h, w) or (k, m) on the ``reference_stride`` grid: probabilities (cut
        at 0.5 and at the prior-corrected threshold) or 0/1 masks (equal under both rules).
        The dict may hold ``self_balanced`` / ``self_prior`` (out-of-bag self-consistency;
        NaN when absent). Add seconds spent to ``timings["features"]``, ``["training"]``,
        ``["references"]``. Override it for a reverse classifier without pixel features (a
        small CNN, an atlas); override :meth:`_fit_reverse` for another pixel classifier.
        """
        return reverse_scores(self, image, mask, ref_idx, seed, timings)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, true_dice: Any, estimated_dice: Any, threshold: float | None = None,
                 review_margin: float | None = None) -> dict:
        """Agreement of estimated and true Dice values (needs no fitting).

        A *positive* is a failed segmentation (Dice below ``threshold``; ``threshold`` and
        ``review_margin`` default to the monitor's).

        Returns
        -------
        dict of :func:`evaluate_estimates`: ``pearson_r``, ``spearman_rho``, ``mae``,
        ``accuracy``, ``sensitivity``, ``specificity``, ``threshold``, ``n``, and with a
        review margin ``review_share`` and ``decided_accuracy``.

        Examples
        --------
        >>> r = RCAMonitor().evaluate([0.9, 0.8, 0.3, 0.1], [0.85, 0.75, 0.4, 0.2])
        >>> round(r["pearson_r"], 3), r["accuracy"], round(r["mae"], 3)
        (0.998, 1.0, 0.075)
        """
        return evaluate_estimates(true_dice, estimated_dice,
                                  self.threshold if threshold is None else threshold,
                                  review_margin=self.review_margin if review_margin is None else review_margin)

    # ------------------------------------------------------------------ persistence
    def _load_extra(self, folder: Any, config: dict) -> None:
        restore_after_load(self, folder)
