"""Dataset audit: near-duplicates, blank / saturated / blurry patches, embedding outliers.

The audit looks at a patch collection before anything is annotated. Image checks use simple
per-patch statistics of the normalised pixels; embedding checks use cosine k-nearest
neighbours (chunked, never an N x N matrix). Flags feed straight into a selector::

    audit = DatasetAuditor().fit(patches, embeddings=emb)
    core = KCoverSelector(n_select=25).fit(emb, exclude=audit.exclude_)
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .._params import Check, Interval
from .._utils import check_random_state_int, progress
from .._validation import check_embeddings
from ..base import BioEstimator, register_estimator
from ..data import Patches, as_patches
from .knn import ivf_knn_search, knn_search, l2_normalize, spherical_kmeans

__all__ = ["DatasetAuditor", "AuditWarning", "MOST_EXCLUDED", "diversity_summary", "image_statistics"]

CHECKS = ("duplicate", "blank", "saturated", "blurry", "outlier")
#: the largest share of a dataset the audit excludes without saying why (a warning from ``fit``;
#: the command line refuses unless told ``--max-excluded``; the demo does not exclude then)
MOST_EXCLUDED = 0.5
STAT_NAMES = ("mean", "std", "p01", "p99", "saturated_fraction", "sharpness", "knn_distance")


# ---------------------------------------------------------------------- statistics
def image_statistics(images: np.ndarray, saturation_level: float = 0.999,
                     raw: np.ndarray | None = None) -> np.ndarray:
    """Per-patch statistics of normalised ``(n, h, w)`` images, columns as ``STAT_NAMES[:6]``.

    ``saturated_fraction`` is the fraction of pixels at the raw dtype's maximum when integer
    ``raw`` pixels are given, else at or above ``saturation_level`` of the normalised values.
    ``sharpness`` is the variance of the 4-neighbour Laplacian divided by the pixel
    variance (a contrast-independent focus measure; low = blurry).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> from biodatacentric import make_vessels
    >>> img, _ = make_vessels((64, 64), random_state=0)
    >>> stats = image_statistics(np.stack([img, ndi.gaussian_filter(img, 2), np.zeros_like(img)]))
    >>> stats.shape, STAT_NAMES[5], bool(stats[1, 5] < stats[0, 5])   # blurring lowers sharpness
    ((3, 6), 'sharpness', True)
    >>> stats[2].tolist()   # a blank patch
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    x = np.asarray(images, dtype=np.float32)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    out = np.empty((n, 6), dtype=np.float32)
    out[:, 0] = flat.mean(axis=1)
    var = flat.var(axis=1)
    out[:, 1] = np.sqrt(var)
    q = np.quantile(flat, [0.01, 0.99], axis=1)
    out[:, 2], out[:, 3] = q[0], q[1]
    if raw is not None and np.issubdtype(raw.dtype, np.integer):
        top = np.iinfo(raw.dtype).max
        out[:, 4] = (raw.reshape(n, -1) == top).mean(axis=1)
    else:
        out[:, 4] = (flat >= saturation_level).mean(axis=1)
    if x.shape[1] >= 3 and x.shape[2] >= 3:
        lap = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]
               - 4.0 * x[:, 1:-1, 1:-1])
        lv = lap.reshape(n, -1).var(axis=1)
        out[:, 5] = lv / np.maximum(var, 1e-12)
    else:
        out[:, 5] = np.nan
    return out


def _thumbnails(images: np.ndarray, size: int = 16) -> np.ndarray:
    """Block-mean thumbnails minus their mean: a cheap structural embedding."""
    n, h, w = images.shape
    ys = np.linspace(0, h, min(size, h) + 1).astype(int)
    xs = np.linspace(0, w, min(size, w) + 1).astype(int)
    t = np.add.reduceat(np.add.reduceat(images, ys[:-1], axis=1), xs[:-1], axis=2)
    t /= np.outer(np.diff(ys), np.diff(xs))[None]
    t = t.reshape(n, -1)
    return (t - t.mean(axis=1, keepdims=True)).astype(np.float32)


def _knn(E: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if E.shape[0] <= 150_000:
        return knn_search(E, k, precision="fp32")
    return ivf_knn_search(E, k, random_state=seed)


def _effective_number(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _kmeans(E: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centers, labels = spherical_kmeans(E, int(min(n_clusters, E.shape[0])), n_iter=20, seed=seed,
                                       sample=50_000)
    return centers.astype(np.float32), labels.astype(np.int32)


def diversity_summary(embeddings: Any, indices: Any = None, n_clusters: int = 50,
                      random_state: int = 0) -> dict:
    """Diversity of a dataset (and optionally of a selection from it).

    Returns
    -------
    dict with
        ``effective_rank`` -- ``exp`` of the entropy of the normalised PCA eigenvalues of the
        L2-normalised embeddings (how many directions carry variance);
        ``effective_n_clusters`` -- ``exp`` of the entropy of k-means cluster sizes
        (``n_clusters`` cells; equals the number of equally sized clusters);
        ``mean_cosine_distance`` -- mean pairwise ``1 - cos`` (on at most 2,000 samples).
        With ``indices``: ``selection_clusters_hit`` (clusters holding a pick),
        ``selection_mass_covered`` (fraction of samples in those clusters),
        ``selection_effective_n_clusters`` and ``selection_mean_cosine_distance``.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(200, 4))
    >>> d = diversity_summary(X, indices=[0, 1, 2], n_clusters=5)
    >>> 1 <= d["effective_n_clusters"] <= 5
    True
    """
    E = l2_normalize(check_embeddings(embeddings, name="embeddings"))
    _, labels = _kmeans(E, n_clusters, random_state)
    out = _diversity_from(E, labels, random_state)
    if indices is not None:
        out.update(_selection_diversity(E, labels, np.asarray(indices, dtype=np.int64), random_state))
    return out


def _effective_rank(E: np.ndarray) -> float:
    C = np.cov(E.T.astype(np.float64)) if E.shape[0] > 1 else np.zeros((1, 1))
    ev = np.clip(np.linalg.eigvalsh(np.atleast_2d(C)), 0, None)
    if ev.sum() <= 0:
        return 1.0
    return _effective_number(ev)


def _mean_cos_distance(E: np.ndarray, seed: int, cap: int = 2000) -> float:
    if E.shape[0] < 2:
        return 0.0
    if E.shape[0] > cap:
        E = E[np.random.default_rng(seed).choice(E.shape[0], cap, replace=False)]
    S = E @ E.T
    n = E.shape[0]
    return float(1.0 - (S.sum() - np.trace(S)) / (n * (n - 1)))


def _diversity_from(E: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    return {"effective_rank": _effective_rank(E),
            "effective_n_clusters": _effective_number(np.bincount(labels)),
            "n_clusters": int(labels.max() + 1),
            "mean_cosine_distance": _mean_cos_distance(E, seed)}


def _selection_diversity(E: np.ndarray, labels: np.ndarray, idx: np.ndarray, seed: int) -> dict:
    hit = np.unique(labels[idx])
    return {"selection_size": int(len(idx)),
            "selection_clusters_hit": int(len(hit)),
            "selection_mass_covered": float(np.isin(labels, hit).mean()),
            "selection_effective_n_clusters": _effective_number(np.bincount(labels[idx])),
            "selection_mean_cosine_distance": _mean_cos_distance(E[idx], seed)}


# ---------------------------------------------------------------------- estimator
def _check_checks(value: Any) -> None:
    if isinstance(value, str) or not isinstance(value, (tuple, list, set, frozenset)):
        raise TypeError(f"exclude_checks must be a tuple of check names, got {value!r}")
    bad = [c for c in value if c not in CHECKS]
    if bad:
        raise ValueError(f"exclude_checks holds unknown checks {bad}; choose from {CHECKS}")


@register_estimator
class DatasetAuditor(BioEstimator):
    """Flag near-duplicate, blank, saturated, blurry and outlying patches; summarise diversity.

    ``fit(patches, embeddings=emb)`` runs every check its inputs allow: image checks need
    ``patches`` (a :class:`~biodatacentric.Patches` or an ``(n, h, w)`` array of normalised
    intensities in [0, 1]); embedding checks use ``embeddings`` when given, else 16 x 16
    mean-subtracted thumbnails of the patches.

    Checks
    ------
    duplicate
        Cosine similarity to an earlier patch at least ``duplicate_threshold`` (found
        among ``n_neighbors`` nearest neighbours; groups joined transitively). The
        lowest-index member of a group is kept, the others flagged (``duplicate_of_``).
    blank
        Low information: the 1st-99th percentile intensity range is below ``blank_range``.
    saturated
        More than ``saturated_fraction`` of the pixels saturated (raw dtype maximum for
        integer sources of a :class:`Patches`, else normalised value >= ``saturation_level``).
    blurry
        Among non-blank patches, ``log(sharpness)`` (Laplacian variance / pixel variance)
        more than ``blur_mad`` robust standard deviations (1.4826 MAD) below the median.
    outlier
        Chordal distance to the ``n_neighbors``-th nearest neighbour above the
        ``outlier_percentile`` percentile of all such distances.

    Parameters
    ----------
    duplicate_threshold, blank_range, saturation_level : float
        Thresholds of the duplicate, blank and saturated checks (see the checks above).
    saturated_fraction, blur_mad, outlier_percentile : float
        Thresholds of the saturated, blurry and outlier checks (see the checks above).
    n_neighbors : int
        Neighbours for the duplicate and outlier checks.
    n_clusters : int
        k-means cells for the diversity summary.
    exclude_checks : tuple of str
        Checks whose flags make up ``exclude_`` (outliers are reported but kept by default:
        a rare structure may be exactly what should be annotated).
    batch_size : int
        Patches read at a time.
    random_state : int, optional
        Seed of the k-means.

    Attributes
    ----------
    flag_names_ : list of str
        The checks that ran (columns of ``flag_matrix_``).
    flag_matrix_ : ndarray of bool, shape (n, n_checks)
    exclude_ : ndarray of bool, shape (n,)
        Patches flagged by any of ``exclude_checks``: pass as ``exclude=`` to a selector.
    stats_ : ndarray of float32, shape (n, 7)
        Per patch ``mean, std, p01, p99, saturated_fraction, sharpness, knn_distance``
        (NaN where not computed); column names in ``stat_names_``.
    duplicate_of_ : ndarray of int64
        Kept representative of each flagged duplicate, -1 elsewhere.
    thresholds_ : dict
        The threshold each check used.
    diversity_ : dict
        Dataset diversity (see :func:`diversity_summary`).
    cluster_labels_ : ndarray of int32
        k-means cell of each patch (for :meth:`selection_diversity`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.random((30, 32, 32)).astype(np.float32)
    >>> imgs[3] = 0.2                      # blank
    >>> imgs[7] = imgs[5]                  # duplicate
    >>> audit = DatasetAuditor(n_clusters=4, random_state=0).fit(imgs)
    >>> bool(audit.flags("blank")[3]), int(audit.duplicate_of_[7])
    (True, 5)
    >>> print(audit.summary_table())  # doctest: +SKIP
    """

    _fitted_attribute = "flag_matrix_"

    _parameter_constraints: dict = {
        "duplicate_threshold": [Interval(Real, -1.0, 1.0)],
        "blank_range": [Interval(Real, 0.0, None)],
        "saturation_level": [Interval(Real, None, None)],
        "saturated_fraction": [Interval(Real, 0.0, 1.0)],
        "blur_mad": [Interval(Real, 0.0, None)],
        "outlier_percentile": [Interval(Real, 0.0, 100.0, closed="right")],
        "n_neighbors": [Interval(Integral, 1, None)],
        "n_clusters": [Interval(Integral, 1, None)],
        "exclude_checks": [Check(_check_checks, f"a sequence of check names from {CHECKS}")],
        "batch_size": [Interval(Integral, 1, None)],
        "random_state": ["random_state"],
    }

    def __init__(self, duplicate_threshold: float = 0.995, blank_range: float = 0.05,
                 saturation_level: float = 0.999, saturated_fraction: float = 0.05,
                 blur_mad: float = 3.0, outlier_percentile: float = 99.0, n_neighbors: int = 10,
                 n_clusters: int = 50, exclude_checks: tuple = ("duplicate", "blank", "saturated", "blurry"),
                 batch_size: int = 256, random_state: int | None = None) -> None:
        self.duplicate_threshold = duplicate_threshold
        self.blank_range = blank_range
        self.saturation_level = saturation_level
        self.saturated_fraction = saturated_fraction
        self.blur_mad = blur_mad
        self.outlier_percentile = outlier_percentile
        self.n_neighbors = n_neighbors
        self.n_clusters = n_clusters
        self.exclude_checks = exclude_checks
        self.batch_size = batch_size
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any = None, y: None = None, *, embeddings: Any = None) -> "DatasetAuditor":
        """Run the checks.

        Parameters
        ----------
        X : Patches or array of shape (n, h, w), optional
            The patches (normalised intensities) for the image checks.
        y : None
            Ignored.
        embeddings : array of shape (n, d), optional
            Embeddings for the duplicate and outlier checks and the diversity summary.
            At least one of ``X`` and ``embeddings`` is required.
        """
        self._validate_params()
        if X is None and embeddings is None:
            raise ValueError("pass patches (X) and/or embeddings= to DatasetAuditor.fit")
        seed = check_random_state_int(self.random_state)
        patches = as_patches(X, name="X") if X is not None else None
        emb = check_embeddings(embeddings, name="embeddings") if embeddings is not None else None
        n = len(patches) if patches is not None else emb.shape[0]  # type: ignore[union-attr]
        if emb is not None and emb.shape[0] != n:
            raise ValueError(f"embeddings has {emb.shape[0]} rows but there are {n} patches; "
                             "pass one embedding per patch, in the same order")
        stats = np.full((n, len(STAT_NAMES)), np.nan, dtype=np.float32)
        flags: dict[str, np.ndarray] = {}
        thresholds: dict[str, Any] = {}
        thumbs = None
        if patches is not None:
            raw_ok = isinstance(patches, Patches)
            thumb_parts = []
            for start in progress(range(0, n, int(self.batch_size)), desc="audit: image stats",
                                  total=-(-n // int(self.batch_size))):
                sel = np.arange(start, min(n, start + int(self.batch_size)))
                imgs = patches.images(sel)
                raw = None
                if raw_ok:
                    try:
                        raw = patches.raw(sel)
                    except ValueError:  # sources of mixed dtypes: use normalised values
                        raw_ok = False
                stats[sel, :6] = image_statistics(imgs, float(self.saturation_level), raw)
                if emb is None:
                    thumb_parts.append(_thumbnails(imgs))
            if emb is None:
                thumbs = np.concatenate(thumb_parts)
            rng_ = stats[:, 3] - stats[:, 2]
            flags["blank"] = rng_ < float(self.blank_range)
            thresholds["blank"] = {"p99_minus_p01_below": float(self.blank_range)}
            flags["saturated"] = stats[:, 4] > float(self.saturated_fraction)
            thresholds["saturated"] = {"fraction_above": float(self.saturated_fraction)}
            ok = ~flags["blank"] & np.isfinite(stats[:, 5]) & (stats[:, 5] > 0)
            blurry = np.zeros(n, dtype=bool)
            cut = None
            if ok.sum() >= 10:
                ls = np.log(stats[ok, 5].astype(np.float64))
                med = float(np.median(ls))
                mad = 1.4826 * float(np.median(np.abs(ls - med)))
                cut = med - float(self.blur_mad) * mad
                blurry[ok] = ls < cut
            flags["blurry"] = blurry
            thresholds["blurry"] = {"log_sharpness_below": cut}
        E_src = emb if emb is not None else thumbs
        self.embedding_source_ = "embeddings" if emb is not None else "thumbnails"
        E = l2_normalize(E_src)
        dup_of = np.full(n, -1, dtype=np.int64)
        if n >= 2:
            k = int(min(int(self.n_neighbors) + 1, n))
            sims, idx = _knn(E, k, seed)
            # duplicates: pairs above the threshold, joined into groups
            rows = np.repeat(np.arange(n), k)
            keep = (sims.ravel() >= float(self.duplicate_threshold)) & (idx.ravel() != rows)
            A = sp.coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (rows[keep], idx.ravel()[keep])),
                              shape=(n, n))
            _, comp = connected_components(A, directed=False)
            first = np.full(comp.max() + 1, n, dtype=np.int64)
            np.minimum.at(first, comp, np.arange(n))
            sizes = np.bincount(comp)
            is_dup = (sizes[comp] > 1) & (first[comp] != np.arange(n))
            dup_of[is_dup] = first[comp][is_dup]
            flags["duplicate"] = is_dup
            thresholds["duplicate"] = {"cosine_at_least": float(self.duplicate_threshold)}
            # outliers: distance to the n_neighbors-th neighbour (self excluded)
            kth = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims[:, -1].astype(np.float64)))
            stats[:, 6] = kth
            cut_o = float(np.percentile(kth, float(self.outlier_percentile)))
            flags["outlier"] = kth > cut_o
            thresholds["outlier"] = {"knn_chordal_distance_above": cut_o,
                                     "percentile": float(self.outlier_percentile)}
        else:
            flags["duplicate"] = np.zeros(n, dtype=bool)
            flags["outlier"] = np.zeros(n, dtype=bool)
        centers, labels = _kmeans(E, int(self.n_clusters), seed)
        names = [c for c in CHECKS if c in flags]
        self.flag_names_ = names
        self.flag_matrix_ = np.stack([flags[c] for c in names], axis=1)
        self.exclude_ = np.zeros(n, dtype=bool)
        for c in self.exclude_checks:
            if c in flags:
                self.exclude_ |= flags[c]
        _warn_if_most_excluded(self.exclude_, flags, self.exclude_checks, thresholds)
        self.stats_ = stats
        self.stat_names_ = list(STAT_NAMES)
        self.duplicate_of_ = dup_of
        self.thresholds_ = thresholds
        self.cluster_centers_ = centers
        self.cluster_labels_ = labels
        self.diversity_ = _diversity_from(E, labels, seed)
        self.n_samples_ = int(n)
        return self

    # ------------------------------------------------------------------ results
    def flags(self, name: str | None = None) -> Any:
        """The boolean mask of one check, or a dict of all masks when ``name`` is None."""
        self._check_is_fitted()
        if name is None:
            return {c: self.flag_matrix_[:, i].copy() for i, c in enumerate(self.flag_names_)}
        if name not in self.flag_names_:
            raise KeyError(f"check {name!r} did not run; available: {self.flag_names_}")
        return self.flag_matrix_[:, self.flag_names_.index(name)].copy()

    def summary(self) -> list[dict]:
        """One row per check: ``check``, ``flagged``, ``fraction``, ``threshold``, ``excluded``."""
        self._check_is_fitted()
        rows = []
        for i, c in enumerate(self.flag_names_):
            k = int(self.flag_matrix_[:, i].sum())
            rows.append({"check": c, "flagged": k, "fraction": k / max(self.n_samples_, 1),
                         "threshold": self.thresholds_.get(c), "excluded": c in self.exclude_checks})
        rows.append({"check": "any (exclude_)", "flagged": int(self.exclude_.sum()),
                     "fraction": float(self.exclude_.mean()), "threshold": None, "excluded": True})
        return rows

    def summary_table(self) -> str:
        """The summary and diversity as a plain-text table."""
        rows = self.summary()
        lines = [f"DatasetAuditor: {self.n_samples_} patches, embedding checks on {self.embedding_source_}",
                 f"{'check':<16}{'flagged':>9}{'fraction':>10}  {'excluded':<9}threshold"]
        for r in rows:
            thr = "" if r["threshold"] is None else ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["threshold"].items())
            lines.append(f"{r['check']:<16}{r['flagged']:>9}{r['fraction']:>10.4f}  "
                         f"{'yes' if r['excluded'] else 'no':<9}{thr}")
        d = self.diversity_
        lines.append(f"diversity: effective rank {d['effective_rank']:.2f}, effective clusters "
                     f"{d['effective_n_clusters']:.2f} of {d['n_clusters']}, mean cosine distance "
                     f"{d['mean_cosine_distance']:.4f}")
        return "\n".join(lines)

    def most_excluded_reason(self, limit: float = MOST_EXCLUDED) -> str | None:
        """Why ``exclude_`` removes more than ``limit`` of the patches, and what to do; None if it does not.

        The text of the :class:`AuditWarning` that ``fit`` gives for ``limit=0.5``: the share
        removed, each excluding check with its count, share and threshold, and the setting to
        change. A program that excludes ``exclude_`` without a person deciding (the command line,
        the demo) checks it first.

        Examples
        --------
        >>> import numpy as np
        >>> imgs = np.random.default_rng(0).random((40, 16, 16)).astype(np.float32)
        >>> imgs[:30] = 0.5                            # 30 of 40 patches blank
        >>> audit = DatasetAuditor(n_clusters=4, random_state=0)
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", AuditWarning)
        ...     audit = audit.fit(imgs)
        >>> print(audit.most_excluded_reason()[:60])
        DatasetAuditor: exclude_ removes 30 of 40 patches (75%), mor
        >>> audit.most_excluded_reason(limit=0.9) is None
        True
        """
        self._check_is_fitted()
        return _most_excluded_message(self.exclude_, self.flags(), self.exclude_checks, self.thresholds_,
                                      float(limit))

    def selection_diversity(self, indices: Any, embeddings: Any = None) -> dict:
        """Diversity of a selection: k-means cells hit, mass covered, effective clusters.

        With ``embeddings`` also the selection's mean pairwise cosine distance.
        """
        self._check_is_fitted()
        idx = np.asarray(indices, dtype=np.int64).ravel()
        labels = self.cluster_labels_
        hit = np.unique(labels[idx])
        out = {"selection_size": int(len(idx)), "selection_clusters_hit": int(len(hit)),
               "selection_mass_covered": float(np.isin(labels, hit).mean()),
               "selection_effective_n_clusters": _effective_number(np.bincount(labels[idx]))}
        if embeddings is not None:
            E = l2_normalize(check_embeddings(embeddings, name="embeddings"))
            out["selection_mean_cosine_distance"] = _mean_cos_distance(E[idx], 0)
        return out


class AuditWarning(UserWarning):
    """The audit would exclude more than half of a dataset; the message says why and what to do."""


def _most_excluded_message(exclude: np.ndarray, flags: dict, checks: Any, thresholds: dict,
                           limit: float = MOST_EXCLUDED) -> str | None:
    """Why ``exclude`` removes more than ``limit`` of the data, per check, and what to do; None if it does not.

    A selector given such an ``exclude_`` chooses from a small part of the dataset, which a
    person should decide knowingly, never discover later.
    """
    n = exclude.size
    if n == 0 or exclude.mean() <= limit:
        return None
    parts = []
    for c in checks:
        if c in flags and flags[c].any():
            thr = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in thresholds.get(c, {}).items())
            parts.append(f"{c}: {int(flags[c].sum())} ({100 * flags[c].mean():.0f}%{'; ' + thr if thr else ''})")
    hint = ("near-duplicates are joined in chains, so on smooth data (or embeddings dominated by one "
            "direction, such as brightness) most patches can link to one another: raise "
            "duplicate_threshold (e.g. 0.999) or leave 'duplicate' out of exclude_checks"
            if "duplicate" in checks and flags.get("duplicate", np.zeros(1, bool)).mean() > limit / 2
            else "relax the thresholds named above or pass fewer exclude_checks")
    return (f"DatasetAuditor: exclude_ removes {int(exclude.sum())} of {n} patches "
            f"({100 * exclude.mean():.0f}%), more than {100 * limit:.0f}% of the dataset. By check: "
            + "; ".join(parts) + f". A selector would choose from the remaining "
            f"{int(n - exclude.sum())} only. If that is not intended, {hint}.")


def _warn_if_most_excluded(exclude: np.ndarray, flags: dict, checks: Any, thresholds: dict,
                           limit: float = MOST_EXCLUDED) -> None:
    """An :class:`AuditWarning` with :func:`_most_excluded_message` when there is one."""
    msg = _most_excluded_message(exclude, flags, checks, thresholds, limit)
    if msg is not None:
        warnings.warn(msg, AuditWarning, stacklevel=3)
