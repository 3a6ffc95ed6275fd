"""Chunked cosine similarity search: exact and approximate k-nearest-neighbour graphs.

Nothing here ever holds an ``N x N`` matrix: similarities are computed block by block with
torch matrix products (bf16 on hardware that runs it fast, then re-scored in fp32) and only
the ``n_neighbors`` largest entries of each row are kept.

* :func:`knn_search` -- exact search (every pair is scored, ``O(N^2 d)`` multiply-adds);
* :func:`ivf_knn_search` -- approximate search with an inverted file (spherical k-means cells,
  each cell searched against its ``n_probe`` nearest cells, ``O(N^2 d n_probe / n_cells)``);
* :func:`similarity_graph` -- the symmetric sparse graph ``W = max(S, S^T)`` (CSC) used by the
  facility-location selector: column ``j`` lists the samples ``i`` that ``j`` can cover.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .._utils import progress, resolve_device, resolve_precision, unit_rows

__all__ = ["l2_normalize", "knn_search", "ivf_knn_search", "spherical_kmeans", "similarity_graph",
           "best_similarity",
           "iter_similarity_blocks", "knn_recall", "knn_search_faiss", "faiss_available"]

# a similarity block never exceeds this many entries (32 M values: 64 MB bf16, 128 MB fp32)
_BLOCK_ELEMENTS = 1 << 25


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 - 1 else np.int64


def soft_whiten(X: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    """Centre embeddings and equalise their principal directions, softly (float32).

    Each principal component of variance ``lambda_k`` is scaled by
    ``1 / sqrt(lambda_k + mean(lambda))``: directions much stronger than the average one
    (typically overall brightness, which dominates mean-pooled image embeddings) end with
    variance near 1, directions weaker than average are damped rather than amplified, so
    noise is not blown up as in full whitening. Cosine similarity on the result compares
    patches by all their strong directions at once, not by the single strongest.

    The ``d x d`` covariance is accumulated in chunks of rows (never an ``N x N`` matrix).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 3)) * [100.0, 30.0, 1.0]   # one direction dominates
    >>> print(np.round(X.std(axis=0) / X.std(axis=0).max(), 2))
    [1.   0.29 0.01]
    >>> W = soft_whiten(X)
    >>> print(np.round(W.std(axis=0) / W.std(axis=0).max(), 2))  # strong ones closer, weak one damped
    [1.   0.51 0.02]
    """
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    if n < 2:
        return X - X.mean(axis=0, keepdims=True)
    mean = X.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), dtype=np.float64)
    for s in range(0, n, chunk_size):
        B = X[s:s + chunk_size].astype(np.float64) - mean
        cov += B.T @ B
    cov /= n - 1
    lam, V = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)
    scale = 1.0 / np.sqrt(lam + max(float(lam.mean()), 1e-12))
    P = ((V * scale) @ V.T).astype(np.float32)   # ZCA form: stays in the input's axes
    out = np.empty((n, d), dtype=np.float32)
    m32 = mean.astype(np.float32)
    for s in range(0, n, chunk_size):
        out[s:s + chunk_size] = (X[s:s + chunk_size] - m32) @ P
    return out


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero (similarity 0 to all).

    The norm is accumulated in float64 (``biodatacentric._utils.unit_rows``, the library's
    one L2 normalisation, with ``float64_norm=True``).

    Examples
    --------
    >>> import numpy as np
    >>> X = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    >>> print(X)
    [[0.6 0.8]
     [0.  0. ]]
    >>> str(X.dtype)
    'float32'
    """
    return unit_rows(X, float64_norm=True)


def _to_device(E: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(E) if not isinstance(E, torch.Tensor) else E
    return t.to(device=device, dtype=dtype)


def iter_similarity_blocks(E: np.ndarray, rows: int | None = None, device: str = "cpu",
                           precision: str = "fp32", desc: str = "",
                           show_progress: bool | None = None
                           ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, block)`` with ``block = E[start:start+rows] @ E.T``.

    The block is fp32, or bf16 when ``precision`` resolves to bf16.
    ``E`` must be L2-normalised. Blocks are sized to stay below ~256 MB.

    Examples
    --------
    >>> import numpy as np
    >>> E = l2_normalize(np.random.default_rng(0).normal(size=(100, 8)))
    >>> [(start, tuple(block.shape)) for start, block in iter_similarity_blocks(E, rows=40)]
    [(0, (40, 100)), (40, (40, 100)), (80, (20, 100))]
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    n = E.shape[0]
    if rows is None:
        rows = max(1, min(4096, _BLOCK_ELEMENTS // max(n, 1)))
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    Et = _to_device(E, dev, dtype)
    for start in progress(range(0, n, rows), desc=desc, total=math.ceil(n / rows), enabled=show_progress):
        q = Et[start:start + rows]
        with torch.no_grad():
            block = q @ Et.T
        yield start, block


def knn_search(E: np.ndarray, n_neighbors: int, *, device: str = "cpu", precision: str = "auto",
               chunk_size: int | None = None, show_progress: bool | None = None, backend: str = "torch"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours of every row of ``E`` (self included), chunked.

    One matrix product per row chunk, then ``torch.topk``. With ``precision="bf16"`` (the
    "auto" choice on CPUs with AMX/AVX512-BF16 and recent GPUs; about 4x faster on CPU) the
    products are computed from bf16 inputs and rounded to bf16 (relative error <= 2^-9,
    about 0.002 on a similarity of 0.7), so neighbours whose similarities differ by less
    than that may swap places at the boundary of the list; ``"fp32"`` is exact.

    Parameters
    ----------
    E : ndarray of shape (n, d)
        L2-normalised float32 embeddings.
    n_neighbors : int
        Neighbours per row (including the row itself), at most ``n``.
    device, precision : str
        Torch device and matmul precision ("auto", "bf16", "fp32").
    chunk_size : int, optional
        Rows per block; by default blocks hold at most ~32 M similarities.
    backend : {"torch", "faiss"}
        ``"faiss"`` runs :func:`knn_search_faiss` instead (exact, fp32; needs the ``faiss``
        extra; ``device`` and ``precision`` are then ignored). The default stays ``"torch"``
        whether or not faiss is installed: measured at 50k x 256, k = 100 on the project's
        2-core machine, faiss was exact but not reliably faster than the bf16 default (see
        the benchmarks page).

    Returns
    -------
    sims : ndarray (n, n_neighbors) float32
        Cosine similarities, decreasing along each row.
    indices : ndarray (n, n_neighbors)
        int32 (int64 beyond 2**31 samples).

    Examples
    --------
    >>> import numpy as np
    >>> E = l2_normalize(np.random.default_rng(0).normal(size=(50, 8)))
    >>> s, i = knn_search(E, 3, precision="fp32")
    >>> bool(np.all(i[:, 0] == np.arange(50)))
    True
    """
    if backend == "faiss":
        return knn_search_faiss(E, n_neighbors, chunk_size=chunk_size or 16384, show_progress=show_progress)
    if backend != "torch":
        raise ValueError(f"backend={backend!r} is not one of 'torch', 'faiss'")
    n = E.shape[0]
    m = int(min(n_neighbors, n))
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    sims = np.empty((n, m), dtype=np.float32)
    idx = np.empty((n, m), dtype=_index_dtype(n))
    for start, block in iter_similarity_blocks(E, chunk_size, device=str(dev), precision=prec,
                                               desc="kNN graph", show_progress=show_progress):
        r = block.shape[0]
        s, c = torch.topk(block, m, dim=1, sorted=True)
        del block
        sims[start:start + r] = s.float().cpu().numpy()
        idx[start:start + r] = c.cpu().numpy()
    return sims, idx


def spherical_kmeans(E: np.ndarray | torch.Tensor, n_clusters: int, n_iter: int = 10, seed: int = 0,
                     precision: str = "fp32", sample: int | None = None,
                     device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (cosine) on L2-normalised rows; returns ``(centers, labels)``.

    Fitted on a random subsample of ``sample`` rows (all rows if None), then every row is
    assigned to its most similar centre. Empty cells are re-seeded with random samples.
    Deterministic for a given ``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.repeat(np.eye(3, 8) * 5, 20, axis=0) + np.random.default_rng(0).normal(size=(60, 8))
    >>> centers, labels = spherical_kmeans(l2_normalize(X), 3, seed=0)
    >>> centers.shape, np.bincount(labels).tolist()   # three clusters of 20 recovered
    ((3, 8), [20, 20, 20])
    """
    dev = resolve_device(device)
    dtype = torch.bfloat16 if resolve_precision(precision, dev) == "bf16" else torch.float32
    Et = _to_device(E, dev, torch.float32)
    n = Et.shape[0]
    k = int(min(n_clusters, n))
    rng = np.random.default_rng(seed)
    sub_idx = np.sort(rng.choice(n, size=min(n, sample or n), replace=False))
    sub = Et[torch.as_tensor(sub_idx, device=dev)]
    centers = sub[torch.as_tensor(rng.choice(sub.shape[0], size=k, replace=False), device=dev)].clone()

    def assign(X: torch.Tensor) -> np.ndarray:
        out = np.empty(X.shape[0], dtype=np.int64)
        c = centers.to(dtype)
        for s in range(0, X.shape[0], 32768):
            out[s:s + 32768] = (X[s:s + 32768].to(dtype) @ c.T).argmax(1).cpu().numpy()
        return out

    sub_np = sub.cpu().numpy()
    for _ in range(n_iter):
        lab = assign(sub)
        onehot = sp.csr_matrix((np.ones(len(lab), dtype=np.float32), (lab, np.arange(len(lab)))),
                               shape=(k, len(lab)))
        new = np.asarray(onehot @ sub_np)
        empty = np.bincount(lab, minlength=k) == 0
        if empty.any():
            new[empty] = sub_np[rng.choice(len(sub_np), size=int(empty.sum()), replace=False)]
        centers = torch.as_tensor(unit_rows(new), device=dev)
    return centers.cpu().numpy(), assign(Et)


def ivf_knn_search(E: np.ndarray, n_neighbors: int, *, n_cells: int | None = None, n_probe: int = 8,
                   device: str = "cpu", precision: str = "auto", random_state: int = 0,
                   show_progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate cosine kNN with an inverted file (IVF) of spherical k-means cells.

    Every sample is assigned to its nearest of ``n_cells`` centroids (k-means on a
    subsample); the queries of a cell are compared exactly with all members of the
    ``n_probe`` cells whose centroids are nearest to that cell's centroid. A true neighbour
    is missed only if it lies outside those cells, so recall rises with ``n_probe``
    (measure it with :func:`knn_recall`). Cost ``~ N^2 d n_probe / n_cells``. Recall is
    high inside dense clusters; where a sample has no close neighbours its "true" list is
    nearly arbitrary and recall drops, but the neighbours found are almost as similar as the
    missed ones, which is what the facility-location gains need.

    Returns ``(sims, indices)`` as :func:`knn_search`. When the probed cells of a cell hold
    fewer than ``n_neighbors`` samples the probe is widened until they do.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.repeat(np.eye(4, 16) * 5, 100, axis=0) + np.random.default_rng(0).normal(size=(400, 16))
    >>> E = l2_normalize(X)
    >>> sims, idx = ivf_knn_search(E, 10, n_cells=8, n_probe=2, precision="fp32")
    >>> sims.shape, bool(knn_recall(E, idx, n_queries=100) > 0.9)
    ((400, 10), True)
    """
    n = E.shape[0]
    m = int(min(n_neighbors, n))
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    if n_cells is None:
        n_cells = int(max(1, round(math.sqrt(n))))
    n_cells = int(min(n_cells, n))
    centers_np, assign_np = spherical_kmeans(E, n_cells, n_iter=10, seed=random_state, precision=prec,
                                             sample=max(50 * n_cells, 20000), device=str(dev))
    centers = torch.as_tensor(centers_np, device=dev)
    assign = torch.as_tensor(assign_np, device=dev)
    Ec = _to_device(E, dev, dtype)
    counts = torch.bincount(assign, minlength=n_cells)
    order = torch.argsort(assign, stable=True)
    offsets = torch.zeros(n_cells + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(counts, 0)
    cc = (centers @ centers.T)
    probe_order = torch.argsort(-cc, dim=1, stable=True)
    fetch = m
    sims = np.empty((n, m), dtype=np.float32)
    idx = np.empty((n, m), dtype=_index_dtype(n))
    counts_np = counts.cpu().numpy()
    for c in progress(range(n_cells), desc="IVF kNN", total=n_cells, enabled=show_progress):
        if counts_np[c] == 0:
            continue
        queries = order[offsets[c]:offsets[c + 1]]
        # widen the probe until the candidate pool holds enough samples
        k_probe, pool = n_probe, 0
        cells = probe_order[c, :k_probe]
        pool = int(counts[cells].sum())
        while pool < fetch and k_probe < n_cells:
            k_probe = min(n_cells, 2 * k_probe)
            cells = probe_order[c, :k_probe]
            pool = int(counts[cells].sum())
        cand_all = torch.cat([order[offsets[q]:offsets[q + 1]] for q in cells.tolist()])
        f = min(fetch, cand_all.numel())
        cand_mat = Ec[cand_all]
        rows_per = max(1, _BLOCK_ELEMENTS // max(cand_all.numel(), 1))
        for s in range(0, queries.numel(), rows_per):
            q = queries[s:s + rows_per]
            with torch.no_grad():
                block = Ec[q] @ cand_mat.T
            sv, loc = torch.topk(block, f, dim=1, sorted=True)
            qn = q.cpu().numpy()
            sims[qn, :f] = sv.float().cpu().numpy()
            idx[qn, :f] = cand_all[loc].cpu().numpy()
    return sims, idx


def knn_recall(E: np.ndarray, indices: np.ndarray, n_queries: int = 1000, random_state: int = 0,
               device: str = "cpu") -> float:
    """Fraction of the true ``k`` nearest neighbours found in ``indices``, on random queries.

    ``k = indices.shape[1]``; the truth is computed exactly in fp32 for ``n_queries`` rows.

    Examples
    --------
    >>> import numpy as np
    >>> E = l2_normalize(np.random.default_rng(0).normal(size=(100, 8)))
    >>> _, idx = knn_search(E, 5, precision="fp32")
    >>> knn_recall(E, idx, n_queries=50)   # exact lists: every true neighbour found
    1.0
    """
    n, k = indices.shape
    rng = np.random.default_rng(random_state)
    q = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    dev = resolve_device(device)
    E32 = _to_device(E, dev, torch.float32)
    truth = []
    for s in range(0, len(q), 256):
        block = E32[torch.as_tensor(q[s:s + 256], device=dev)] @ E32.T
        truth.append(torch.topk(block, k, dim=1).indices.cpu().numpy())
    truth = np.concatenate(truth)
    hits = sum(len(np.intersect1d(truth[r], indices[qi])) for r, qi in enumerate(q))
    return hits / float(truth.size)


def similarity_graph(sims: np.ndarray, indices: np.ndarray, n: int) -> sp.csc_matrix:
    """Symmetric sparse similarity graph ``W = max(S, S^T)`` from kNN lists (CSC, float32).

    ``S`` holds each row's kNN similarities (one entry per listed neighbour, indices within
    a row distinct). Column ``j`` of ``W`` lists the samples ``i`` that have ``j`` among their
    neighbours or are among ``j``'s. Memory: the two CSR/CSC views share the kNN arrays; the
    result has at most ``2 n m`` entries.

    Examples
    --------
    >>> import numpy as np
    >>> E = l2_normalize(np.random.default_rng(0).normal(size=(50, 8)))
    >>> sims, idx = knn_search(E, 4, precision="fp32")
    >>> W = similarity_graph(sims, idx, 50)
    >>> W.shape, W.format, (W != W.T).nnz   # symmetric
    ((50, 50), 'csc', 0)
    """
    m = indices.shape[1]
    itype = _index_dtype(n)
    indptr = np.arange(0, n * m + 1, m, dtype=np.int64 if n * m >= 2**31 - 1 else np.int32)
    data = np.array(sims, dtype=np.float32).ravel()  # own copy: shifted in place below
    ind = np.ascontiguousarray(indices, dtype=itype).ravel()
    # max(S, S^T) treats missing entries as 0; shift values to be positive so negative
    # similarities survive, take the maximum, shift back.
    shift = np.float32(2.0)
    data += shift
    S_T = sp.csc_matrix((data, ind, indptr), shape=(n, n))   # same arrays read as CSC = S^T
    S = sp.csr_matrix((data, ind, indptr), shape=(n, n)).tocsc()
    W = S.maximum(S_T)
    del S, S_T
    W = W.tocsc()
    W.data -= shift
    W.sort_indices()
    return W


def best_similarity(E: np.ndarray, picks: np.ndarray, *, device: str = "cpu",
                    chunk_rows: int = 65536) -> np.ndarray:
    """For every row of ``E`` the largest cosine similarity to ``E[picks]`` (fp32, exact).

    ``O(N * K * d)`` work, memory ``O(chunk_rows * K)``; returns -inf for every row if
    ``picks`` is empty.

    Examples
    --------
    >>> import numpy as np
    >>> E = l2_normalize(np.random.default_rng(0).normal(size=(50, 8)))
    >>> best = best_similarity(E, [0, 7])
    >>> best.shape, round(float(best[7]), 3), bool(np.all(best >= E @ E[0] - 1e-6))
    ((50,), 1.0, True)
    """
    n = E.shape[0]
    picks = np.asarray(picks, dtype=np.int64)
    out = np.full(n, -np.inf, dtype=np.float32)
    if picks.size == 0:
        return out
    dev = resolve_device(device)
    P = _to_device(E[picks], dev, torch.float32)
    for s in range(0, n, chunk_rows):
        blk = _to_device(E[s:s + chunk_rows], dev, torch.float32) @ P.T
        out[s:s + chunk_rows] = blk.max(dim=1).values.cpu().numpy()
    return out



def faiss_available() -> bool:
    """Whether the optional faiss backend can be used (``pip install 'biodatacentric[faiss]'``)."""
    return importlib.util.find_spec("faiss") is not None


def knn_search_faiss(E: np.ndarray, n_neighbors: int, *, chunk_size: int = 16384,
                     show_progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours with faiss-cpu's ``IndexFlatIP`` (optional backend).

    Same contract as :func:`knn_search` (self included, similarities decreasing along each
    row), computed exactly in fp32 by faiss's blocked inner-product search. Needs the
    ``faiss`` extra (``pip install 'biodatacentric[faiss]'``); without it an ``ImportError``
    says so. Ties between equal similarities may be ordered differently from
    :func:`knn_search`.

    Parameters
    ----------
    E : ndarray of shape (n, d)
        L2-normalised float32 embeddings.
    n_neighbors : int
        Neighbours per row (including the row itself), at most ``n``.
    chunk_size : int
        Query rows per faiss call (bounds the ``chunk_size x n_neighbors`` result buffers and
        lets the progress bar advance).

    Returns
    -------
    sims : ndarray (n, n_neighbors) float32
    indices : ndarray (n, n_neighbors)
        int32 (int64 beyond 2**31 samples).

    Examples
    --------
    >>> import numpy as np
    >>> E = l2_normalize(np.random.default_rng(0).normal(size=(50, 8)))
    >>> if faiss_available():
    ...     s, i = knn_search_faiss(E, 3)
    ... else:
    ...     s, i = knn_search(E, 3, precision="fp32")
    >>> bool(np.all(i[:, 0] == np.arange(50)))
    True
    """
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("knn_search_faiss needs faiss-cpu: pip install 'biodatacentric[faiss]' "
                          "(or use knn_search, which needs nothing more)") from exc
    X = np.ascontiguousarray(E, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"E must be a 2-D array (n, d), got shape {X.shape}")
    n = X.shape[0]
    m = int(min(n_neighbors, n))
    if m < 1:
        raise ValueError(f"n_neighbors={n_neighbors} must be at least 1")
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    sims = np.empty((n, m), dtype=np.float32)
    idx = np.empty((n, m), dtype=_index_dtype(n))
    starts = range(0, n, int(chunk_size))
    for start in progress(starts, desc="kNN graph (faiss)", enabled=show_progress, total=len(starts)):
        s, c = index.search(X[start:start + chunk_size], m)
        sims[start:start + len(s)] = s
        idx[start:start + len(s)] = c
    return sims, idx
