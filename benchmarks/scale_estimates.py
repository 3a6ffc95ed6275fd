"""Time and memory to expect at 1x, 10x and 100x the paper's dataset, from measured costs.

1x is the measured dry run (``results/scale.md``, written by ``bench_scale.py``); 10x and 100x
are extrapolated from its per-patch costs and from the measured 1,000,000-sample IVF K-cover run
(``results/kcover.md``, written by ``bench_kcover.py --part million`` or ``--part all``). Both
inputs are committed result files; nothing is read from ``_out/``. Writes
``results/scale_estimates.md``, which the scaling guide includes.

    python benchmarks/scale_estimates.py
"""

from __future__ import annotations

import re

from _common import RESULTS, write_result

EMBED_DIM = 64          # the dry run's embedding size (bench_scale.py)
STACK_VOXELS = 7 * 1024 * 1024


def _seconds(table: str, starts: str) -> float:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0].startswith(starts):
            return float(cells[1].replace(",", ""))
    raise SystemExit(f"results/scale.md has no row starting with {starts!r}; rerun bench_scale.py")


def _million(kcover: str) -> dict:
    """The 1,000,000-sample IVF run's figures from results/kcover.md."""
    mem = re.search(r"memory for `scale_estimates.py`: ([\d,]+) MB resident after generating the ([\d,]+) "
                    r"embeddings, ([\d,]+) MB at the peak; CPU time ([\d.]+) s", kcover)
    nnz = re.search(r"## N = 1,000,000.*?graph entries ([\d,]+)", kcover, re.S)
    if mem is None or nnz is None:
        raise SystemExit("results/kcover.md has no 1,000,000-sample memory line; rerun "
                         "python benchmarks/bench_kcover.py --part million")
    num = [float(g.replace(",", "")) for g in mem.groups()]
    return {"rss_after_data_mb": num[0], "n": int(num[1]), "peak_rss_mb": num[2], "cpu_s": num[3],
            "graph_nnz": int(nnz.group(1).replace(",", ""))}


def main() -> None:
    scale = (RESULTS / "scale.md").read_text(encoding="utf-8")
    million = _million((RESULTS / "kcover.md").read_text(encoding="utf-8"))
    stacks = int(re.search(r"(\d[\d,]*) synthetic stacks", scale).group(1).replace(",", ""))
    n1 = int(re.search(r"index ([\d,]+) patches", scale).group(1).replace(",", ""))
    rss1 = float(re.search(r"Peak RSS of the whole run: \*\*([\d,.]+) MB", scale).group(1).replace(",", ""))
    t_index, t_embed = _seconds(scale, "index"), _seconds(scale, "embed all")
    t_select = _seconds(scale, "KCoverSelector")
    # IVF K-cover: CPU time ~ N^1.5 (sqrt(N) cells); memory dominated by the sparse k-NN graph
    ivf_cpu, n_m = million["cpu_s"], million["n"]
    entries_per_sample = million["graph_nnz"] / n_m
    bytes_per_entry = (million["peak_rss_mb"] - million["rss_after_data_mb"]) * 2**20 / million["graph_nnz"]
    rows = [f"| 1x (measured) | {stacks:,} | {n1:,} | {stacks * STACK_VOXELS * 2 / 1e9:.0f} GB | {t_index:.1f} s | "
            f"{t_embed:,.0f} s | {t_select:.0f} s (exact k-NN) | {rss1 / 1024:.1f} GB |"]
    for f in (10, 100):
        n = n1 * f
        embed = t_embed * f
        select = ivf_cpu * (n / n_m) ** 1.5
        mem = n * (4 * EMBED_DIM + entries_per_sample * bytes_per_entry) / 1e9
        rows.append(f"| {f}x (estimate) | {stacks * f:,} | {n:,} | {stacks * f * STACK_VOXELS * 2 / 1e9:,.0f} GB | "
                    f"{t_index * f:.0f} s | {embed:,.0f} s ({embed / 3600:.1f} h) | ~{select:,.0f} s (IVF k-NN) | "
                    f"~{mem:.1f} GB |")
    body = f"""
1x is the measured dry run of `bench_scale.py`; **10x and 100x are estimates** computed by this
script from measured costs, not measurements.

| scale | stacks | patches | data (uint16) | index | embed, 2 cores | K-cover, K = 25 | peak memory |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

How the estimates are made (`N` = patches, `d` = {EMBED_DIM} embedding dimensions):

* index and embedding scale linearly with `N`: {1e6 * t_index / n1:.1f} µs per patch to index and
  {1e3 * t_embed / n1:.2f} ms per patch to read, normalise and embed on 2 cores (the dry run). The
  embeddings take `N × 4d` bytes.
* K-cover above 150,000 samples uses IVF k-NN search; its time is scaled from the measured
  1,000,000-sample run ({ivf_cpu:.0f} s of CPU time) as `t ≈ {ivf_cpu:.0f} s × (N / 10^6)^1.5`; its memory
  is dominated by the sparse k-NN graph, measured at {bytes_per_entry:.1f} bytes per entry and
  {entries_per_sample:.1f} entries per sample: `memory ≈ N × (4d + {entries_per_sample:.1f} × {bytes_per_entry:.1f})` bytes.
* with Dask, embedding time divides by the number of worker cores as long as the workers can
  read the files fast enough: `t ≈ {1e3 * t_embed / n1:.2f} ms × N × 2 / (cores in the cluster)`.
"""
    path = write_result("scale_estimates", "What to expect at 1x, 10x and 100x the paper's dataset", body,
                        "python benchmarks/scale_estimates.py")
    print(path.read_text())


if __name__ == "__main__":
    main()
