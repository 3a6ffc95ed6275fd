"""The one greedy cover engine: facility location, threshold cover and k-center on cosine
similarities (exact best similarity per sample, lazy gains, sparse kNN graph or streamed dense
blocks). :class:`KCoverSelector` and :class:`KCenterSelector` are front ends on this solver,
and so is the diversity rule of :meth:`MCDropoutHunter.select
<biodatacentric.hunt.MCDropoutHunter.select>` (:func:`greedy_facility_location`)."""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import torch

from .._utils import progress


def _chordal(best_sim: np.ndarray) -> np.ndarray:
    """Chordal (Euclidean on the unit sphere) distance from a cosine similarity."""
    with np.errstate(invalid="ignore"):
        d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * best_sim.astype(np.float64)))
    return np.where(np.isneginf(best_sim), np.inf, d)


class _CoverSolver:
    """State of one greedy run: exact best similarity of every sample to the picks so far.

    * facility location / threshold cover: gains of candidate ``j`` are
      ``sum_i w_i max(0, v(s_ij) - v(c_i))`` (``w_i = 1`` unless weights are given) with
      ``v(s) = max(0, s)`` (``"facility_location"``), ``v(s) = (1 + s) / 2``
      (``"facility_location_shifted"``: cosine mapped to [0, 1], as in Suggestive Annotation; a
      sample not yet covered has ``v = 0``) or ``1[s >= tau]``, and ``c`` the exact best
      similarity. In sparse mode the sum runs over ``j``'s column of the kNN graph; in dense
      mode over all samples, streamed in blocks.
    * k-center: farthest-first on the chordal distance, ``O(N d)`` per pick.
    """

    def __init__(self, E: np.ndarray, objective: str, tau: float | None, graph: Any,
                 excluded: np.ndarray, device: torch.device, lazy: bool,
                 weights: np.ndarray | None = None) -> None:
        self.E = E
        # per-sample weights of the covering objectives (None: every sample counts once)
        self.w = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.Et = torch.as_tensor(E).to(device)
        self.device = device
        self.objective = objective
        self.tau = tau
        self.graph = graph
        self.lazy = lazy
        self.n = E.shape[0]
        self.excluded = excluded.copy()
        self.taken = np.zeros(self.n, dtype=bool)
        self.best = np.full(self.n, -np.inf, dtype=np.float32)
        self.cv = np.zeros(self.n, dtype=np.float32)
        self.version = 0
        self.heap: list | None = None
        self.stamp: np.ndarray | None = None
        self.n_evaluations = 0
        if graph is not None:
            if objective == "facility_location":
                self.gdata = np.maximum(graph.data, 0).astype(np.float32)
            elif objective == "facility_location_shifted":
                self.gdata = self._value(graph.data)
            else:
                self.gdata = (graph.data >= tau).astype(np.float32)

    # ---------------------------------------------------------------- values
    def _value(self, s: np.ndarray) -> np.ndarray:
        if self.objective == "threshold_cover":
            return (s >= self.tau).astype(np.float32)
        if self.objective == "facility_location_shifted":
            return np.maximum((1.0 + s) / 2.0, 0).astype(np.float32)   # -inf (not covered) -> 0
        return np.maximum(s, 0).astype(np.float32)

    def objective_value(self) -> float:
        if self.objective == "k_center":
            return float(_chordal(self.best).max())
        if self.w is not None:
            return float(np.dot(self.w.astype(np.float64), self.cv.astype(np.float64)))
        return float(self.cv.sum(dtype=np.float64))

    def add(self, j: int, record: bool = True) -> None:
        with torch.no_grad():
            s = (self.Et @ self.Et[j]).cpu().numpy()
        np.maximum(self.best, s, out=self.best)
        self.cv = self._value(self.best)
        if record:
            self.taken[j] = True
        self.excluded[j] = True
        self.version += 1

    # ---------------------------------------------------------------- gains
    def gains(self, cols: np.ndarray) -> np.ndarray:
        """Current gains of the candidates ``cols`` (float64)."""
        self.n_evaluations += len(cols)
        if self.graph is not None:
            return self._sparse_gains(cols)
        return self._dense_gains(cols)

    def _sparse_gains(self, cols: np.ndarray) -> np.ndarray:
        indptr = self.graph.indptr
        if len(cols) == 1:
            j = int(cols[0])
            return np.array([self._segment_sums(int(indptr[j]), int(indptr[j + 1]),
                                                np.zeros(1, dtype=np.int64))[0]])
        out = np.empty(len(cols), dtype=np.float64)
        # contiguous runs of columns, at most ~4 M graph entries at a time (bounded memory)
        c = np.asarray(cols, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(c) != 1) + 1
        for run in np.split(np.arange(len(c)), breaks):
            a = 0
            while a < len(run):
                j0 = int(c[run[a]])
                lim = indptr[j0] + (1 << 22)
                b = a + max(1, int(np.searchsorted(indptr[j0 + 1:j0 + 1 + len(run) - a], lim, side="right")))
                b = min(b, len(run))
                j1 = int(c[run[b - 1]]) + 1
                starts = indptr[j0:j1] - indptr[j0]
                out[run[a:b]] = self._segment_sums(int(indptr[j0]), int(indptr[j1]), starts)
                a = b
        return out

    def _segment_sums(self, p0: int, p1: int, starts: np.ndarray) -> np.ndarray:
        """Per column: sum of max(0, v(W_ij) - c_i) over the graph entries ``p0:p1``."""
        vals = self.gdata[p0:p1].astype(np.float64)
        rows = self.graph.indices[p0:p1]
        vals -= self.cv[rows]
        np.maximum(vals, 0.0, out=vals)
        if self.w is not None:
            vals *= self.w[rows]
        vals = np.append(vals, 0.0)  # reduceat needs valid start positions for empty columns
        out = np.add.reduceat(vals, starts)
        lens = np.diff(np.append(starts, p1 - p0))
        out[lens == 0] = 0.0
        return out

    def _dense_gains(self, cols: np.ndarray) -> np.ndarray:
        out = np.zeros(len(cols), dtype=np.float64)
        cv = torch.as_tensor(self.cv).to(self.device)
        w = None if self.w is None else torch.as_tensor(self.w).to(self.device)
        col_block = 1024
        rows = max(1024, (1 << 24) // col_block)
        blocks = range(0, len(cols), col_block)
        with torch.no_grad():
            for c0 in progress(blocks, desc="dense gains", total=len(blocks),
                               enabled=None if len(cols) > 8 * col_block else False):
                J = self.Et[torch.as_tensor(cols[c0:c0 + col_block], device=self.device)]
                acc = torch.zeros(J.shape[0], dtype=torch.float64, device=self.device)
                for r0 in range(0, self.n, rows):
                    S = self.Et[r0:r0 + rows] @ J.T
                    if self.objective == "threshold_cover":
                        V = (S >= self.tau).float()
                    elif self.objective == "facility_location_shifted":
                        V = (1.0 + S) / 2.0
                    else:
                        V = S.clamp_min(0)
                    G = (V - cv[r0:r0 + rows, None]).clamp_min(0)
                    if w is not None:
                        G = G * w[r0:r0 + rows, None]
                    acc += G.sum(0, dtype=torch.float64)
                out[c0:c0 + col_block] = acc.cpu().numpy()
        return out

    # ---------------------------------------------------------------- steps
    def _candidates(self) -> np.ndarray:
        return np.flatnonzero(~self.excluded)

    def step(self, rng: np.random.Generator, init: str, n_init_random: int, remaining: int) -> int:
        """Pick the next sample and update the coverage; returns its index."""
        if self.objective == "k_center":
            j = self._kcenter_pick(rng, init, n_init_random, remaining)
        elif not self.lazy:
            cand = self._candidates()
            g = self.gains(cand)
            j = int(cand[int(np.argmax(g))])  # argmax: first maximum = smallest index
        else:
            j = self._lazy_pick()
        self.add(j)
        return j

    def _lazy_pick(self) -> int:
        if self.heap is None or self.stamp is None:
            cand = self._candidates()
            g = self.gains(cand)
            self.heap = [(-float(v), int(j)) for v, j in zip(g, cand)]
            heapq.heapify(self.heap)
            self.stamp = np.full(self.n, -1, dtype=np.int64)
            self.stamp[cand] = self.version
        while True:
            _, j = heapq.heappop(self.heap)
            if self.excluded[j]:
                continue
            if self.stamp[j] == self.version:  # fresh, and every other key is an upper bound
                return j
            g = float(self.gains(np.array([j]))[0])
            self.stamp[j] = self.version
            heapq.heappush(self.heap, (-g, j))

    def _kcenter_pick(self, rng: np.random.Generator, init: str, n_init_random: int,
                      remaining: int) -> int:
        cand = self._candidates()
        if np.all(np.isneginf(self.best)):  # nothing covered yet: seed
            if init == "random":
                k = min(n_init_random, remaining, len(cand))
                self.pending = [int(v) for v in rng.choice(cand, size=k, replace=False)]
            else:
                mean = self.E.mean(axis=0, dtype=np.float64).astype(np.float32)
                return int(cand[int(np.argmax(self.E[cand] @ mean))])
        if getattr(self, "pending", None):
            return self.pending.pop(0)
        b = self.best[cand]
        return int(cand[int(np.argmin(b))])  # farthest = smallest best similarity; ties by index


def greedy_facility_location(unit: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``candidates`` (row positions of ``unit``, best first) picked greedily by facility
    location over all rows of ``unit`` (L2-normalised embeddings), with the similarity
    ``(1 + cos) / 2``; equal gains go to the earlier candidate (gains that are equal only
    mathematically, e.g. of two uncovered candidates nearest to each other, are told apart
    by the rounding of their sums). Returns positions into ``unit``.

    Examples
    --------
    >>> E = np.array([[1, 0], [0.9, 0.44], [0, 1], [-1, 0]], dtype=np.float32)
    >>> E /= np.linalg.norm(E, axis=1, keepdims=True)
    >>> greedy_facility_location(E, np.array([1, 0, 2]), 2).tolist()
    [1, 2]
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(unit)), candidates)
    rows = np.concatenate([candidates, rest])          # candidates first, in their order
    excluded = np.ones(len(rows), dtype=bool)
    excluded[:len(candidates)] = False
    solver = _CoverSolver(np.ascontiguousarray(unit[rows]), "facility_location_shifted", None, None,
                          excluded, torch.device("cpu"), lazy=False)
    rng = np.random.default_rng(0)                      # unused by facility location
    return np.asarray([int(rows[solver.step(rng, "medoid", 0, n - i)]) for i in range(n)], dtype=np.int64)
