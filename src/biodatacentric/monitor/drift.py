"""Embedding drift: how far the patches of a new image lie from the training patches.

The score is a k-nearest-neighbour distance percentile. At fit time the k-th nearest
neighbour distance of (a sample of) the training embeddings to the other training
embeddings gives a reference distribution. A new image's patch embeddings get their own
k-th nearest neighbour distances to the training set; their median, placed in the
reference distribution, is the drift percentile: about 50 for an image like the training
data, near 100 for one unlike anything seen in training. Embeddings are L2-normalised, so
distances are monotone in cosine distance. Neighbour searches are chunked (never an
N x N matrix).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np

from .._params import Interval
from .._utils import check_random_state_int, unit_rows
from .._validation import check_embeddings
from ..base import BioEstimator, register_estimator

__all__ = ["EmbeddingDrift", "knn_distances", "drift_percentile"]


def knn_distances(queries: np.ndarray, database: np.ndarray, k: int, exclude_self: bool = False,
                  chunk: int = 2048) -> np.ndarray:
    """Euclidean distance of each query to its ``k``-th nearest database row (chunked).

    With ``exclude_self`` the queries are rows of the database and the zero self-distance
    is skipped (``queries[i]`` must equal ``database[i]``).

    Examples
    --------
    >>> import numpy as np
    >>> db = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> knn_distances(np.array([[0.0, 0.0]]), db, k=2).tolist()   # 2nd nearest; 1st is itself
    [1.0]
    >>> knn_distances(db, db, k=1, exclude_self=True).tolist()
    [1.0, 1.0, 2.0]
    """
    q = np.asarray(queries, dtype=np.float32)
    db = np.asarray(database, dtype=np.float32)
    kk = k + 1 if exclude_self else k
    if kk > len(db):
        raise ValueError(f"k={k} neighbours requested but the database holds {len(db)} rows; lower k")
    db_sq = np.einsum("ij,ij->i", db, db)
    out = np.empty(len(q), dtype=np.float64)
    for start in range(0, len(q), chunk):
        qq = q[start:start + chunk]
        d2 = np.einsum("ij,ij->i", qq, qq)[:, None] + db_sq[None, :] - 2.0 * (qq @ db.T)
        np.maximum(d2, 0.0, out=d2)
        if exclude_self:
            rows = np.arange(len(qq))
            d2[rows, start + rows] = np.inf
            part = np.partition(d2, k - 1, axis=1)[:, k - 1]
        else:
            part = np.partition(d2, kk - 1, axis=1)[:, kk - 1]
        out[start:start + len(qq)] = np.sqrt(part)
    return out


def reference_knn_distances(embeddings: np.ndarray, k: int, max_reference: int, seed: int) -> np.ndarray:
    """Sorted leave-one-out k-NN distances of (a sample of) L2-normalised ``embeddings``."""
    rng = np.random.default_rng(seed)
    n = len(embeddings)
    if n > max_reference:
        idx = np.sort(rng.choice(n, max_reference, replace=False))
        # the sampled rows come first so that exclude_self skips the right column
        order = np.concatenate([idx, np.setdiff1d(np.arange(n), idx)])
        dist = knn_distances(embeddings[idx], embeddings[order], k, exclude_self=True)
    else:
        dist = knn_distances(embeddings, embeddings, k, exclude_self=True)
    return np.sort(dist)


def drift_percentile(queries: np.ndarray, embeddings: np.ndarray, reference_distances: np.ndarray,
                     k: int) -> dict:
    """Drift of new patch embeddings ``queries`` against normalised training ``embeddings``.

    Returns a dict with ``percentile`` (0--100: share of the training k-NN distances below
    the median k-NN distance of the queries), ``median_distance``, ``distances`` and ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> train = np.abs(rng.normal(size=(200, 8)))
    >>> train /= np.linalg.norm(train, axis=1, keepdims=True)
    >>> ref = np.sort(knn_distances(train, train, 5, exclude_self=True))
    >>> far = drift_percentile(-np.abs(rng.normal(size=(20, 8))), train, ref, k=5)
    >>> far["percentile"], far["distances"].shape
    (100.0, (20,))
    """
    q = check_embeddings(queries, name="image embeddings")
    if q.shape[1] != embeddings.shape[1]:
        raise ValueError(f"image embeddings have {q.shape[1]} dimensions but the training "
                         f"embeddings have {embeddings.shape[1]}; use the same embedder")
    dist = knn_distances(unit_rows(q), embeddings, int(k))
    med = float(np.median(dist))
    pct = 100.0 * float(np.searchsorted(reference_distances, med, side="right")) / len(reference_distances)
    return {"percentile": pct, "median_distance": med, "distances": dist, "k": int(k)}


@register_estimator
class EmbeddingDrift(BioEstimator):
    """k-NN distance percentile of new patch embeddings against the training embeddings.

    Parameters
    ----------
    k : int
        Neighbour rank used as the distance (5 by default).
    max_reference : int
        At most this many training embeddings (a random sample) get their own k-NN
        distance to form the reference distribution; the search runs over all of them.
    random_state : int, optional
        Seed of that sample.

    Attributes
    ----------
    embeddings_ : ndarray (n, d)
        L2-normalised training embeddings.
    reference_distances_ : ndarray
        Sorted k-NN distances of the sampled training embeddings (leave-one-out).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> train = np.abs(rng.normal(size=(300, 8)))          # one orthant of the sphere
    >>> drift = EmbeddingDrift(k=5, random_state=0).fit(train)
    >>> near = drift.score(np.abs(rng.normal(size=(20, 8))))["percentile"]
    >>> far = drift.score(-np.abs(rng.normal(size=(20, 8))))["percentile"]
    >>> bool(near < 90 < far)
    True
    """

    _fitted_attribute = "embeddings_"
    _parameter_constraints: dict = {"k": [Interval(Integral, 1, None)],
                                    "max_reference": [Interval(Integral, 2, None)],
                                    "random_state": ["random_state"]}

    def __init__(self, k: int = 5, max_reference: int = 2000, random_state: int | None = None) -> None:
        self.k = k
        self.max_reference = max_reference
        self.random_state = random_state

    def fit(self, X: Any, y: None = None) -> "EmbeddingDrift":
        """Store the training embeddings ``X`` (n, d) and their k-NN distance distribution."""
        self._validate_params()
        emb = check_embeddings(X, name="training embeddings")
        if len(emb) < self.k + 1:
            raise ValueError(f"drift needs at least k + 1 = {self.k + 1} training embeddings, got {len(emb)}")
        emb = unit_rows(emb)
        self.reference_distances_ = reference_knn_distances(
            emb, int(self.k), int(self.max_reference), check_random_state_int(self.random_state))
        self.embeddings_ = emb
        return self

    def score(self, X: Any) -> dict:
        """Drift of a new image given its patch embeddings ``X`` (m, d).

        Returns
        -------
        dict with ``percentile`` (0--100, share of training k-NN distances below the
        median new distance), ``median_distance``, ``distances`` (per new patch) and ``k``.
        """
        self._check_is_fitted()
        return drift_percentile(X, self.embeddings_, self.reference_distances_, int(self.k))

