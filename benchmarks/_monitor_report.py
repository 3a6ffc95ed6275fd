"""The report of ``bench_monitor.py``: tables, keep rules and the scatter figure, from the per-pair CSVs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from _common import OUT, write_result

from biodatacentric.monitor import evaluate_estimates

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "monitor_scatter.png"
COMMAND = ("nice -n 5 python benchmarks/bench_monitor.py --part 0/2 --corruptions --csv monitor_pairs_a0.csv "
           "--threads 1 & nice -n 5 python benchmarks/bench_monitor.py --part 1/2 --csv monitor_pairs_b0.csv --threads 1; "
           "then the same with --csv monitor_pairs_a1.csv / _b1.csv (no --corruptions; they skip what a0 / b0 hold); "
           "python benchmarks/bench_monitor.py --report-only")

RUN_NOTE = """How this run went (a shared machine at load average 8-11, about ten times the load the
plan assumed): the first pair of processes (`monitor_pairs_a0.csv`, `_b0.csv`, 13:04-13:17 UTC)
was stopped by hand after the corruptions of fold 0 and two thirds of fold 1 and four models,
because training was about ten times slower than planned; the second pair (`_a1`, `_b1`,
13:18-14:00 UTC) ran the leaner configuration now in the script (the 600-step stage only for
K >= 50, cross-domain pairs for seed 0 only, tubenet models for seed 0, K in {5, 25}), skipping
what the first had done; `_b1` stopped at its 30-minute budget, `_a1` was stopped by hand while
training its last model (no row of that model was written). So the corruption table covers
folds 0 and 1 only, and there are far fewer pairs than the 200 the issue asks for."""

KEEP_RULES = """**Pre-registered hypotheses and keep rules** (written into this script before the run;
the run decides, whatever it shows):

1. *Default monitor.* On the vesselnn real-prediction pairs (leave-one-stack-out: models and
   references from the other stacks), the combined `QualityMonitor` (agreement + RCA + drift,
   `combine="min"`) becomes what the loop and `make demo` use only if its **balanced accuracy**
   @0.7 is higher than RCA alone's **and** its AURC is lower than RCA alone's. (Balanced
   accuracy, not accuracy: in the previous run 91% of the pairs failed, so accuracy mostly
   measured the base rate.)
2. *Calibration variants.* Hypothesis **pooled**: the agreement estimate under-estimates good
   segmentations (bias -0.11 at true Dice >= 0.7 in the previous run) because its map is learnt
   on single 64x64 reference patches, whose Dice is lower and noisier than a stack's pooled
   Dice; adding calibration rows pooled over `n_tiles` references of one source (mixtures of
   predictions and corruptions: `calibration_unit="pooled"`) removes that mismatch. Hypothesis
   **monotone**: constraining the map to rise with the four Dice-like agreement statistics
   (`monotone=True`) generalises better to unseen stacks. Keep rule: a variant (pooled,
   monotone, or both) replaces the current calibration (`calibration_unit="patch"`,
   `monotone=False`) as the library default only if, on the vesselnn real pairs, its agreement
   estimate has (a) lower MAE, (b) higher balanced accuracy @0.7 and (c) an AURC at most 0.005
   higher than the current calibration's, and (d) its accuracy on the corruption table drops by
   at most 0.02; among several, the lowest MAE. Otherwise nothing changes.
3. *Combination.* `combine="mean"` replaces `"min"` as the default only if, with the kept
   calibration, the combined estimate's balanced accuracy is higher **and** its AURC lower **and**
   its MAE at most 0.01 higher than with `"min"`.

Choosing among a few pre-registered variants on the same pairs that report them is a mild
selection on the test data; the pairs are held out from the monitors' references (other
stacks), not from this choice."""


def aurc(true: np.ndarray, confidence: np.ndarray) -> float:
    """Area under the risk-coverage curve, risk = 1 - true Dice, most confident first."""
    order = np.argsort(-confidence, kind="stable")
    risk = 1.0 - true[order]
    return float(np.mean(np.cumsum(risk) / np.arange(1, len(risk) + 1)))


def metrics(t: np.ndarray, e: np.ndarray | None, conf: np.ndarray | None = None) -> dict:
    conf = e if conf is None else conf
    out = {"n": len(t), "aurc": aurc(t, conf) if len(t) else float("nan")}
    if e is None:
        from scipy import stats

        out["spearman_rho"] = float(stats.spearmanr(conf, t)[0]) if len(t) > 2 and np.ptp(conf) > 0 else float("nan")
        return out
    if len(t) < 2:
        return out
    r = evaluate_estimates(t, e, threshold=0.7)
    bal = np.nanmean([r["sensitivity"], r["specificity"]])
    out.update(r, balanced=float(bal), bias=float(np.mean(e - t)))
    return out


def _f(v, fmt=".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


HEAD = ("| monitor | n | Pearson r | Spearman rho | MAE | accuracy @0.7 | sensitivity | specificity | "
        "balanced accuracy | AURC | bias (est - true) |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(label: str, m: dict) -> str:
    g = m.get
    return (f"| {label} | {m['n']} | {_f(g('pearson_r'))} | {_f(g('spearman_rho'))} | {_f(g('mae'))} | "
            f"{_f(g('accuracy'))} | {_f(g('sensitivity'))} | {_f(g('specificity'))} | {_f(g('balanced'))} | "
            f"{_f(g('aurc'))} | {_f(g('bias'), '+.3f')} |")


def load_rows() -> list[dict]:
    rows = [r for path in sorted(OUT.glob("monitor_pairs*.csv")) for r in csv.DictReader(open(path, encoding="utf-8"))]
    if len(rows) < 3:
        sys.exit(f"only {len(rows)} pairs in {OUT}/monitor_pairs*.csv; run the benchmark first")
    return rows


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    keys = ["true_dice", "combined", "agreement", "rca", "agreement_pooled", "agreement_monotone",
            "agreement_pooled_monotone", "low", "high", "assess_s", "sampling_s", "rca_s", "train_s", "load1"]
    num = {k: np.array([float(r[k]) for r in rows]) for k in keys}
    num["drift"] = np.array([float(r["drift"]) if r["drift"] != "" else 100.0 for r in rows])
    for v in ("", "_pooled", "_monotone", "_pooled_monotone"):
        a = num[f"agreement{v}"]
        num[f"min{v}"] = np.minimum(a, num["rca"])
        num[f"mean{v}"] = (a + num["rca"]) / 2
    return num


def monitors(num: dict, sel: np.ndarray, cal: str, comb: str) -> list[tuple[str, dict]]:
    t = num["true_dice"][sel]
    return [("RCA alone (extra_trees 50, calibration=\"forest\")", metrics(t, num["rca"][sel])),
            ("agreement alone", metrics(t, num[f"agreement{cal}"][sel])),
            ("drift alone (confidence = -percentile; no Dice estimate)", metrics(t, None, -num["drift"][sel])),
            (f"**combined** (the default after the keep rules: combine=\"{comb}\")",
             metrics(t, num[f"{comb}{cal}"][sel]))]


def report(speed_lines: list[str] | None) -> None:
    rows = load_rows()
    num = columns(rows)
    t = num["true_dice"]
    kind = np.array([r["kind"] for r in rows])
    dataset = np.array([r["dataset"] for r in rows])
    real = (kind == "real") & (dataset == "vesselnn")
    corr = kind == "corruption"
    metas = [json.loads(p.read_text()) for p in sorted(OUT.glob("monitor_pairs*.meta.json"))]
    lines = [KEEP_RULES, ""]
    n_models = len({(r["dataset"], r["fold"], r["seed"], r["k"], r["selection"], r["stage"]) for r in rows
                    if r["kind"] != "corruption"})
    wall = ", ".join(f"part {m['part']}: {m['wall_s'] / 60:.0f} min, load {m['load_start'][0]:.1f} at the start, "
                     f"{m['load_end'][0]:.1f} at the end" for m in metas)
    lines += ["**Protocol** (details in the script's docstring): vesselnn_2pm in 3 folds of 3 stacks; tiny TransUNet "
              "models (feature_size 8, 64x64) trained on core sets of the other 6 stacks: K in {5, 10, 25, 50, 200}, "
              "random or K-cover, 6 / 40 / 160 / 600 optimisation steps (early / late / long / xlong; xlong for K >= 50), "
              "seeds 0-2, in a "
              "fixed shuffled order split between two processes until a time budget ran out; each model segments a "
              "4x256x256 crop of each held-out stack (and, for seed 0, the tubenet OCT-A crop: cross-domain). References (48 "
              "agreement references of 64x64, 25 RCA references of 128x128) only from the 6 training stacks. "
              "tubenet: models trained on slices 0-47 of the bundled OCT-A volume, scored on 4 of slices 48-63. "
              "Corruptions: the ground truth of the held-out crops, corrupted, scored by one good model's monitor "
              "per fold.", "",
              RUN_NOTE, "",
              f"Run: two processes of 1 torch thread each at nice 5 on the shared 2-core machine ({wall}); "
              f"load average (1 min) during scoring: median {np.median(num['load1']):.1f}, range "
              f"{num['load1'].min():.1f}-{num['load1'].max():.1f}.", "",
              f"**{len(rows)} pairs** from {n_models} models: {int(real.sum())} vesselnn real-prediction pairs "
              f"(true Dice {t[real].min():.3f} to {t[real].max():.3f}, median {np.median(t[real]):.3f}; "
              f"**{int(np.sum(t[real] >= 0.7))} ({np.mean(t[real] >= 0.7):.0%}) with true Dice >= 0.7**), "
              f"{int(np.sum((kind == 'real') & (dataset == 'tubenet')))} tubenet pairs, "
              f"{int(np.sum(kind == 'cross-domain'))} cross-domain pairs (vesselnn models on OCT-A), "
              f"{int(corr.sum())} corrupted ground truths.", ""]

    # ---- keep rules
    tr = t[real]
    m_rca = metrics(tr, num["rca"][real])
    cand = {"": metrics(tr, num["agreement"][real])}
    cand.update({f"_{v}": metrics(tr, num[f"agreement_{v}"][real]) for v in ("pooled", "monotone", "pooled_monotone")})
    acc_corr = {v: float(np.mean((num[f"agreement{v}"][corr] >= 0.7) == (t[corr] >= 0.7))) if corr.any() else np.nan
                for v in cand}
    base = cand[""]
    passing = [v for v, m in cand.items() if v and m["mae"] < base["mae"] and m["balanced"] > base["balanced"]
               and m["aurc"] <= base["aurc"] + 0.005 and not (acc_corr[v] < acc_corr[""] - 0.02)]
    cal = min(passing, key=lambda v: cand[v]["mae"]) if passing else ""
    m_min, m_mean = metrics(tr, num[f"min{cal}"][real]), metrics(tr, num[f"mean{cal}"][real])
    comb = "mean" if (m_mean["balanced"] > m_min["balanced"] and m_mean["aurc"] < m_min["aurc"]
                      and m_mean["mae"] <= m_min["mae"] + 0.01) else "min"
    m_comb = m_mean if comb == "mean" else m_min
    default_ok = m_comb["balanced"] > m_rca["balanced"] and m_comb["aurc"] < m_rca["aurc"]
    names = {"": "current (patch rows, unconstrained)", "_pooled": "pooled", "_monotone": "monotone",
             "_pooled_monotone": "pooled + monotone"}
    lines += ["### Outcome of the keep rules", "",
              "| agreement calibration | MAE | balanced accuracy | AURC | accuracy on the corruptions | passes rule 2 |",
              "|---|---|---|---|---|---|"]
    for v, m in cand.items():
        lines.append(f"| {names[v]} | {m['mae']:.3f} | {m['balanced']:.3f} | {m['aurc']:.4f} | {_f(acc_corr[v])} | "
                     f"{'(baseline)' if not v else ('yes' if v in passing else 'no')} |")
    lines += ["", f"* Rule 2: **{'kept: ' + names[cal] if cal else 'no variant passes; the calibration stays as it was'}**.",
              f"* Rule 3: combine=\"min\" balanced accuracy {m_min['balanced']:.3f}, AURC {m_min['aurc']:.4f}, MAE "
              f"{m_min['mae']:.3f}; \"mean\" {m_mean['balanced']:.3f}, {m_mean['aurc']:.4f}, {m_mean['mae']:.3f} -> "
              f"**{comb}**.",
              f"* Rule 1: combined balanced accuracy {m_comb['balanced']:.3f} vs RCA alone {m_rca['balanced']:.3f}; "
              f"AURC {m_comb['aurc']:.4f} vs {m_rca['aurc']:.4f} -> **"
              + ("met: the combined QualityMonitor is the default of the loop and the demo" if default_ok
                 else "not met: RCA alone stays the default") + "**.", ""]
    (OUT / "monitor_decision.json").write_text(json.dumps({"calibration": cal, "combine": comb,
                                                           "default_quality_monitor": bool(default_ok)}))

    # ---- main table
    lines += ["### vesselnn, real predictions (leave-one-stack-out)", "",
              f"Base rate: {np.mean(tr < 0.7):.3f} of these pairs fail (true Dice < 0.7). Sensitivity = share of "
              "failed pairs flagged, specificity = share of good pairs passed, balanced accuracy = their mean. "
              f"AURC of an oracle (confidence = true Dice): {aurc(tr, tr):.3f}; of a random order: "
              f"{np.mean(1 - tr):.3f}.", "", HEAD]
    lines += [row(label, m) for label, m in monitors(num, real, cal, comb)]
    lines += [row("combined, combine=\"min\" (current calibration)", metrics(tr, num["min"][real])),
              row("combined, combine=\"mean\" (current calibration)", metrics(tr, num["mean"][real]))]
    lines += [row(f"agreement alone, {names[v]} calibration", cand[v]) for v in cand if v]
    lines += [""]

    # ---- goals
    lines += ["### Goals of issue 21 against this run (combined default, vesselnn real pairs)", "",
              "| goal | measured | met |", "|---|---|---|"]
    bias_kinds = {f"stage={s}": real & np.array([r["stage"] == s for r in rows]) for s in ("early", "late", "long", "xlong")}
    worst = max(bias_kinds.items(), key=lambda kv: abs(np.mean(num[f"{comb}{cal}"][kv[1]] - t[kv[1]])) if kv[1].any() else 0)
    wb = float(np.mean(num[f"{comb}{cal}"][worst[1]] - t[worst[1]])) if worst[1].any() else float("nan")
    acc_c = float(np.mean((num[f"{comb}{cal}"][corr] >= 0.7) == (t[corr] >= 0.7))) if corr.any() else float("nan")
    single = min(m_rca["aurc"], cand[cal]["aurc"], metrics(tr, None, -num["drift"][real])["aurc"])
    for goal, val, ok in (("accuracy@0.7 >= 0.90", m_comb["accuracy"], m_comb["accuracy"] >= 0.9),
                          ("Pearson r >= 0.90", m_comb["pearson_r"], m_comb["pearson_r"] >= 0.9),
                          ("Spearman >= 0.85", m_comb["spearman_rho"], m_comb["spearman_rho"] >= 0.85),
                          ("MAE <= 0.06", m_comb["mae"], m_comb["mae"] <= 0.06),
                          ("AURC below every single signal", m_comb["aurc"], m_comb["aurc"] < single),
                          ("corruptions: accuracy >= 0.85", acc_c, acc_c >= 0.85),
                          (f"bias within +/-0.05 on every stage (worst: {worst[0]})", wb, abs(wb) <= 0.05)):
        lines.append(f"| {goal} | {_f(val, '+.3f' if 'bias' in goal else '.3f')} | {'yes' if ok else '**no**'} |")
    lines += [""]

    # ---- per kind
    lines += ["### Per kind of prediction (vesselnn real pairs)", "", HEAD.replace("| monitor |", "| kind: monitor |")]
    groups = [("stage", ("early", "late", "long", "xlong")), ("selection", ("random", "kcover")),
              ("k", tuple(str(k) for k in (5, 10, 25, 50, 200)))]
    for key, values in groups:
        for v in values:
            sel = real & np.array([r[key] == v for r in rows])
            if sel.sum() < 2:
                continue
            for label, m in monitors(num, sel, cal, comb):
                lines.append(row(f"{key}={v}: {label.split(' (')[0]}", m))
    for lo, hi in ((0.0, 0.5), (0.5, 0.7), (0.7, 1.01)):
        sel = real & (t >= lo) & (t < hi)
        if sel.sum() >= 2:
            for label, m in monitors(num, sel, cal, comb):
                lines.append(row(f"true Dice in [{lo:g}, {min(hi, 1):g}): {label.split(' (')[0]}", m))
    lines += ["", "Correlations and AURC within a true-Dice band are over a narrow range; read the bias and the "
              "accuracy there.", ""]

    # ---- per stack
    lines += ["### Per held-out stack (vesselnn real pairs)", "",
              "| stack | n | true Dice | good pairs | MAE RCA | MAE agreement | MAE combined | bias combined | "
              "accuracy RCA | accuracy combined | AURC RCA | AURC combined |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    est = num[f"{comb}{cal}"]
    for v in sorted({r["stack"] for r, ok in zip(rows, real) if ok}):
        sel = real & np.array([r["stack"] == v for r in rows])
        tt = t[sel]
        lines.append(f"| {v} | {sel.sum()} | {tt.mean():.3f} | {int(np.sum(tt >= 0.7))} | "
                     f"{np.mean(np.abs(num['rca'][sel] - tt)):.3f} | {np.mean(np.abs(num[f'agreement{cal}'][sel] - tt)):.3f} | "
                     f"{np.mean(np.abs(est[sel] - tt)):.3f} | {np.mean(est[sel] - tt):+.3f} | "
                     f"{np.mean((num['rca'][sel] >= 0.7) == (tt >= 0.7)):.3f} | {np.mean((est[sel] >= 0.7) == (tt >= 0.7)):.3f} | "
                     f"{aurc(tt, num['rca'][sel]):.3f} | {aurc(tt, est[sel]):.3f} |")
    lines += [""]

    # ---- tubenet and cross-domain
    for title, sel in (("tubenet OCT-A volume: models trained on slices 0-47, scored on held-out slices",
                        (kind == "real") & (dataset == "tubenet")),
                       ("Cross-domain: vesselnn models scored on the OCT-A crop (references from vesselnn)",
                        kind == "cross-domain")):
        if sel.sum() >= 2:
            lines += [f"### {title}", "", f"true Dice {t[sel].min():.3f} to {t[sel].max():.3f} (median "
                      f"{np.median(t[sel]):.3f}), {int(np.sum(t[sel] >= 0.7))} of {int(sel.sum())} >= 0.7; drift "
                      f"percentile median {np.median(num['drift'][sel]):.0f}.", "", HEAD]
            lines += [row(label, m) for label, m in monitors(num, sel, cal, comb)] + [""]

    # ---- corruptions
    if corr.any():
        ck = np.array([r["corruption"] for r in rows])
        lines += ["### Corrupted ground truth", "",
                  "The manual masks of the held-out crops, corrupted, scored as if they were predictions (the "
                  "agreement signal compares them with one good model's samples: K=200, 600 steps). Goal: accuracy "
                  "@0.7 >= 0.85.", "",
                  "| corruption | n | true Dice | estimate RCA | estimate agreement | estimate combined | accuracy RCA "
                  "| accuracy agreement | accuracy combined |", "|---|---|---|---|---|---|---|---|---|"]
        order = list(dict.fromkeys(ck[corr]))
        for c in order:
            sel = corr & (ck == c)
            tt = t[sel]
            accs = [np.mean((num[k][sel] >= 0.7) == (tt >= 0.7)) for k in ("rca", f"agreement{cal}", f"{comb}{cal}")]
            lines.append(f"| {c} | {sel.sum()} | {tt.mean():.3f} | {num['rca'][sel].mean():.3f} | "
                         f"{num[f'agreement{cal}'][sel].mean():.3f} | {num[f'{comb}{cal}'][sel].mean():.3f} | "
                         + " | ".join(f"{a:.3f}" for a in accs) + " |")
        lines += ["", HEAD]
        lines += [row(label, m) for label, m in monitors(num, corr, cal, comb)] + [""]

    # ---- interval and decisions (as recorded: current calibration, combine="min")
    inside = np.mean((tr >= num["low"][real]) & (tr <= num["high"][real]))
    dec = [r["decision"] for r, ok in zip(rows, real) if ok]
    decided = [(r["decision"] == "pass") == (float(r["true_dice"]) >= 0.7) for r, ok in zip(rows, real)
               if ok and r["decision"] != "review"]
    lines += ["### Interval and decisions (as recorded by `assess`: current calibration, combine=\"min\")", "",
              f"Conformal interval (target coverage 0.9): the true Dice lies inside for {inside:.3f} of the vesselnn "
              f"real pairs; mean width {np.mean(num['high'][real] - num['low'][real]):.3f}. Decisions: "
              + ", ".join(f"{d} {dec.count(d)}" for d in ("pass", "review", "fail"))
              + f"; accuracy of the pass / fail decisions outside the review band: {_f(np.mean(decided) if decided else None)}.",
              "", f"Time per pair on the 4x256x256 crops (median, 1 thread, shared machine): assess "
              f"{np.median(num['assess_s'][real]):.2f} s, of which agreement sampling "
              f"{np.median(num['sampling_s'][real]):.2f} s and RCA {np.median(num['rca_s'][real]):.2f} s.", ""]
    if speed_lines:
        lines += ["### Speed on a synthetic 7x1024x1024 stack (goal: <= 5 s including the agreement samples)", "",
                  "`python benchmarks/bench_monitor.py --speed-only --agreement-only --threads 2`, 2 torch threads on "
                  "the shared 2-core machine:", "", *speed_lines, "",
                  "Measured at 14:40 UTC when the machine was idle (load below 1). A first attempt at 14:20 UTC, "
                  "at load 5 while other processes had priority, took 58 s and 30 s for the same two rows: the cost "
                  "is all in the network's forward passes, so it grows with the load. The calibration options change "
                  "only `fit`.", ""]
    figure(rows, num, cal, comb)
    lines += [f"Figure: `docs/figures/{FIGURE.name}` (estimate vs true Dice, coloured by kind of prediction)."]
    write_result("monitor", "QualityMonitor on real predictions of graded quality (vesselnn_2pm, tubenet; issue 21)",
                 "\n".join(lines), COMMAND)


def figure(rows: list[dict], num: dict, cal: str, comb: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = num["true_dice"]
    kind = np.array([r["kind"] if r["dataset"] == "vesselnn" or r["kind"] != "real" else "tubenet" for r in rows])
    stage = np.array([r["stage"] for r in rows])
    styles = [("vesselnn, early (6 steps)", (kind == "real") & (stage == "early"), "tab:red", "o"),
              ("vesselnn, late (40)", (kind == "real") & (stage == "late"), "tab:orange", "o"),
              ("vesselnn, long (160)", (kind == "real") & (stage == "long"), "tab:green", "o"),
              ("vesselnn, xlong (600)", (kind == "real") & (stage == "xlong"), "tab:blue", "o"),
              ("tubenet (OCT-A)", kind == "tubenet", "tab:purple", "s"),
              ("cross-domain (vesselnn model on OCT-A)", kind == "cross-domain", "0.5", "x"),
              ("corrupted ground truth", kind == "corruption", "k", "^")]
    panels = (("rca", "RCA alone"), (f"agreement{cal}", "agreement alone"),
              (f"{comb}{cal}", f"combined (default, combine=\"{comb}\")"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8), sharex=True, sharey=True)
    for ax, (key, title) in zip(axes, panels):
        for label, sel, color, marker in styles:
            if sel.any():
                ax.scatter(t[sel], num[key][sel], s=14, alpha=0.65, c=color, marker=marker, label=label,
                           linewidths=0.8 if marker == "x" else 0)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.axhline(0.7, color="r", lw=0.7, ls=":")
        ax.axvline(0.7, color="r", lw=0.7, ls=":")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("true Dice (against the manual mask)")
    axes[0].set_ylabel("estimated Dice (no ground truth)")
    axes[0].text(0.71, 0.02, "pass/fail threshold 0.7", color="r", fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=100)
    plt.close(fig)
