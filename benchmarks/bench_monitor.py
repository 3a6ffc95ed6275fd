"""QualityMonitor (issue 21) on real predictions: segmenters of graded quality on vesselnn_2pm.

Protocol. The 9 stacks are split into 3 folds of 3 (``names[f::3]``). For each fold, tiny
``TransUNetSegmenter`` models are trained on core sets drawn from 64x64 patches of the other 6
stacks: K in {5, 10, 25, 50}, random or K-cover selection (block-mean embeddings), three
stages (6, 40 and 160 iterations of 8 patches; cores smaller than 48 are repeated to 48 per epoch), several seeds. Each model segments a crop of each of the 3
held-out stacks (4 evenly spaced slices, central 256x256, normalised per stack with the 0.5 /
99.8 percentiles as ``Patches`` do), and the (model, stack) pair is scored by:

* ``QualityMonitor(seg, rca=<fold RCA>, embedder=<block means>)``, fitted on 48 annotated 64x64
  patches of the 6 training stacks (8 per stack) that no core set of the fold contains, with
  ``training_embeddings`` = the fold's selection pool. Its record gives the agreement estimate
  (``signals["agreement"]``), the RCA estimate (``signals["rca"]``), the drift percentile and the
  combined estimate (the library default ``combine="min"``);
* the fold's RCA monitor is the best configuration of issue 7 (``extra_trees``, 50 trees,
  ``calibration="forest"``) on 25 annotated 128x128 patches of the 6 training stacks.

No reference ever comes from a scored stack. Results: ``benchmarks/results/monitor.md`` and
``docs/figures/monitor_scatter.png``; per-pair rows in ``benchmarks/_out/monitor_pairs.csv``.

Usage: ``python benchmarks/bench_monitor.py [--budget-min 40] [--seeds 2] [--report-only]``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, RESULTS, require_vesselnn, write_result  # noqa: E402

from biodatacentric import Patches, QualityMonitor, RCAMonitor, TransUNetSegmenter  # noqa: E402
from biodatacentric.assess import KCoverSelector  # noqa: E402
from biodatacentric.monitor import evaluate_estimates  # noqa: E402

PATCH = 64
CROP = (4, 256, 256)
KS = (5, 10, 25, 50)
SELECTIONS = ("random", "kcover")
STAGES = {"early": 6, "late": 40, "long": 160}  # training iterations (batches of 8)
SPEED_PATH = OUT / "monitor_speed.md"
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "monitor_scatter.png"

KEEP_RULE = """**Pre-registered keep rule** (written before the run): the combined monitor
(`QualityMonitor(segmenter, rca=RCAMonitor(extra_trees, 50 trees, calibration="forest"))`,
`combine="min"`) is recommended as the default only if, on these pairs, its accuracy@0.7 is
higher than RCA alone's **and** its AURC is lower than RCA alone's. Otherwise RCA stays the
recommendation and the agreement signal is reported as a measured alternative."""


def block_embed(images: np.ndarray, block: int = 8) -> np.ndarray:
    """Block means of (n, h, w) tiles (h, w multiples of ``block``): a cheap, fixed embedder."""
    n, h, w = images.shape
    h, w = h - h % block, w - w % block
    x = np.asarray(images[:, :h, :w], dtype=np.float32)
    return x.reshape(n, h // block, block, w // block, block).mean(axis=(2, 4)).reshape(n, -1)


def normalised_stack(path: Path) -> np.ndarray:
    img = tifffile.imread(path).astype(np.float32)
    lo, hi = np.percentile(img[:: max(1, len(img) // 16)], [0.5, 99.8])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def crop(arr: np.ndarray) -> np.ndarray:
    z = np.linspace(0, len(arr) - 1, CROP[0]).round().astype(int)
    _, H, W = arr.shape
    y0, x0 = (H - CROP[1]) // 2, (W - CROP[2]) // 2
    return np.ascontiguousarray(arr[z, y0:y0 + CROP[1], x0:x0 + CROP[2]])


def fold_data(data: Path, train: list[str], seed: int):
    """Selection pool, agreement references (8 per stack, never in the pool), RCA references."""
    rng = np.random.default_rng(seed)
    paths = [str(data / "images" / f"{n}.tif") for n in train]
    p = Patches.from_tiff(paths, axes="ZYX", patch_shape=(PATCH, PATCH), masks=str(data / "masks"))
    masks = p.masks()
    frac = masks.reshape(len(masks), -1).mean(axis=1)
    src = np.asarray(p.index["source"])
    refs, pool = [], []
    for s in range(len(train)):
        ok = rng.permutation(np.flatnonzero((src == s) & (frac >= 0.02)))
        refs.extend(ok[:8].tolist())
        rest = np.setdiff1d(np.flatnonzero(src == s), ok[:8])
        pool.extend(rng.choice(rest, min(120, len(rest)), replace=False).tolist())
    refs, pool = np.sort(refs), np.sort(pool)
    ref = (p.images(refs), masks[refs], np.array([train[s] for s in src[refs]]))
    pool_patches = p[pool]
    # RCA references: 25 annotated 128x128 patches of the training stacks, as in bench_rca.py
    p128 = Patches.from_tiff(paths, axes="ZYX", patch_shape=(128, 128), masks=str(data / "masks"))
    m128 = p128.masks()
    f128 = m128.reshape(len(m128), -1).mean(axis=1)
    s128 = np.asarray(p128.index["source"])
    per = np.full(len(train), 25 // len(train))
    per[rng.permutation(len(train))[: 25 % len(train)]] += 1
    chosen = []
    for s in range(len(train)):
        cand = np.flatnonzero((s128 == s) & (f128 >= 0.02))
        chosen.extend(rng.choice(cand, min(per[s], len(cand)), replace=False).tolist())
    chosen = np.sort(chosen)
    rca_ref = (p128.images(chosen), m128[chosen], np.array([train[s] for s in s128[chosen]]))
    return pool_patches, ref, rca_ref


def train_model(pool: Patches, k: int, selection: str, stage: str, seed: int, pool_emb: np.ndarray):
    if selection == "random":
        idx = np.sort(np.random.default_rng(seed).choice(len(pool), k, replace=False))
    else:
        idx = KCoverSelector(n_select=k, random_state=seed).fit(pool_emb).selected_indices_
    # small core sets are repeated to 48 patches per epoch (6 steps), so that per-epoch overhead
    # does not dominate; the stage fixes the number of optimisation steps
    idx = np.tile(np.asarray(idx), math.ceil(48 / k))[: max(48, k)]
    steps = math.ceil(len(idx) / 8)
    epochs = max(1, round(STAGES[stage] / steps))
    seg = TransUNetSegmenter(preset="tiny", feature_size=8, max_epochs=epochs, batch_size=8, lr=1e-3,
                             precision="fp32", device="cpu", random_state=seed, progress=False)
    return seg.fit(pool[idx])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = int(a.sum()), int(b.sum())
    return 1.0 if sa + sb == 0 else 2.0 * int((a & b).sum()) / (sa + sb)


FIELDS = ["fold", "seed", "k", "selection", "stage", "stack", "true_dice", "combined", "agreement", "rca",
          "drift", "low", "high", "decision", "driver", "pred_share", "train_s", "assess_s", "sampling_s", "rca_s"]


def run(budget_min: float, seeds: int, stages: tuple[str, ...], csv_path: Path) -> None:
    data = require_vesselnn()
    names = sorted(p.stem for p in (data / "images").glob("*.tif"))
    stacks = {n: (crop(normalised_stack(data / "images" / f"{n}.tif")),
                  crop((tifffile.imread(data / "masks" / f"{n}.tif") > 0).astype(np.uint8))) for n in names}
    OUT.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    folds = []
    for f in range(3):
        scored = names[f::3]
        train = [n for n in names if n not in scored]
        pool, ref, rca_ref = fold_data(data, train, seed=f)
        t = time.perf_counter()
        cache = OUT / f"monitor_rca_fold{f}"  # the fold's RCA monitor depends only on its references
        if (cache / "config.json").is_file():
            rca = RCAMonitor.load(cache)
        else:
            rca = RCAMonitor(classifier="extra_trees", n_estimators=50, calibration="forest", normalize="none",
                             random_state=0, verbose=False).fit(rca_ref[:2], groups=rca_ref[2])
            rca.save(cache)
        print(f"fold {f}: pool {len(pool)}, refs {len(ref[0])}, RCA fit {time.perf_counter() - t:.0f} s", flush=True)
        folds.append((scored, pool, block_embed(pool.images()), ref, rca))
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        # every seed's 48 models (4 K x 2 selections x 2 stages x 3 folds) in a fixed shuffled
        # order, so that a run cut short by the time budget still covers every kind of model
        order = []
        for seed in range(seeds):
            configs = [(stage, k, selection, f) for stage in stages for k in KS for selection in SELECTIONS
                       for f in range(len(folds))]
            order += [(seed, *configs[i]) for i in np.random.default_rng(seed).permutation(len(configs))]
        for seed, stage, k, selection, f in order:
            scored, pool, pool_emb, ref, rca = folds[f]
            if time.perf_counter() - t_start > budget_min * 60:
                print("time budget reached", flush=True)
                return
            t = time.perf_counter()
            seg = train_model(pool, k, selection, stage, 100 * seed + f, pool_emb)
            train_s = time.perf_counter() - t
            mon = QualityMonitor(seg, rca=rca, embedder=block_embed, normalize="none",
                                 random_state=seed).fit(ref[:2], groups=ref[2],
                                                        training_embeddings=pool_emb)
            for name in scored:
                img, truth = stacks[name]
                pred = seg.predict_image(img, axes="ZYX", normalize="none", progress=False)
                t = time.perf_counter()
                rec = mon.assess(img, pred, axes="ZYX")
                sig = rec["signals"]
                writer.writerow({
                    "fold": f, "seed": seed, "k": k, "selection": selection, "stage": stage,
                    "stack": name, "true_dice": dice(pred > 0, truth > 0),
                    "combined": rec["estimated_dice"], "agreement": sig["agreement"],
                    "rca": sig["rca"], "drift": sig["drift"], "low": rec["interval"][0],
                    "high": rec["interval"][1], "decision": rec["decision"],
                    "driver": rec["driver"], "pred_share": float(pred.mean()),
                    "train_s": round(train_s, 2), "assess_s": round(time.perf_counter() - t, 3),
                    "sampling_s": round(rec["timings"].get("sampling", 0.0), 3),
                    "rca_s": round(rec["timings"].get("rca", 0.0), 3)})
                fh.flush()
            print(f"seed {seed} {stage} K={k} {selection} fold {f}: "
                  f"{time.perf_counter() - t_start:.0f} s", flush=True)


def speed() -> list[str]:
    """Seconds per synthetic 7x1024x1024 stack: agreement (library-default 'small' segmenter at
    128x128, 16 tiles x 8 samples), RCA (best configuration, 25 references) and both."""
    from biodatacentric import make_vessels

    img, mask = make_vessels((7, 1024, 1024), random_state=0)
    rimg, rmask = make_vessels((25, 128, 128), random_state=1)
    seg = TransUNetSegmenter(preset="small", device="cpu", precision="fp32", random_state=0).initialize((128, 128))
    rca = RCAMonitor(classifier="extra_trees", n_estimators=50, calibration="forest", normalize="none",
                     random_state=0).fit((rimg, rmask))
    load = os.getloadavg()[0]
    tiny = TransUNetSegmenter(preset="tiny", feature_size=8, device="cpu", precision="fp32",
                              random_state=0).initialize((64, 64))
    lines = [f"| monitor | seconds per 7x1024x1024 stack (one run; load average {load:.1f} on this shared machine) |",
             "|---|---|"]
    for label, mon in (("agreement only (QualityMonitor defaults: small preset at 128x128, 16 tiles x 8 samples)",
                        QualityMonitor(seg, normalize="none", random_state=0)),
                       ("agreement only, small preset, 8 tiles x 4 samples",
                        QualityMonitor(seg, n_tiles=8, n_samples=4, normalize="none", random_state=0)),
                       ("agreement only, the benchmark's tiny models (64x64, feature_size 8), 16 tiles x 8 samples",
                        QualityMonitor(tiny, normalize="none", random_state=0)),
                       ("RCA only (RCAMonitor best configuration)", None),
                       ("combined (QualityMonitor with the RCA monitor)",
                        QualityMonitor(seg, rca=rca, normalize="none", random_state=0))):
        if mon is not None:
            mon.fit((rimg, rmask))
        t = time.perf_counter()
        mon.assess(img, mask, axes="ZYX") if mon is not None else rca.score(img, mask, axes="ZYX")
        lines.append(f"| {label} | {time.perf_counter() - t:.2f} |")
    SPEED_PATH.write_text("\n".join(lines), encoding="utf-8")
    return lines


def aurc(true: np.ndarray, confidence: np.ndarray) -> float:
    """Area under the risk-coverage curve, risk = 1 - true Dice, most confident first."""
    order = np.argsort(-confidence, kind="stable")
    risk = 1.0 - true[order]
    return float(np.mean(np.cumsum(risk) / np.arange(1, len(risk) + 1)))


def _metrics_row(label: str, t: np.ndarray, e: np.ndarray | None, conf: np.ndarray) -> str:
    if e is None:
        from scipy import stats

        rho = stats.spearmanr(conf, t)[0]
        return f"| {label} | — | {rho:.3f} | — | — | — | — | — | {aurc(t, conf):.3f} | — |"
    r = evaluate_estimates(t, e, threshold=0.7)
    return (f"| {label} | {r['pearson_r']:.3f} | {r['spearman_rho']:.3f} | {r['mae']:.3f} | {r['accuracy']:.3f} | "
            f"{r['sensitivity']:.3f} | {r['specificity']:.3f} | {(r['sensitivity'] + r['specificity']) / 2:.3f} | "
            f"{aurc(t, conf):.3f} | {np.mean(e - t):+.3f} |")


def report(speed_lines: list[str] | None, wall_min: float | None) -> None:
    rows = [r for path in sorted(OUT.glob("monitor_pairs*.csv")) for r in csv.DictReader(open(path, encoding="utf-8"))]
    if len(rows) < 3:
        sys.exit(f"only {len(rows)} pairs in {OUT}/monitor_pairs*.csv; run the benchmark first")
    num = {k: np.array([float(r[k]) for r in rows]) for k in ("true_dice", "combined", "agreement", "rca", "drift",
                                                               "low", "high", "assess_s", "sampling_s", "rca_s")}
    t = num["true_dice"]
    mean_est = (num["agreement"] + num["rca"]) / 2
    lines = [KEEP_RULE, "", "Protocol: 3 folds of 3 stacks; tiny TransUNet models (feature_size 8, 64x64 patches) trained on "
             "core sets of the other 6 stacks: K in {5, 10, 25, 50}, random or K-cover, 6 / 40 / 160 iterations "
             "(early / late / long), seeds 0 and 1, in a fixed shuffled order until the time budget ran out; each "
             "model segments a 4x256x256 crop of each held-out stack; references (48 agreement references of "
             "64x64, 25 RCA references of 128x128) only from the 6 training stacks. Run on this shared 2-core "
             "machine as two processes at once: `--stages early,late --budget-min 27 --threads 1` and `--stages "
             "long --csv monitor_pairs_long.csv --budget-min 21 --threads 1`, then `--report-only`; the speed "
             "table with `--speed-only`.", "",
             f"**{len(rows)} (model, stack) pairs**: {len({(r['fold'], r['seed'], r['k'], r['selection'], r['stage']) for r in rows})} "
             f"models x the 3 held-out stacks of their fold; true Dice {t.min():.3f} to {t.max():.3f} "
             f"(median {np.median(t):.3f}); {int(np.sum(t < 0.7))} pairs below 0.7."
             + (f" Wall time of the run: {wall_min:.0f} min." if wall_min else ""), "",
             f"**Base rate:** {np.mean(t < 0.7):.3f} of the pairs fail (true Dice < 0.7), so a monitor that flags "
             f"every pair as failed has accuracy {np.mean(t < 0.7):.3f} and balanced accuracy 0.5: read accuracy "
             "next to specificity and balanced accuracy ((sensitivity + specificity) / 2).", "",
             "| monitor | Pearson r | Spearman rho | MAE | accuracy @0.7 | sensitivity | specificity | balanced accuracy "
             "| AURC | bias (est - true) |",
             "|---|---|---|---|---|---|---|---|---|---|",
             _metrics_row("RCA alone (extra_trees 50, calibration=\"forest\")", t, num["rca"], num["rca"]),
             _metrics_row("agreement alone (QualityMonitor signal)", t, num["agreement"], num["agreement"]),
             _metrics_row("drift alone (confidence = -percentile; no Dice estimate)", t, None, -num["drift"]),
             _metrics_row("**combined** (`combine=\"min\"`, the default)", t, num["combined"], num["combined"]),
             _metrics_row("mean of agreement and RCA (not pre-registered)", t, mean_est, mean_est),
             "", f"AURC of an oracle (confidence = true Dice): {aurc(t, t):.3f}; of a random order: {np.mean(1 - t):.3f}. "
             "Sensitivity is the share of failed pairs (true Dice < 0.7) flagged, specificity the share of good pairs passed.", ""]
    acc_c = evaluate_estimates(t, num["combined"])["accuracy"]
    acc_r = evaluate_estimates(t, num["rca"])["accuracy"]
    a_c, a_r = aurc(t, num["combined"]), aurc(t, num["rca"])
    kept = acc_c > acc_r and a_c < a_r
    lines += [f"**Keep rule:** combined accuracy@0.7 {acc_c:.3f} vs RCA {acc_r:.3f}; AURC {a_c:.4f} vs {a_r:.4f} "
              f"-> **{'met: the combined monitor is the recommended default' if kept else 'not met: RCA alone stays the recommendation'}**.", ""]
    rc, rr = evaluate_estimates(t, num["combined"]), evaluate_estimates(t, num["rca"])
    bal_c, bal_r = (rc["sensitivity"] + rc["specificity"]) / 2, (rr["sensitivity"] + rr["specificity"]) / 2
    lines += [f"Read with the base rate: balanced accuracy combined {bal_c:.3f} vs RCA {bal_r:.3f}; specificity "
              f"combined {rc['specificity']:.3f} vs RCA {rr['specificity']:.3f} on the {int(np.sum(t >= 0.7))} good pairs. "
              + ("The rule as written is met, but the combined monitor passes fewer of the good segmentations than "
                 "RCA does." if bal_c < bal_r else "The combined monitor also has the higher balanced accuracy."), ""]
    inside = np.mean((t >= num["low"]) & (t <= num["high"]))
    lines += [f"Conformal interval (target coverage 0.9, calibrated for the agreement estimate on the references): "
              f"true Dice inside the interval of the combined estimate for {inside:.3f} of the pairs; mean width "
              f"{np.mean(num['high'] - num['low']):.3f}.", ""]
    dec = [r["decision"] for r in rows]
    lines += ["Decisions of the combined monitor (review band ±0.05): " + ", ".join(
        f"{d} {dec.count(d)}" for d in ("pass", "review", "fail")) + "; accuracy of the pass/fail decisions outside "
        f"the band: {np.mean([(r['decision'] == 'pass') == (float(r['true_dice']) >= 0.7) for r in rows if r['decision'] != 'review']):.3f}.", ""]
    # per kind of prediction
    lines += ["Per kind of prediction (mean true Dice, mean estimate - true Dice = over-estimation bias):", "",
              "| kind | n | true Dice | bias RCA | bias agreement | bias combined | accuracy RCA | accuracy combined |",
              "|---|---|---|---|---|---|---|---|"]

    def kinds(key):
        return sorted({r[key] for r in rows}, key=lambda v: (len(v), v))

    for key in ("stage", "selection", "k"):
        for v in kinds(key):
            sel = np.array([r[key] == v for r in rows])
            tt = t[sel]
            lines.append(f"| {key}={v} | {sel.sum()} | {tt.mean():.3f} | {np.mean(num['rca'][sel] - tt):+.3f} | "
                         f"{np.mean(num['agreement'][sel] - tt):+.3f} | {np.mean(num['combined'][sel] - tt):+.3f} | "
                         f"{np.mean((num['rca'][sel] >= 0.7) == (tt >= 0.7)):.3f} | "
                         f"{np.mean((num['combined'][sel] >= 0.7) == (tt >= 0.7)):.3f} |")
    for lo, hi in ((0.0, 0.5), (0.5, 0.7), (0.7, 1.01)):
        sel = (t >= lo) & (t < hi)
        if sel.any():
            tt = t[sel]
            lines.append(f"| true Dice in [{lo:g}, {min(hi, 1):g}) | {sel.sum()} | {tt.mean():.3f} | "
                         f"{np.mean(num['rca'][sel] - tt):+.3f} | {np.mean(num['agreement'][sel] - tt):+.3f} | "
                         f"{np.mean(num['combined'][sel] - tt):+.3f} | "
                         f"{np.mean((num['rca'][sel] >= 0.7) == (tt >= 0.7)):.3f} | "
                         f"{np.mean((num['combined'][sel] >= 0.7) == (tt >= 0.7)):.3f} |")
    lines += ["", "Per held-out stack:", "", "| stack | n | true Dice | accuracy RCA | accuracy agreement | "
              "accuracy combined | MAE combined |", "|---|---|---|---|---|---|---|"]
    for v in kinds("stack"):
        sel = np.array([r["stack"] == v for r in rows])
        tt = t[sel]
        lines.append(f"| {v} | {sel.sum()} | {tt.mean():.3f} | {np.mean((num['rca'][sel] >= 0.7) == (tt >= 0.7)):.3f} | "
                     f"{np.mean((num['agreement'][sel] >= 0.7) == (tt >= 0.7)):.3f} | "
                     f"{np.mean((num['combined'][sel] >= 0.7) == (tt >= 0.7)):.3f} | "
                     f"{np.mean(np.abs(num['combined'][sel] - tt)):.3f} |")
    lines += ["", f"Time per pair on the 4x256x256 crops (median): assess {np.median(num['assess_s']):.2f} s, of which "
              f"agreement sampling {np.median(num['sampling_s']):.2f} s and RCA {np.median(num['rca_s']):.2f} s.", ""]
    if speed_lines:
        lines += ["Speed on a synthetic 7x1024x1024 stack (goal: <= 5 s including the agreement samples):", "",
                  *speed_lines, ""]
    _figure(t, num)
    lines += [f"Figure: `docs/figures/{FIGURE.name}` (estimate vs true Dice, one panel per monitor)."]
    write_result("monitor", "QualityMonitor on real predictions (vesselnn_2pm, issue 21)", "\n".join(lines),
                 "python benchmarks/bench_monitor.py")


def _figure(t: np.ndarray, num: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for ax, key, title in zip(axes, ("rca", "agreement", "combined"), ("RCA alone", "agreement alone", "combined")):
        ax.scatter(t, num[key], s=10, alpha=0.6)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.axhline(0.7, color="r", lw=0.6)
        ax.axvline(0.7, color="r", lw=0.6)
        ax.set_title(title)
        ax.set_xlabel("true Dice")
    axes[0].set_ylabel("estimated Dice")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=40.0, help="stop training new models after this")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated training stages to run")
    ap.add_argument("--csv", default="monitor_pairs.csv", help="per-pair CSV under benchmarks/_out "
                    "(the report reads every monitor_pairs*.csv there)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a loaded machine)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the results from the saved CSV")
    ap.add_argument("--no-speed", action="store_true", help="reuse the speed table of an earlier --speed-only run")
    ap.add_argument("--speed-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed_only:
        print("\n".join(speed()))
        return
    t0 = time.perf_counter()
    if not args.report_only:
        run(args.budget_min, args.seeds, tuple(args.stages.split(",")), OUT / args.csv)
    wall = (time.perf_counter() - t0) / 60 if not args.report_only else None
    if args.no_speed or args.report_only:
        lines = SPEED_PATH.read_text(encoding="utf-8").splitlines() if SPEED_PATH.is_file() else None
    else:
        lines = speed()
    report(lines, wall)


if __name__ == "__main__":
    main()
