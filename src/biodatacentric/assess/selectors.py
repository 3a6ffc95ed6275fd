"""Core-set selectors: facility location ("max K-cover"), threshold cover, k-center, random.

All selectors take an ``(n, d)`` embedding array, L2-normalise it (pitfall K1) and compare
samples by cosine similarity. They subclass :class:`biodatacentric.base.BaseSelector`, so
``fit(X, exclude=...)`` validates the input and ``selected_indices_`` lists the picks in
pick order; greedy prefixes are nested, so :meth:`KCoverSelector.extend` adds picks to an
existing core set exactly as a longer run would have picked them.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np

from .._params import Interval, Options
from .._utils import resolve_device
from .._validation import as_index_mask, check_embeddings
from ..base import BaseSelector, register_estimator
from ._cover import _chordal, _CoverSolver
from .knn import best_similarity, ivf_knn_search, knn_search, l2_normalize, similarity_graph, soft_whiten

__all__ = ["KCoverSelector", "KCenterSelector", "RandomSelector", "evaluate_selection",
           "suggest_n_select"]

_OBJECTIVES = ("facility_location", "threshold_cover", "k_center")
_EXACT_KNN_MAX_N = 150_000  # knn="auto": exact search up to this many samples, IVF above


def suggest_n_select(curve: np.ndarray, rule: str = "gain_fraction", fraction: float = 0.1,
                     initial: float = 0.0, decreasing: bool = False) -> int:
    """Suggest a core-set size from a coverage curve (objective after each greedy pick).

    Rules
    -----
    ``"gain_fraction"`` (default)
        The smallest ``K >= 2`` such that the next pick would add less than ``fraction``
        times the second pick's gain (diminishing returns). The first pick is not the
        reference because its gain also holds the baseline similarity of every sample to any
        pick (for facility location on cosine similarities it is often 10-50x the second).
        If no pick falls below, the length of the curve is returned: fit with a larger
        ``n_select`` and ask again.
    ``"knee"``
        The knee of the curve (Kneedle, Satopaa et al. 2011): with the curve rescaled to
        [0, 1] on both axes, the ``K`` farthest above the straight line from its first to its
        last point.

    Parameters
    ----------
    curve : array of shape (K,)
        Objective value after 1, 2, ..., K picks.
    initial : float
        Objective before the first pick (0 for facility location without prior picks).
    decreasing : bool
        True for objectives that decrease (k-center radius); the curve is negated.

    Examples
    --------
    >>> suggest_n_select(np.array([10., 15., 17., 17.5, 17.6]), fraction=0.15)
    3
    """
    c = -np.asarray(curve, dtype=np.float64) if decreasing else np.asarray(curve, dtype=np.float64)
    init = -initial if decreasing else initial
    if c.ndim != 1 or len(c) == 0:
        raise ValueError("curve must be a non-empty 1-D array")
    if rule == "gain_fraction":
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        # gains[i] = increase made by pick i + 1
        gains = np.diff(c) if not np.isfinite(init) else np.diff(np.concatenate([[init], c]))
        offset = 1 if not np.isfinite(init) else 0   # gains[0] belongs to pick 1 + offset
        ref_pos = 1 - offset                         # the second pick's gain
        if len(gains) <= ref_pos or gains[ref_pos] <= 0:
            return len(c)
        below = np.flatnonzero(gains[ref_pos + 1:] < fraction * gains[ref_pos])
        return int(below[0] + ref_pos + 1 + offset) if len(below) else len(c)
    if rule == "knee":
        if len(c) < 3:
            return len(c)
        x = np.linspace(0.0, 1.0, len(c))
        span = c[-1] - c[0]
        if span <= 0:
            return 1
        y = (c - c[0]) / span
        return int(np.argmax(y - x) + 1)
    raise ValueError(f"rule={rule!r} is not one of 'gain_fraction', 'knee'")


def evaluate_selection(X: Any, indices: Any, threshold: float | None = None,
                       device: str = "cpu") -> dict:
    """Exact coverage scores of a selection over all samples (never an N x N matrix).

    Returns a dict with ``facility_location`` (sum over samples of the best non-negative
    cosine similarity to the selection), ``mean_coverage`` (its mean), ``k_center_radius``
    (largest chordal distance ``sqrt(2 - 2 cos)`` of any sample to its nearest pick) and, if
    ``threshold`` is given, ``threshold_cover`` (fraction of samples with best similarity
    at least ``threshold``).

    Examples
    --------
    >>> X = np.eye(3)
    >>> evaluate_selection(X, [0])["facility_location"]
    1.0
    """
    E = l2_normalize(check_embeddings(X))
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        raise ValueError("indices is empty; pass at least one selected sample")
    best = best_similarity(E, idx, device=device)
    out = {"facility_location": float(np.maximum(best, 0).sum(dtype=np.float64)),
           "mean_coverage": float(np.maximum(best, 0).mean(dtype=np.float64)),
           "k_center_radius": float(_chordal(best).max())}
    if threshold is not None:
        out["threshold_cover"] = float(np.mean(best >= threshold))
    return out


# ====================================================================== shared selector code
class _GreedyCoverMixin:
    """fit with ``already_selected``, ``extend`` and ``suggest_n_select`` for greedy selectors."""

    _solver: _CoverSolver | None = None

    def fit(self, X: Any, y: None = None, *, exclude: Any = None,
            already_selected: Any = None, groups: Any = None) -> "_GreedyCoverMixin":
        """Select ``n_select`` samples of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings; L2-normalised internally (cosine similarity).
        y : None
            Ignored.
        exclude : array-like of int or bool, optional
            Samples never picked (flagged by :class:`DatasetAuditor`, say). They still count
            as samples to be covered.
        already_selected : array-like of int or bool, optional
            Samples annotated before (an earlier core set). They are never picked and they
            already cover their neighbourhood: the coverage starts from their similarities
            (pitfall K7), so new picks go where coverage is missing.
        groups : array-like of shape (n_samples,), optional
            A label per sample saying where it comes from (the stack or acquisition
            condition, e.g. ``patches.index["source"]``). Each group then counts equally in
            the covering objective (every sample of group ``g`` weighs ``1 / |g|``), so a
            large stack does not outweigh a small one. Not used by k-center. Recommended
            whenever the patches come from several stacks: it is part of the configuration
            validated on the cohort benchmark (see ``whiten``).
        """
        self._validate_params()  # type: ignore[attr-defined]
        X = check_embeddings(X)
        pre = as_index_mask(already_selected, X.shape[0], name="already_selected")
        excl = as_index_mask(exclude, X.shape[0], name="exclude")
        self.sample_weight_ = self._group_weights(groups, X.shape[0])
        X, forbidden, n_select, seed = self._prepare_fit(X, excl | pre)  # type: ignore[attr-defined]
        picks = self._greedy_select(X, n_select, forbidden, seed, already=np.flatnonzero(pre), user_excluded=excl)
        return self._finish_fit(picks, X, forbidden, n_select)  # type: ignore[attr-defined]

    # subclasses return: objective, n_neighbors, threshold, lazy, knn, knn_options, init,
    # n_init_random, device, precision
    def _solver_params(self) -> dict:
        raise NotImplementedError

    def _group_weights(self, groups: Any, n: int) -> np.ndarray | None:
        """Per-sample weights giving every group the same total weight (mean weight 1)."""
        if groups is None:
            return None
        if self._solver_params()["objective"] == "k_center":
            raise ValueError(f"{type(self).__name__}: groups= weights the covering objectives; "
                             "k-center (farthest-first) has no weights -- drop groups")
        g = np.asarray(groups)
        if g.ndim != 1 or len(g) != n:
            raise ValueError(f"groups must have one label per sample ({n}), got shape {g.shape}")
        _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
        return (n / (len(counts) * counts[inverse])).astype(np.float32)

    def _build_solver(self, X: np.ndarray, excluded: np.ndarray, seed: int) -> _CoverSolver:
        self._validate_params()  # type: ignore[attr-defined]
        p = self._solver_params()
        device = resolve_device(p["device"])
        objective = p["objective"]
        # whitening shapes the covering objectives; k-center keeps raw cosine, like KCenterSelector
        E = l2_normalize(soft_whiten(X) if p.get("whiten") and objective != "k_center" else X)
        n = E.shape[0]
        graph, tau, method, knn_sims = None, None, None, None
        if objective != "k_center":
            m = p["n_neighbors"]
            if m is not None or (objective == "threshold_cover" and p["threshold"] is None):
                mm = int(min(m if m is not None else 10, n))
                method = p["knn"] if p["knn"] != "auto" else ("exact" if n <= _EXACT_KNN_MAX_N else "ivf")
                opts = dict(p["knn_options"] or {})
                if method == "exact":
                    knn_sims, knn_idx = knn_search(E, mm, device=str(device), precision=p["precision"],
                                                   **{k: v for k, v in opts.items() if k == "chunk_size"})
                else:
                    knn_sims, knn_idx = ivf_knn_search(
                        E, mm, device=str(device), precision=p["precision"], random_state=seed,
                        **{k: v for k, v in opts.items() if k in ("n_cells", "n_probe")})
                if m is not None:
                    graph = similarity_graph(knn_sims, knn_idx, n)
                del knn_idx
            if objective == "threshold_cover":
                tau = float(p["threshold"]) if p["threshold"] is not None \
                    else float(np.median(knn_sims[:, -1]))
            if m is None:
                method = "dense"
        self.knn_method_ = method
        self.threshold_ = tau
        self.graph_nnz_ = int(graph.nnz) if graph is not None else 0
        return _CoverSolver(E, objective, tau, graph, excluded, device, bool(p["lazy"]),
                            weights=getattr(self, "sample_weight_", None))

    def _run(self, solver: _CoverSolver, k: int, seed: int) -> tuple[list[int], list[float], list[float]]:
        p = self._solver_params()
        rng = np.random.default_rng(seed)
        picks, gains, curve = [], [], []
        before = solver.objective_value()
        while len(picks) < k:
            best_before = solver.best.copy() if solver.objective == "k_center" else None
            j = solver.step(rng, p["init"], int(p["n_init_random"]), k - len(picks))
            after = solver.objective_value()
            if best_before is not None:
                # gain of a k-center pick = its distance to the set before the pick (NaN if none)
                d = float(_chordal(best_before[j:j + 1])[0])
                gains.append(d if math.isfinite(d) else float("nan"))
            else:
                gains.append(after - before)
            picks.append(j)
            curve.append(after)
            before = after
        return picks, gains, curve

    def _select(self, X: np.ndarray, n_select: int, exclude: np.ndarray, seed: int) -> np.ndarray:
        return self._greedy_select(X, n_select, exclude, seed, already=np.zeros(0, dtype=np.int64),
                                   user_excluded=exclude)

    def _greedy_select(self, X: np.ndarray, n_select: int, exclude: np.ndarray, seed: int, *,
                       already: np.ndarray, user_excluded: np.ndarray) -> np.ndarray:
        user_excl = user_excluded
        solver = self._build_solver(X, exclude, seed)
        for j in already:
            solver.add(int(j), record=False)
        self.objective_initial_ = solver.objective_value() if len(already) else (
            float("inf") if solver.objective == "k_center" else 0.0)
        picks, gains, curve = self._run(solver, n_select, seed)
        self.gains_ = np.asarray(gains, dtype=np.float64)
        self.coverage_curve_ = np.asarray(curve, dtype=np.float64)
        self.coverage_ = np.maximum(solver.best, 0).astype(np.float32)
        self.objective_value_ = float(curve[-1])
        self.already_selected_ = np.asarray(already, dtype=np.int64)
        self.excluded_ = np.flatnonzero(user_excl).astype(np.int64)
        self.random_seed_ = int(seed)
        self.n_evaluations_ = int(solver.n_evaluations)
        self._solver = solver
        return np.asarray(picks, dtype=np.int64)

    # ---------------------------------------------------------------- extend
    def extend(self, n_more: int, X: Any = None, exclude: Any = None) -> "_GreedyCoverMixin":
        """Add ``n_more`` greedy picks to the fitted core set (nested prefixes).

        The result equals a fresh fit with ``n_select + n_more`` (same parameters and
        ``random_state``). ``X`` is needed only when the estimator was loaded from disk (the
        similarity state is not saved); ``exclude`` adds further samples never to pick.
        """
        self._check_is_fitted()  # type: ignore[attr-defined]
        if not isinstance(n_more, (int, np.integer)) or isinstance(n_more, bool) or n_more < 1:
            raise ValueError(f"n_more must be a positive integer, got {n_more!r}")
        n = int(self.n_samples_fit_)
        solver = self._solver
        if X is not None or solver is None:
            if X is None:
                raise ValueError("extend needs X after load(): pass the same embeddings used in fit")
            X = check_embeddings(X)
            if X.shape != (n, int(self.n_features_in_)):
                raise ValueError(f"X has shape {X.shape} but the selector was fitted on "
                                 f"({n}, {self.n_features_in_}); pass the same embeddings")
            excl = np.zeros(n, dtype=bool)
            excl[self.excluded_] = True
            excl[self.already_selected_] = True
            excl[self.selected_indices_] = True
            solver = self._build_solver(X, excl, int(self.random_seed_))
            for j in np.concatenate([self.already_selected_, self.selected_indices_]):
                solver.add(int(j), record=False)
        extra = as_index_mask(exclude, n, name="exclude")
        if extra.any():
            solver.excluded |= extra
            self.excluded_ = np.union1d(self.excluded_, np.flatnonzero(extra)).astype(np.int64)
        available = int((~solver.excluded).sum())
        if n_more > available:
            raise ValueError(f"n_more={n_more} but only {available} samples can still be picked")
        # the seeding of k-center already happened: continue farthest-first
        picks, gains, curve = self._run(solver, int(n_more), int(self.random_seed_) + len(self.selected_indices_))
        self.selected_indices_ = np.concatenate([self.selected_indices_, picks]).astype(np.int64)
        self.gains_ = np.concatenate([self.gains_, gains])
        self.coverage_curve_ = np.concatenate([self.coverage_curve_, curve])
        self.coverage_ = np.maximum(solver.best, 0).astype(np.float32)
        self.objective_value_ = float(curve[-1])
        self.n_evaluations_ = int(solver.n_evaluations)
        self._solver = solver
        return self

    def free_memory(self) -> "_GreedyCoverMixin":
        """Drop the in-memory similarity state kept for :meth:`extend` (embeddings, graph).

        Fitted attributes stay; a later ``extend`` then needs ``X`` again.
        """
        self._solver = None
        return self

    def suggest_n_select(self, rule: str = "gain_fraction", fraction: float = 0.1) -> int:
        """Suggested core-set size from this run's coverage curve; see :func:`suggest_n_select`."""
        self._check_is_fitted()  # type: ignore[attr-defined]
        return suggest_n_select(self.coverage_curve_, rule=rule, fraction=fraction,
                                initial=float(self.objective_initial_),
                                decreasing=self._solver_params()["objective"] == "k_center")


# ====================================================================== public selectors
@register_estimator
class KCoverSelector(_GreedyCoverMixin, BaseSelector):
    """Core set by greedy maximum K-cover (facility location) on cosine similarity.

    Maximises ``F(S) = sum_i max_{j in S} max(0, cos(x_i, x_j))`` -- the "generalised max set
    cover" of Suggestive/Representative Annotation (Yang et al. 2017; Zheng et al. 2019) that
    Cao et al. 2025 call max K-cover -- by lazy greedy (Minoux 1978), which keeps the
    ``1 - 1/e`` guarantee of plain greedy (Nemhauser et al. 1978) and picks the same set.

    **Sparse mode** (``n_neighbors=int``, default 100): each sample's ``n_neighbors`` most
    similar samples are found by chunked matrix products (never an N x N matrix), the kNN
    graph is symmetrised (``W = max(S, S^T)``, CSC), and the gain of candidate ``j`` is
    summed over its graph column, ``sum_{i in N(j)} max(0, W_ij - c_i)``. The coverage ``c``
    itself is always exact: after every pick one ``O(N d)`` pass updates each sample's best
    similarity to the set, so a second pick inside an already covered region scores low
    even if the region is larger than ``n_neighbors``. Gains only shrink as ``c`` grows, so
    lazy evaluation stays exact for this rule. **Dense mode** (``n_neighbors=None``) sums
    gains over all samples (streamed in blocks; ``O(N^2 d)`` for the first pass), for
    checking the sparse mode on small data.

    ``objective="threshold_cover"`` counts samples whose best similarity is at least
    ``threshold`` (default: the median similarity of a sample to its ``n_neighbors``-th
    neighbour, 10th in dense mode). ``objective="k_center"`` (farthest-first traversal) is
    deprecated: it raises a ``FutureWarning`` and will be removed; use
    :class:`KCenterSelector`, which picks the same samples.

    Choosing K: fit once with a generous ``n_select`` and read ``coverage_curve_`` (the
    objective after each pick); :meth:`suggest_n_select` returns the smallest ``K`` after
    which a pick adds less than 10% of the second pick's gain (or the curve's knee). Because
    greedy prefixes are nested, ``selected_indices_[:K]`` is the K-pick solution.

    Parameters
    ----------
    n_select : int
        Number of samples to pick.
    objective : {"facility_location", "threshold_cover", "k_center"}
        ``"k_center"`` is deprecated (use :class:`KCenterSelector`).
    n_neighbors : int or None
        Size of the kNN lists (sparse mode); None for the exact dense mode.
    threshold : float, optional
        Cosine similarity for ``"threshold_cover"``.
    lazy : bool
        Lazy greedy (heap of stale upper bounds). ``False`` recomputes every gain at every
        step (plain greedy; same picks, slower).
    knn : {"auto", "exact", "ivf"}
        kNN search: exact chunked search, or the approximate inverted file
        (:func:`~biodatacentric.assess.knn.ivf_knn_search`); "auto" is exact up to 150,000
        samples.
    knn_options : dict, optional
        ``{"chunk_size": ...}`` for exact search, ``{"n_cells": ..., "n_probe": ...}`` for IVF.
    init : {"medoid", "random"}
        k-center seeding: the sample nearest the mean direction, or ``n_init_random`` random
        samples. Facility location needs no seed.
    n_init_random : int
        Number of random k-center seeds (the authors' code uses 3).
    device : str
        Torch device for the matrix products ("cpu", "cuda", "auto").
    precision : {"auto", "bf16", "fp32"}
        Precision of the kNN candidate ranking (kept similarities are re-scored in fp32).
    whiten : bool, default=True
        Compare samples after :func:`~biodatacentric.assess.knn.soft_whiten` (centred, every
        principal direction stronger than average brought to about unit variance) instead of
        on the embeddings as given (``False``). Mean-pooled image embeddings are often
        dominated by one direction, overall brightness; on raw cosine the cover then spreads
        along that one axis only. On the real cohort benchmark
        (``benchmarks/results/evidence_candidates.md``, 10 stacks, 5 seeds), ``whiten=True``
        with ``groups=`` (one label per stack) raised the segmenter's macro Dice over raw
        cosine without groups by +0.012 ± 0.002 at K = 10 and +0.013 ± 0.004 at K = 25.
        Used by the covering objectives; the deprecated ``"k_center"`` compares raw cosine,
        as :class:`KCenterSelector` does.
    random_state : int, optional
        Seed (k-center random seeding and IVF k-means); same seed, same picks.

    Attributes
    ----------
    selected_indices_ : ndarray of int64, shape (n_select,)
        Picks in greedy order (nested prefixes).
    gains_ : ndarray of float64
        Exact increase of the objective made by each pick (for k-center: the pick's chordal
        distance to the earlier picks, NaN for seeds picked before any coverage).
    coverage_curve_ : ndarray of float64
        Objective value after each pick.
    coverage_ : ndarray of float32, shape (n_samples,)
        Each sample's best non-negative cosine similarity to the selection (and to
        ``already_selected``), on the embeddings compared (soft-whitened when ``whiten``).
    objective_value_ : float
        Final objective, exactly evaluated over all samples (facility location: sum of
        ``coverage_``; threshold cover: number of covered samples; k-center: covering radius
        in chordal distance).
    threshold_ : float or None
        The threshold used by ``"threshold_cover"``.
    sample_weight_ : ndarray of float32 or None
        Weight of every sample in the objective when ``fit`` was given ``groups`` (each
        group weighs the same in total); None otherwise.
    knn_method_ : str or None
        "exact", "ivf", "dense" or None (k-center).
    graph_nnz_ : int
        Entries of the symmetrised kNN graph (0 in dense mode).
    n_evaluations_ : int
        Candidate gain evaluations (lazy greedy needs few beyond the first pass).

    Notes
    -----
    Memory: the normalised embeddings (``4 N d`` bytes) and the graph (about ``8 N m`` to
    ``16 N m`` bytes) stay in memory after ``fit`` so that :meth:`extend` is cheap; call
    :meth:`free_memory` to drop them. Nothing of size ``N x N`` is ever allocated: the exact
    search holds blocks of at most ~32 M similarities, the dense mode blocks of ~16 M.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.assess import KCoverSelector
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(c, 0.1, size=(50, 8)) for c in np.eye(8)[:4] * 3])
    >>> sel = KCoverSelector(n_select=4, n_neighbors=20, random_state=0).fit(X)
    >>> sorted(int(i) // 50 for i in sel.selected_indices_)  # one pick per cluster
    [0, 1, 2, 3]
    >>> sel.extend(2).selected_indices_.shape
    (6,)
    """

    _parameter_constraints: dict = {
        **BaseSelector._parameter_constraints,
        "objective": [Options(_OBJECTIVES)],
        "n_neighbors": [None, Interval(Integral, 2, None)],
        "threshold": [None, Interval(Real, -1.0, 1.0)],
        "lazy": ["boolean"],
        "knn": [Options(("auto", "exact", "ivf"))],
        "knn_options": [None, dict],
        "init": [Options(("medoid", "random"))],
        "n_init_random": [Interval(Integral, 1, None)],
        "device": ["device"],
        "precision": [Options(("auto", "bf16", "fp32"))],
        "whiten": ["boolean"],
    }

    def __init__(self, n_select: int = 25, objective: str = "facility_location",
                 n_neighbors: int | None = 100, threshold: float | None = None, lazy: bool = True,
                 knn: str = "auto", knn_options: dict | None = None, init: str = "medoid",
                 n_init_random: int = 3, device: str = "cpu", precision: str = "auto",
                 whiten: bool = True, random_state: int | None = None) -> None:
        self.n_select = n_select
        self.objective = objective
        self.whiten = whiten
        self.n_neighbors = n_neighbors
        self.threshold = threshold
        self.lazy = lazy
        self.knn = knn
        self.knn_options = knn_options
        self.init = init
        self.n_init_random = n_init_random
        self.device = device
        self.precision = precision
        self.random_state = random_state

    def _solver_params(self) -> dict:
        return {k: getattr(self, k) for k in ("objective", "n_neighbors", "threshold", "lazy", "knn",
                                              "knn_options", "init", "n_init_random", "device",
                                              "precision", "whiten")}

    def _build_solver(self, X: np.ndarray, excluded: np.ndarray, seed: int) -> _CoverSolver:
        if self.objective == "k_center":   # deprecated duplicate of KCenterSelector (same picks)
            warnings.warn("KCoverSelector(objective='k_center') is deprecated and will be removed; use "
                          "KCenterSelector(n_select=..., init=..., n_init_random=..., random_state=...), "
                          "which picks the same samples", FutureWarning, stacklevel=4)
        return super()._build_solver(X, excluded, seed)


@register_estimator
class KCenterSelector(_GreedyCoverMixin, BaseSelector):
    """Greedy k-center (farthest-first traversal) on cosine embeddings -- the authors' code.

    Minimises the covering radius ``max_i min_{j in S} d(i, j)`` with the chordal distance
    ``d = sqrt(2 - 2 cos)`` (a metric, monotone in ``1 - cos`` so the picks equal those on
    cosine distance), a 2-approximation (Gonzalez 1985). Incremental: one ``O(N d)`` pass per
    pick, ``O(N)`` memory, never the N x N distance matrix the authors' script builds.

    Farthest-first picks the most unusual samples first -- in microscopy often blank,
    saturated or artefact tiles (pitfall K3). Filter them with :class:`DatasetAuditor` and
    ``exclude=``, or prefer :class:`KCoverSelector`.

    Parameters
    ----------
    n_select : int
    init : {"random", "medoid"}
        ``"random"``: ``n_init_random`` uniformly random seeds (authors: 3); ``"medoid"``:
        the sample nearest the mean direction (deterministic).
    n_init_random : int
    device : str
    random_state : int, optional

    Attributes
    ----------
    selected_indices_, gains_, coverage_curve_, coverage_, objective_value_ :
        As in :class:`KCoverSelector`; ``objective_value_`` is the covering radius.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0.05]])
    >>> KCenterSelector(n_select=2, init="medoid").fit(X).selected_indices_.tolist()
    [2, 0]
    """

    _parameter_constraints: dict = {
        **BaseSelector._parameter_constraints,
        "init": [Options(("random", "medoid"))],
        "n_init_random": [Interval(Integral, 1, None)],
        "device": ["device"],
    }

    def __init__(self, n_select: int = 25, init: str = "random", n_init_random: int = 3,
                 device: str = "cpu", random_state: int | None = None) -> None:
        self.n_select = n_select
        self.init = init
        self.n_init_random = n_init_random
        self.device = device
        self.random_state = random_state

    def _solver_params(self) -> dict:
        return {"objective": "k_center", "n_neighbors": None, "threshold": None, "lazy": True,
                "knn": "auto", "knn_options": None, "init": self.init,
                "n_init_random": self.n_init_random, "device": self.device, "precision": "fp32"}


@register_estimator
class RandomSelector(BaseSelector):
    """Uniformly random core set (the baseline every selector must beat).

    Picks follow one seeded permutation of the non-excluded samples, so :meth:`extend`
    continues the same sequence (nested prefixes).

    Examples
    --------
    >>> import numpy as np
    >>> RandomSelector(n_select=3, random_state=0).fit(np.zeros((10, 2)), exclude=[0]).selected_indices_.shape
    (3,)
    """

    def __init__(self, n_select: int = 25, random_state: int | None = None) -> None:
        self.n_select = n_select
        self.random_state = random_state

    def _order(self, exclude: np.ndarray, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).permutation(np.flatnonzero(~exclude))

    def _select(self, X: np.ndarray, n_select: int, exclude: np.ndarray, seed: int) -> np.ndarray:
        self.random_seed_ = int(seed)
        self.excluded_ = np.flatnonzero(exclude).astype(np.int64)
        return self._order(exclude, seed)[:n_select]

    def extend(self, n_more: int) -> "RandomSelector":
        """Add ``n_more`` picks from the same random sequence."""
        self._check_is_fitted()
        excl = np.zeros(int(self.n_samples_fit_), dtype=bool)
        excl[self.excluded_] = True
        order = self._order(excl, int(self.random_seed_))
        k = len(self.selected_indices_)
        if k + n_more > len(order):
            raise ValueError(f"n_more={n_more} but only {len(order) - k} samples can still be picked")
        self.selected_indices_ = order[:k + n_more].astype(np.int64)
        return self

