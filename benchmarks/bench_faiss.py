"""kNN search: the library's default (torch, precision="auto") against faiss-cpu's exact
IndexFlatIP, at 50k x 256, k = 100. Interleaved runs, median of ``--repeats``; recall of each
against the fp32 torch search (exact) on 1000 query rows; load average before and after.

    python benchmarks/bench_faiss.py [--n 50000] [--dim 256] [--k 100] [--repeats 3]

Needs ``pip install 'biodatacentric[faiss]'``. Writes benchmarks/results/faiss.md
(``_common.write_result``) and prints the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from _common import write_result
from biodatacentric._utils import resolve_precision
from biodatacentric.assess.knn import knn_search, l2_normalize


def recall(idx: np.ndarray, ref: np.ndarray, rows: np.ndarray) -> float:
    hits = [len(set(idx[r].tolist()) & set(ref[r].tolist())) for r in rows]
    return float(np.sum(hits) / (len(rows) * ref.shape[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # clustered embeddings (like real patch embeddings), not isotropic noise
    centers = rng.normal(size=(200, args.dim))
    E = l2_normalize(centers[rng.integers(0, 200, args.n)] + 0.6 * rng.normal(size=(args.n, args.dim)))
    load_before = os.getloadavg()
    runs = {"torch-default": [], "torch-fp32": [], "faiss": []}
    results = {}
    for _ in range(args.repeats):
        for name in runs:
            t = time.perf_counter()
            if name == "faiss":
                res = knn_search_faiss(E, args.k)
            else:
                res = knn_search(E, args.k, precision="auto" if name == "torch-default" else "fp32",
                                 show_progress=False)
            runs[name].append(time.perf_counter() - t)
            results[name] = res[1]
    rows = np.random.default_rng(1).choice(args.n, 1000, replace=False)
    ref = results["torch-fp32"]
    out = {"n": args.n, "dim": args.dim, "k": args.k, "repeats": args.repeats,
           "default_precision": resolve_precision("auto", "cpu"),
           "loadavg_before": [round(v, 2) for v in load_before],
           "loadavg_after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
           "median_s": {k: round(statistics.median(v), 2) for k, v in runs.items()},
           "runs_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
           "recall_vs_fp32": {k: round(recall(results[k], ref, rows), 4) for k in runs}}
    print(json.dumps(out, indent=1))
    rows = "\n".join(f"| {k} | {out['median_s'][k]:.2f} | {', '.join(f'{x:.2f}' for x in out['runs_s'][k])} | "
                     f"{out['recall_vs_fp32'][k]:.4f} |" for k in runs)
    body = f"""
{args.n:,} clustered unit vectors of dimension {args.dim}, k = {args.k}, {args.repeats} interleaved repeats
(torch default precision on this machine: {out['default_precision']}); 1-minute load average
{out['loadavg_before'][0]:.2f} before, {out['loadavg_after'][0]:.2f} after, on {out['cpus']} cores.

| search | median s | runs (s) | recall@{args.k} vs torch fp32 (1,000 rows) |
|---|---|---|---|
{rows}
"""
    path = write_result("faiss", "kNN search: torch (library default) vs faiss-cpu", body,
                        " ".join(["python benchmarks/bench_faiss.py", *sys.argv[1:]]))
    print(f"wrote {path}")


if __name__ == "__main__":
    from biodatacentric.assess.knn import knn_search_faiss

    main()
