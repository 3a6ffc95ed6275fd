"""Benchmarks of stage 2 (KCoverSelector, baselines, DatasetAuditor).

Every number in ``benchmarks/results/kcover.md`` is computed here. Parts (run one or all):

* ``scale``       N = 90,860, d = 256, K = 25: time and peak RSS, one fresh subprocess per
                  configuration (exact kNN and IVF kNN; clustered and uniform embeddings);
* ``million``     N = 1,000,000, d = 256, K = 25 with the IVF kNN graph (+ kNN recall);
* ``correctness`` N = 10,000: sparse lazy vs exact dense objective, lazy vs plain picks,
                  greedy vs random on every seed, k-center radius vs brute force;
* ``paper``       N = 20,000: the paper code's full-matrix k-center vs ours, side by side;
* ``real``        vesselnn_2pm 128 x 128 patches: K-cover vs random vs k-center, montages
                  (embeddings: the benchmark MAE, pretrained in this run by ``_common.vesselnn_mae``,
                  about 5 minutes; ``--encoder stand-in`` for block means without an MAE).

``results/kcover.md`` is written (``_common.write_result``) after every part, one section per
part, each stamped with its own date, machine, load and command: ``--part all`` (every part, the
million included) re-measures the whole file from a fresh clone; ``--part million`` (or any
list of parts) replaces those parts' sections and keeps the other sections of the committed
``results/kcover.md`` as they are. The JSON under ``_out/`` is a raw record that no run reads
back. Data: ``BIODATACENTRIC_DATA`` (see ``_common.py``).

Usage::

    python benchmarks/bench_kcover.py --part scale
    python benchmarks/bench_kcover.py --part million            # about 12 minutes on 2 cores
    python benchmarks/bench_kcover.py --part scale paper
    python benchmarks/bench_kcover.py --part all

Synthetic embeddings are a Gaussian mixture on the sphere (1,000 components with
Dirichlet(0.5) weights, within-component cosine about 0.5), generated in chunks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, VESSELNN, vesselnn_mae  # noqa: E402
from _sections import stamp, write_sections  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = VESSELNN  # BIODATACENTRIC_DATA, see _common.py
K = 25


# ---------------------------------------------------------------------- helpers
def mixture(n: int, d: int = 256, n_clusters: int = 1000, seed: int = 0, kind: str = "clustered"
            ) -> np.ndarray:
    """Clustered (Gaussian mixture on the sphere) or uniform embeddings, float32, chunked."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), dtype=np.float32)
    if kind == "uniform":
        for s in range(0, n, 100_000):
            X[s:s + 100_000] = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
        return X
    C = rng.standard_normal((n_clusters, d), dtype=np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    w = rng.dirichlet(np.full(n_clusters, 0.5))
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        lab = rng.choice(n_clusters, size=m, p=w)
        X[s:s + m] = C[lab] + rng.standard_normal((m, d), dtype=np.float32) / np.float32(np.sqrt(d))
    return X


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loadavg() -> float:
    return float(os.getloadavg()[0])


#: the parts measured in this run (the report is built from these, never from earlier runs' files)
MEASURED: dict[str, dict] = {}


def save(name: str, obj: dict) -> None:
    MEASURED[name] = obj
    OUT.mkdir(parents=True, exist_ok=True)
    obj["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "loadavg_1min_at_end": loadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    (OUT / f"kcover_{name}.json").write_text(json.dumps(obj, indent=2), encoding="utf-8")
    print(json.dumps(obj, indent=2))


def run_child(args: list[str], timeout: int = 3600) -> dict:
    """Run this script as a fresh process (for a clean peak-RSS reading); parse its JSON."""
    env = dict(os.environ, BIODATACENTRIC_PROGRESS="0")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True,
                         text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- children
def child_fit(n: int, knn: str, kind: str, n_neighbors: int, recall: bool) -> None:
    """One timed KCoverSelector fit in this (fresh) process; prints one JSON line."""
    import torch

    from biodatacentric.assess import KCoverSelector
    from biodatacentric.assess.knn import ivf_knn_search, knn_recall, l2_normalize

    X = mixture(n, kind=kind)
    rss_data = peak_rss_mb()
    t0, c0, l0 = time.perf_counter(), time.process_time(), loadavg()
    sel = KCoverSelector(n_select=K, n_neighbors=n_neighbors, knn=knn, random_state=0).fit(X)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = {"n": n, "d": int(X.shape[1]), "k": K, "knn": sel.knn_method_, "kind": kind,
           "n_neighbors": n_neighbors, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(),
           "rss_after_data_mb": rss_data, "objective": sel.objective_value_,
           "mean_coverage": float(sel.coverage_.mean()), "graph_nnz": sel.graph_nnz_,
           "gain_evaluations": sel.n_evaluations_, "torch_threads": torch.get_num_threads(),
           "loadavg_start": l0, "loadavg_end": loadavg()}
    if recall:
        E = l2_normalize(X)
        del X
        t1 = time.perf_counter()
        _, idx = ivf_knn_search(E, n_neighbors, random_state=0)
        res["ivf_knn_s_alone"] = time.perf_counter() - t1
        res["ivf_recall_at_k"] = knn_recall(E, idx, n_queries=500)
        # similarity mass found: sum of the found neighbours' similarities / exact top-k sum
        q = np.random.default_rng(1).choice(len(E), 300, replace=False)
        Et = torch.as_tensor(E)
        true_s = torch.topk(Et[q] @ Et.T, n_neighbors, dim=1).values.sum().item()
        found_s = (Et[q].unsqueeze(1) * Et[torch.as_tensor(idx[q].astype(np.int64))]).sum(-1).sum().item()
        res["ivf_similarity_mass_ratio"] = found_s / true_s
    print(json.dumps(res))


# ---------------------------------------------------------------------- parts
def part_scale() -> None:
    runs = []
    for knn, kind in (("exact", "clustered"), ("ivf", "clustered"), ("exact", "uniform"), ("ivf", "uniform")):
        r = run_child(["--child", "fit", "--n", "90860", "--knn", knn, "--kind", kind,
                       "--recall", "1" if knn == "ivf" else "0"])
        runs.append(r)
        print(r, flush=True)
    save("scale", {"runs": runs})


def part_million() -> None:
    r = run_child(["--child", "fit", "--n", "1000000", "--knn", "ivf", "--kind", "clustered",
                   "--recall", "1"], timeout=7200)
    save("million", {"runs": [r]})


def part_correctness() -> None:
    from biodatacentric.assess import KCenterSelector, KCoverSelector, RandomSelector, evaluate_selection
    from biodatacentric.assess.knn import l2_normalize

    n = 10_000
    X = mixture(n, seed=1, n_clusters=200)
    out: dict = {"n": n, "d": 256, "k": K}
    t = time.perf_counter()
    dense = KCoverSelector(n_select=K, n_neighbors=None).fit(X)
    out["dense_s"] = time.perf_counter() - t
    out["dense_objective"] = dense.objective_value_
    rows = []
    for m in (10, 30, 100):
        t = time.perf_counter()
        lazy = KCoverSelector(n_select=K, n_neighbors=m, random_state=0).fit(X)
        tl = time.perf_counter() - t
        t = time.perf_counter()
        plain = KCoverSelector(n_select=K, n_neighbors=m, lazy=False, random_state=0).fit(X)
        tp = time.perf_counter() - t
        exact = evaluate_selection(X, lazy.selected_indices_)["facility_location"]
        rows.append({"n_neighbors": m, "sparse_objective_exact": exact,
                     "ratio_to_dense": exact / dense.objective_value_,
                     "lazy_equals_plain": lazy.selected_indices_.tolist() == plain.selected_indices_.tolist(),
                     "lazy_s": tl, "plain_s": tp, "lazy_evaluations": lazy.n_evaluations_,
                     "plain_evaluations": plain.n_evaluations_})
    out["sparse"] = rows
    fl = evaluate_selection(X, KCoverSelector(n_select=K, random_state=0).fit(X).selected_indices_)
    rand = [evaluate_selection(X, RandomSelector(n_select=K, random_state=s).fit(X).selected_indices_)
            for s in range(20)]
    out["greedy_objective"] = fl["facility_location"]
    out["random_objective_max"] = max(r["facility_location"] for r in rand)
    out["random_objective_mean"] = float(np.mean([r["facility_location"] for r in rand]))
    out["greedy_beats_random_every_seed"] = all(fl["facility_location"] > r["facility_location"] for r in rand)
    out["n_random_seeds"] = len(rand)
    # k-center: radius of greedy vs brute-force optimum on small N (2-approximation)
    checks = []
    for seed in range(5):
        Xs = np.random.default_rng(seed).normal(size=(16, 4))
        E = l2_normalize(Xs).astype(np.float64)
        D = np.sqrt(np.maximum(0, 2 - 2 * E @ E.T))
        opt = min(D[:, list(S)].min(1).max() for S in itertools.combinations(range(16), 4))
        kc = KCenterSelector(n_select=4, init="medoid").fit(Xs)
        brute = D[:, kc.selected_indices_].min(1).max()
        checks.append({"seed": seed, "greedy_radius": kc.objective_value_, "brute_force_radius_of_picks": brute,
                       "optimal_radius": opt, "ratio_to_opt": kc.objective_value_ / opt})
    out["k_center_small"] = checks
    out["k_center_radius_matches_brute_force"] = all(abs(c["greedy_radius"] - c["brute_force_radius_of_picks"]) < 1e-5
                                                     for c in checks)
    out["k_center_within_2x_opt"] = all(c["ratio_to_opt"] <= 2 + 1e-9 for c in checks)
    save("correctness", out)


def paper_kcenter_full_matrix(E: np.ndarray, k: int, first: int) -> list[int]:
    """The authors' approach: the full N x N cosine distance matrix, then farthest-first
    (vectorised per step here, which is faster than the original per-candidate loops)."""
    D = 1.0 - E @ E.T                              # N x N float32
    picks = [first]
    while len(picks) < k:
        dmin = D[:, picks].min(axis=1)
        dmin[picks] = -np.inf
        picks.append(int(np.argmax(dmin)))
    return picks


def part_paper() -> None:
    from biodatacentric.assess import KCenterSelector, KCoverSelector
    from biodatacentric.assess.knn import l2_normalize

    n = 20_000
    X = mixture(n, seed=2)
    E = l2_normalize(X)
    first = int(np.argmax(E @ E.mean(0)))          # same deterministic seed pick for both
    t_ours, t_paper, t_fl = [], [], []
    for _ in range(3):                             # alternate, report medians
        t = time.perf_counter()
        ours = KCenterSelector(n_select=K, init="medoid").fit(X)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        paper = paper_kcenter_full_matrix(E, K, first)
        t_paper.append(time.perf_counter() - t)
        t = time.perf_counter()
        KCoverSelector(n_select=K, random_state=0).fit(X)
        t_fl.append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in (("paper", t_paper), ("ours", t_ours), ("fl", t_fl))}
    save("paper", {"n": n, "d": 256, "k": K, "rounds": 3, "paper_full_matrix_s": med["paper"],
                   "ours_k_center_s": med["ours"], "speedup_k_center": med["paper"] / med["ours"],
                   "ours_kcover_sparse_s": med["fl"], "all_times": {"paper": t_paper, "ours": t_ours,
                                                                    "kcover": t_fl},
                   "full_matrix_mb": n * n * 4 / 2**20,
                   "same_picks": ours.selected_indices_.tolist() == paper})


def real_embeddings(patches, n_components: int = 64) -> np.ndarray:
    """Simple encoder until the MAE lands: PCA (whitened=False) of multi-scale features.

    Features per patch: 16 x 16 block means of the normalised intensities and 8 x 8 block
    means of the gradient magnitude, each standardised over the dataset; then PCA to 64-d.
    """
    from sklearn.decomposition import PCA

    feats = []
    for imgs, _, _ in patches.iter_batches(256, with_masks=False):
        n, h, w = imgs.shape
        a = imgs.reshape(n, 16, h // 16, 16, w // 16).mean(axis=(2, 4)).reshape(n, -1)
        gy, gx = np.gradient(imgs, axis=(1, 2))
        g = np.sqrt(gx ** 2 + gy ** 2)
        b = g.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, -1)
        feats.append(np.concatenate([a, b], axis=1))
    F = np.concatenate(feats)
    F = (F - F.mean(0)) / (F.std(0) + 1e-6)
    return PCA(n_components=n_components, random_state=0).fit_transform(F).astype(np.float32)


def part_real() -> None:
    from biodatacentric import Patches
    from biodatacentric.assess import (DatasetAuditor, KCenterSelector, KCoverSelector, RandomSelector,
                                       evaluate_selection)
    from biodatacentric.assess.plots import plot_embedding_map, plot_montage

    files = sorted(str(p) for p in (DATA / "images").glob("*.tif")
                   if p.name.startswith(("burgess2014", "santos2015")))
    patches = Patches.from_tiff(files, axes="ZYX", patch_shape=(128, 128))
    t = time.perf_counter()
    if ENCODER == "mae":
        mae = vesselnn_mae()[0].set_params(progress=False)   # pretrained in this run, bench_mae.py's settings
        t = time.perf_counter()
        emb = mae.transform(patches)
        encoder_desc = (f"the MAE of benchmarks/bench_mae.py's settings, pretrained on these stacks in this run "
                        f"(preset {mae.preset}, {mae.max_epochs} epochs, mean-pooled tokens, PCA "
                        f"{emb.shape[1]}, L2-normalised)")
    else:
        emb = real_embeddings(patches)
        encoder_desc = ("PCA(64) of standardised 16x16 block means of intensity + 8x8 block means of "
                        "gradient magnitude")
    t_emb = time.perf_counter() - t
    audit = DatasetAuditor(random_state=0).fit(patches, embeddings=emb)
    kc = KCoverSelector(n_select=K, n_neighbors=50, random_state=0).fit(emb)
    kcen = KCenterSelector(n_select=K, init="random", n_init_random=3, random_state=4099).fit(emb)
    kcen_med = KCenterSelector(n_select=K, init="medoid").fit(emb)
    # the recommended pipeline: audit first, never pick flagged patches
    kc_x = KCoverSelector(n_select=K, n_neighbors=50, random_state=0).fit(emb, exclude=audit.exclude_)
    kcen_x = KCenterSelector(n_select=K, init="random", n_init_random=3, random_state=4099).fit(
        emb, exclude=audit.exclude_)
    ev = {"K-cover": evaluate_selection(emb, kc.selected_indices_),
          "k-center (random seeds, 4099)": evaluate_selection(emb, kcen.selected_indices_),
          "k-center (medoid seed)": evaluate_selection(emb, kcen_med.selected_indices_),
          "K-cover + audit exclude": evaluate_selection(emb, kc_x.selected_indices_),
          "k-center + audit exclude": evaluate_selection(emb, kcen_x.selected_indices_)}
    rand = [evaluate_selection(emb, RandomSelector(n_select=K, random_state=s).fit(emb).selected_indices_)
            for s in range(20)]
    flags = audit.flags()
    art = {name: {c: int(flags[c][idx].sum()) for c in flags}
           for name, idx in (("K-cover", kc.selected_indices_), ("k-center", kcen.selected_indices_),
                             ("k-center-medoid", kcen_med.selected_indices_),
                             ("K-cover + audit exclude", kc_x.selected_indices_),
                             ("k-center + audit exclude", kcen_x.selected_indices_))}
    # intensity statistics of the picks (low p99 - p01 = little information)
    rng_ = audit.stats_[:, 3] - audit.stats_[:, 2]
    OUT.mkdir(parents=True, exist_ok=True)
    plot_montage(patches, kc.selected_indices_, suptitle="K-cover (facility location), K=25"
                 ).savefig(OUT / "montage_kcover.png")
    plot_montage(patches, kcen.selected_indices_, suptitle="k-center (authors' code: 3 random seeds), K=25"
                 ).savefig(OUT / "montage_kcenter.png")
    plot_montage(patches, kc_x.selected_indices_, suptitle="K-cover with DatasetAuditor exclude, K=25"
                 ).savefig(OUT / "montage_kcover_audited.png")
    plot_montage(patches, kcen_x.selected_indices_, suptitle="k-center with DatasetAuditor exclude, K=25"
                 ).savefig(OUT / "montage_kcenter_audited.png")
    plot_montage(patches, np.flatnonzero(audit.flags("blank"))[:10].tolist()
                 + np.flatnonzero(audit.flags("saturated"))[:10].tolist(), ncols=10,
                 suptitle="audit: blank (top row) and saturated (bottom row) examples"
                 ).savefig(OUT / "montage_audit_flags.png")
    plot_embedding_map(emb, {"K-cover": kc.selected_indices_, "k-center": kcen.selected_indices_},
                       flagged=audit.exclude_, title="vesselnn_2pm 128x128 patches (PCA of embeddings)"
                       ).savefig(OUT / "embedding_map_real.png")
    save("real", {
        "n_patches": len(patches), "files": [Path(f).name for f in files], "embedding_dim": int(emb.shape[1]),
        "encoder": encoder_desc,
        "embedding_s": t_emb, "k": K, "scores": ev,
        "random_mean": {k: float(np.mean([r[k] for r in rand])) for k in rand[0]},
        "random_max": {k: float(np.max([r[k] for r in rand])) for k in rand[0]},
        "n_random_seeds": len(rand),
        "kcover_beats_all_random_fl": all(ev["K-cover"]["facility_location"] > r["facility_location"] for r in rand),
        "audit_summary": audit.summary(), "audit_table": audit.summary_table(),
        "flags_among_picks": art,
        "intensity_range_of_picks_median": {
            "K-cover": float(np.median(rng_[kc.selected_indices_])),
            "k-center": float(np.median(rng_[kcen.selected_indices_])),
            "dataset": float(np.median(rng_))},
        "kcover_suggested_k": kc.suggest_n_select(), "kcover_knee_k": kc.suggest_n_select(rule="knee"),
        "kcover_gains": kc.gains_.tolist(), "kcover_indices": kc.selected_indices_.tolist(),
        "kcenter_indices": kcen.selected_indices_.tolist(),
        "kcover_audited_indices": kc_x.selected_indices_.tolist(),
        "kcover_audited_beats_all_random_fl": all(ev["K-cover + audit exclude"]["facility_location"]
                                                  > r["facility_location"] for r in rand),
    })


# ---------------------------------------------------------------------- report
def _section_scale(sc: dict) -> list[str]:
    L = []
    if sc:
        L += ["### Paper scale: N = 90,860, d = 256, K = 25 (fresh process per row)", "",
              "| embeddings | kNN | wall s | CPU s | peak RSS MB | objective | mean coverage | IVF recall@100 | load avg |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in sc["runs"]:
            L.append(f"| {r['kind']} | {r['knn']} (m={r['n_neighbors']}) | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['objective']:.1f} | {r['mean_coverage']:.4f} | "
                     f"{r.get('ivf_recall_at_k', float('nan')):.3f} | {r['loadavg_start']:.1f}-{r['loadavg_end']:.1f} |")
        L += ["", "Goal: <= 30 s and <= 1.5 GB. Peak RSS includes the Python/torch/scipy imports and "
              "the 93 MB embedding array.", ""]
    return L


def _section_million(mi: dict) -> list[str]:
    L = []
    if mi:
        r = mi["runs"][0]
        L += ["### N = 1,000,000, d = 256, K = 25 (IVF kNN graph, approximate)", "",
              f"- wall {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min), CPU {r['cpu_s']:.0f} s, "
              f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GB (embeddings alone: {r['n'] * r['d'] * 4 / 1e9:.1f} GB), "
              f"load average {r['loadavg_start']:.1f}-{r['loadavg_end']:.1f}, {r['torch_threads']} torch thread(s)",
              f"- memory for `scale_estimates.py`: {r['rss_after_data_mb']:.0f} MB resident after generating "
              f"the {r['n']:,} embeddings, {r['peak_rss_mb']:.0f} MB at the peak; CPU time {r['cpu_s']:.1f} s",
              f"- graph entries {r['graph_nnz']:,}, gain evaluations {r['gain_evaluations']:,}, "
              f"objective {r['objective']:.1f}, mean coverage {r['mean_coverage']:.4f}",
              f"- kNN recall@{r['n_neighbors']} of the IVF graph on 500 random queries: "
              f"{r.get('ivf_recall_at_k', float('nan')):.3f} (similarity mass found "
              f"{r.get('ivf_similarity_mass_ratio', float('nan')):.3f}); IVF search alone "
              f"{r.get('ivf_knn_s_alone', float('nan')):.0f} s", "",
              "Exact kNN at this size needs 2.6e14 multiply-adds plus a top-k over 1e12 "
              "similarities (about 20 min of bf16 matmul alone on 2 cores), so the "
              "`knn=\"auto\"` default switches to the IVF search above 150,000 samples.", ""]
    return L


def _section_correctness(co: dict) -> list[str]:
    L = []
    if co:
        L += ["### Correctness at N = 10,000, d = 256, K = 25 (200-component mixture)", "",
              f"Exact dense greedy (n_neighbors=None): objective {co['dense_objective']:.2f} "
              f"({co['dense_s']:.1f} s).", "",
              "| n_neighbors | sparse picks, exact objective | ratio to dense | lazy == plain | lazy s | plain s | gain evals lazy / plain |",
              "|---|---|---|---|---|---|---|"]
        for r in co["sparse"]:
            L.append(f"| {r['n_neighbors']} | {r['sparse_objective_exact']:.2f} | {r['ratio_to_dense']:.4f} | "
                     f"{r['lazy_equals_plain']} | {r['lazy_s']:.2f} | {r['plain_s']:.2f} | "
                     f"{r['lazy_evaluations']:,} / {r['plain_evaluations']:,} |")
        L += ["", f"- greedy (m=100) {co['greedy_objective']:.2f} vs random over {co['n_random_seeds']} seeds: "
              f"mean {co['random_objective_mean']:.2f}, best {co['random_objective_max']:.2f}; "
              f"greedy beats random on every seed: {co['greedy_beats_random_every_seed']}",
              f"- k-center (N=16, K=4, 5 seeds): reported radius equals brute-force radius of the picks: "
              f"{co['k_center_radius_matches_brute_force']}; within 2x the optimal radius (exhaustive search): "
              f"{co['k_center_within_2x_opt']} (ratios "
              + ", ".join(f"{c['ratio_to_opt']:.3f}" for c in co["k_center_small"]) + ")", ""]
    return L


def _section_paper(pa: dict) -> list[str]:
    L = []
    if pa:
        L += ["### Against the paper code's full-matrix k-center at N = 20,000 (one process, "
              f"{pa.get('rounds', 1)} alternating rounds, medians, same seed pick)", "",
              f"- full N x N cosine-distance matrix ({pa['full_matrix_mb']:.0f} MB) + farthest-first: "
              f"{pa['paper_full_matrix_s']:.2f} s",
              f"- ours, incremental k-center (O(N d) per pick, O(N) memory): {pa['ours_k_center_s']:.3f} s "
              f"-> {pa['speedup_k_center']:.1f}x faster; identical picks: {pa['same_picks']}",
              f"- ours, K-cover (sparse kNN graph, lazy greedy): {pa['ours_kcover_sparse_s']:.2f} s", ""]
    return L


def _section_real(re_: dict) -> list[str]:
    L = []
    if re_:
        L += [f"### Real data: vesselnn_2pm, {re_['n_patches']} patches of 128 x 128 "
              f"(burgess2014 + santos2015 stacks), K = {re_['k']}", "",
              f"Encoder: {re_['encoder']}.", "",
              "| selection | facility location | mean coverage | k-center radius |", "|---|---|---|---|"]
        for name, s in re_["scores"].items():
            L.append(f"| {name} | {s['facility_location']:.2f} | {s['mean_coverage']:.4f} | {s['k_center_radius']:.4f} |")
        L.append(f"| random, mean of {re_['n_random_seeds']} seeds | {re_['random_mean']['facility_location']:.2f} | "
                 f"{re_['random_mean']['mean_coverage']:.4f} | {re_['random_mean']['k_center_radius']:.4f} |")
        L.append(f"| random, best seed | {re_['random_max']['facility_location']:.2f} | "
                 f"{re_['random_max']['mean_coverage']:.4f} | - |")
        L += ["", f"K-cover beats every random seed on facility location: {re_['kcover_beats_all_random_fl']} "
              f"(with the audit exclusions: {re_.get('kcover_audited_beats_all_random_fl')}). "
              f"Suggested K from the K-cover curve (K=25 run): {re_['kcover_suggested_k']} by the default rule "
              f"(next gain < 10% of the second pick's gain), {re_.get('kcover_knee_k')} by the knee rule.", "",
              "Audit flags among the picks (DatasetAuditor defaults on the same patches/embeddings):", "",
              "| selection | " + " | ".join(re_["flags_among_picks"]["K-cover"]) + " |",
              "|---|" + "---|" * len(re_["flags_among_picks"]["K-cover"])]
        for name, f in re_["flags_among_picks"].items():
            L.append(f"| {name} | " + " | ".join(str(v) for v in f.values()) + " |")
        med = re_["intensity_range_of_picks_median"]
        L += ["", f"Median p99-p01 intensity range of the picks: K-cover {med['K-cover']:.3f}, "
              f"k-center {med['k-center']:.3f}, whole dataset {med['dataset']:.3f}.", "",
              "```", re_["audit_table"], "```", "",
              "Montages: `benchmarks/_out/montage_kcover.png`, `montage_kcenter.png`, "
              "`montage_kcover_audited.png`, `montage_kcenter_audited.png`, `montage_audit_flags.png`; "
              "map: `benchmarks/_out/embedding_map_real.png`.", ""]
    return L


SECTIONS = {"scale": _section_scale, "million": _section_million, "correctness": _section_correctness,
            "paper": _section_paper, "real": _section_real}
INTRO = ("Each section says when, on what machine and with which command it was measured (a run of some "
         "parts, e.g. `--part million`, replaces those parts' sections and keeps the others as committed; "
         "`--part all` re-measures every section; the lines above are the run that last wrote the file). "
         "The machine may be shared with other jobs: wall times under load overstate quiet-machine "
         "times, CPU time (all threads summed) is less affected.")


def part_report(command: str) -> Path:
    """Write ``results/kcover.md`` from the parts measured so far in this run and the committed
    sections of the others (``_sections.write_sections``)."""
    measured = {name: stamp(command, (MEASURED[name]["loadavg_start"], MEASURED[name]["machine"]["loadavg_1min_at_end"]))
                + "\n\n" + "\n".join(SECTIONS[name](MEASURED[name])) for name in SECTIONS if name in MEASURED}
    out = write_sections("kcover", "KCoverSelector benchmarks", INTRO, list(SECTIONS), measured, command)
    print(f"wrote {out}")
    return out


PARTS = {"scale": part_scale, "million": part_million, "correctness": part_correctness,
         "paper": part_paper, "real": part_real}


ENCODER = "mae"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=[*PARTS, "all"], nargs="+", default=["all"],
                    help="the parts to measure (one or more; each replaces its own section of results/kcover.md)")
    ap.add_argument("--encoder", choices=["mae", "stand-in"], default="mae",
                    help="embeddings of the real-data part: the benchmark MAE (pretrained in this run) or a "
                         "simple stand-in")
    ap.add_argument("--child", choices=["fit"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=90860)
    ap.add_argument("--knn", default="exact")
    ap.add_argument("--kind", default="clustered")
    ap.add_argument("--n-neighbors", type=int, default=100)
    ap.add_argument("--recall", default="0")
    a = ap.parse_args()
    global ENCODER
    ENCODER = a.encoder
    if a.child == "fit":
        child_fit(a.n, a.knn, a.kind, a.n_neighbors, a.recall == "1")
        return
    parts = list(PARTS) if "all" in a.part else list(dict.fromkeys(a.part))
    command = " ".join(["python benchmarks/bench_kcover.py", *sys.argv[1:]])
    for p in parts:
        load0 = loadavg()
        PARTS[p]()
        MEASURED[p]["loadavg_start"] = load0
        part_report(command)     # after every part, so that a later part's failure keeps this one


if __name__ == "__main__":
    main()
