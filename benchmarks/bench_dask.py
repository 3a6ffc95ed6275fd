"""Dask data-parallel embedding: 1 worker vs 2 workers on this machine, side by side.

A small MAE is fitted once; then the same Patches (224x224 from synthetic 7x1024x1024 stacks)
are embedded (1) in this process, (2) on a LocalCluster with 1 worker, (3) with 2 workers,
each worker single-threaded. Embeddings must be identical. Writes benchmarks/results/dask.md.

    python benchmarks/bench_dask.py [--stacks 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from _common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stacks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from distributed import Client, LocalCluster

    from biodatacentric import MAEPretrainer, Patches, make_vessels
    from biodatacentric.parallel import map_patches

    vols = [make_vessels((2, 1024, 1024), dtype="uint16", random_state=i)[0] for i in range(args.stacks)]
    patches = Patches.from_arrays(vols, axes="ZYX", patch_shape=(224, 224))
    mae = MAEPretrainer(preset="small", embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=64,
                        decoder_depth=1, decoder_num_heads=4, max_epochs=1, batch_size=32,
                        n_components=64, precision="fp32", random_state=0, progress=False)
    mae.fit(patches[:64])
    n = len(patches)
    torch.set_num_threads(1)
    times = {"in-process, 1 thread": [], "in-process, 2 threads": [], "Dask, 1 worker x 1 thread": [],
             "Dask, 2 workers x 1 thread": []}
    ref = None
    for _ in range(args.repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            out = mae.transform(patches)
            times[f"in-process, {threads} thread{'s' if threads > 1 else ''}"].append(time.perf_counter() - t0)
            ref = out if ref is None else ref
    identical = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
            map_patches(mae.transform, patches[:8], client=client)  # warm-up: ship the model, import torch
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = map_patches(mae.transform, patches, client=client, chunk_size=64)
                times[f"Dask, {workers} worker{'s' if workers > 1 else ''} x 1 thread"].append(time.perf_counter() - t0)
            identical[workers] = f"{bool(np.array_equal(out, ref))} (max |diff| {float(np.abs(out - ref).max()):.1e})"
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = "\n".join(f"| {k} | {v:.2f} | {n / v:,.0f} |" for k, v in med.items())
    ratio = med["Dask, 1 worker x 1 thread"] / med["Dask, 2 workers x 1 thread"]
    body = f"""
Embedding {n} patches of 224x224 (from {args.stacks} synthetic 2x1024x1024 stacks) with a small
MAE encoder (ViT patch 16, width 128, depth 4, fp32), median of {args.repeats} runs each:

| how | seconds | patches/s |
|---|---|---|
{rows}

Speed-up 2 workers / 1 worker: **{ratio:.2f}x** (2 cores). Embeddings identical to the
in-process run: 1 worker {identical[1]}, 2 workers {identical[2]}. The model is shipped to each
worker once (`client.scatter(..., broadcast=True)`); chunks of 64 patches stay within one source.
"""
    path = write_result("dask", "Dask: embedding throughput with 1 and 2 workers", body,
                        f"python benchmarks/bench_dask.py --stacks {args.stacks}")
    print(path.read_text())


if __name__ == "__main__":
    main()
