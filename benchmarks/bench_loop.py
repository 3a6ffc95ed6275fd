"""The whole data-centric loop on vesselnn_2pm: the evidence tables of benchmarks/RESULTS.md.

Protocol (split by acquisition group, never by patch): pretrain and select on the burgess2014 +
santos2015 stacks (128x128 patches), evaluate on the poon2015 stacks (whole stacks with
blended sliding windows, Dice per stack). For every seed:

* one MAE pretrained on all training patches (embeddings for selection, encoder for the segmenter);
* core sets of K = 5, 10, 25 by random, k-center and K-cover selection; a segmenter trained on
  each from scratch and from the MAE encoder, for the same number of optimisation steps;
* M0 = the K-cover K=25 MAE model; hunting ranks the remaining training patches; M1 = M0
  fine-tuned with the 3 top-ranked (diverse) patches and core replay; the comparison is M0
  fine-tuned the same way with 3 random patches; the person is simulated by the real masks;
* a fully supervised model (all training patches, MAE encoder, same steps) as the reference;
* RCA on the pipeline's own predictions of the test stacks (every model above), with the
  K-cover K=25 core set as references.

Reports mean ± SD over seeds, Cohen's d (K-cover vs random, per-stack Dice pooled over seeds),
the goals, and wall time per stage. Appends one record per seed (fingerprint, settings, seconds
per stage, Dice) to the user's runs file that ``biodatacentric.plan`` reads
(``$BIODATACENTRIC_RUNS``; see ``biodatacentric._runs``). Writes benchmarks/results/loop.md (``_common.write_result``)
from the seeds measured in this run only; ``--workers N`` measures the seeds in N child processes
of this run at once. Per-seed JSON under ``benchmarks/_out/loop/`` is a raw record, never read
back by a later run, so a fresh clone reproduces the tables. Data: ``BIODATACENTRIC_DATA``.

    python benchmarks/bench_loop.py [--seeds 0 1 2] [--ks 5 10 25] [--steps 300] [--workers 3] [--quick]

``--quick`` is a smoke test of the script, not evidence (report to ``benchmarks/_out/loop_quick.md``):
one seed, K = 5, tiny models, 10 steps, every 8th test slice. Measured 2026-12-03 at 1 torch
thread: 290 s of CPU time (RCA on the 18 model/stack pairs and MC-dropout hunting over the
1,450 patches are most of it), so about 5 minutes on an idle core; on the shared machine,
loaded 8-12 and leaving it 8 % of a core, it took 63 min of wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections import defaultdict

import numpy as np

from _common import OUT, require_vesselnn, write_result

RAW = OUT / "loop"


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    sp = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return float((a.mean() - b.mean()) / sp) if sp > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="core-set sizes; default 5 10 25 (--quick: 5)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps per segmenter; default 300 "
                    "(--quick: 10)")
    ap.add_argument("--mae-epochs", type=int, default=None, help="default 20 (--quick: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test of the script (a few minutes): tiny models, one seed, K=5, few steps, "
                         "every 8th test slice; its report goes to benchmarks/_out/loop_quick.md, not results/")
    ap.add_argument("--test-slice-step", type=int, default=None,
                    help="evaluate on every k-th slice of each test stack (whole slices, all stacks); default 1 "
                         "(--quick: 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    ap.add_argument("--workers", type=int, default=1,
                    help="measure the seeds in this many child processes at once (tables built in this run)")
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)   # a child: write raw results here
    args = ap.parse_args()
    for name, full, quick in (("seeds", [0, 1, 2], [0]), ("ks", [5, 10, 25], [5]), ("steps", 300, 10),
                              ("mae_epochs", 20, 1), ("test_slice_step", 1, 8)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.workers > 1 and len(args.seeds) > 1 and args.child_out is None:
        return report(args, _measure_in_children(args))
    import tifffile
    import torch

    from biodatacentric.nn.vit import ViTEncoder
    from biodatacentric import (KCenterSelector, KCoverSelector, MAEPretrainer, MCDropoutHunter, RandomSelector,
                                RCAMonitor, TransUNetSegmenter, load_folder)
    from biodatacentric.metrics import dice

    folder = require_vesselnn()
    times: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    train = load_folder(folder, patch_shape=(128, 128), names=["burgess2014", "santos2015"])
    test_files = sorted((folder / "images").glob("poon2015*.tif"))
    step = max(1, args.test_slice_step)
    tests = [(f.stem, tifffile.imread(f)[::step], (tifffile.imread(folder / "masks" / f.name)[::step] > 0).astype(np.uint8))
             for f in test_files]
    if args.threads:
        torch.set_num_threads(args.threads)
    times["load"] += time.perf_counter() - t0
    arch = dict(preset="tiny") if args.quick else dict(preset="small", embed_dim=128, depth=4, num_heads=4,
                                                          patch_size=16)
    bs = 8

    def train_seg(core, encoder, seed):
        """Same architecture either way: 'scratch' starts from a freshly initialised encoder."""
        if not isinstance(encoder, torch.nn.Module):
            torch.manual_seed(seed)
            encoder = ViTEncoder(**mae.encoder_.config)
        epochs = max(1, math.ceil(args.steps / math.ceil(len(core) / bs)))
        seg = TransUNetSegmenter(preset=arch["preset"], encoder=encoder, img_size=128, max_epochs=epochs,
                                 batch_size=bs, random_state=seed, progress=False)
        return seg.fit(core)

    def test_dice(seg):
        preds, scores = [], []
        for name, img, msk in tests:
            p = seg.predict_image(img, axes="ZYX", progress=False)
            preds.append(p)
            scores.append(dice(p, msk))
        return np.array(scores), preds

    measured = []      # raw results of the seeds measured in this run
    rows = []          # one per (seed, K, selector, init)
    loop = []          # M0 / M1 / M0+3 random per seed
    full = []
    model_preds = []   # (seed, scores, predictions) of every trained model, for RCA
    rca_pairs = []     # (true Dice, RCA estimate)
    for seed in args.seeds:
        n_pairs_before = len(rca_pairs)
        t0 = time.perf_counter()
        mae = MAEPretrainer(**arch, img_size=128, max_epochs=args.mae_epochs, batch_size=32,
                            n_components=64, random_state=seed, progress=False).fit(train)
        emb = mae.transform(train)
        times["1 pretrain + embed"] += time.perf_counter() - t0
        cores = {}
        for K in args.ks:
            for sel_name, sel in (("random", RandomSelector(n_select=K, random_state=seed)),
                                  ("k-center", KCenterSelector(n_select=K, random_state=seed)),
                                  ("K-cover", KCoverSelector(n_select=K, random_state=seed))):
                t0 = time.perf_counter()
                idx = sel.fit(emb).selected_indices_
                times["2 select"] += time.perf_counter() - t0
                cores[(K, sel_name)] = idx
                for init, enc in (("scratch", None), ("MAE", mae.encoder_)):
                    t0 = time.perf_counter()
                    seg = train_seg(train[idx], enc, seed)
                    times["segment (train)"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    scores, preds = test_dice(seg)
                    times["segment (predict test stacks)"] += time.perf_counter() - t0
                    rows.append({"seed": seed, "K": K, "selector": sel_name, "init": init,
                                 "dice": float(scores.mean()), "per_stack": scores.tolist()})
                    if K == max(args.ks) and sel_name == "K-cover" and init == "MAE":
                        m0, m0_scores, m0_preds = seg, scores, preds
                    model_preds.append((seed, scores, preds))
        # stage 3: hunt on the training patches outside the core, M1 vs M0 + 3 random
        core_idx = cores[(max(args.ks), "K-cover")]
        core = train[core_idx]
        t0 = time.perf_counter()
        hunter = MCDropoutHunter(m0, n_samples=5 if args.quick else 20, mode="full", random_state=seed,
                                 transforms="none", aggregate="top_q",   # the defaults when loop.md was measured
                                 progress=False).fit(train)
        crit = hunter.select(3, exclude=core_idx, diversity="one_per_slice")
        times["3 hunt"] += time.perf_counter() - t0
        rnd = np.random.default_rng(seed).choice(np.setdiff1d(np.arange(len(train)), core_idx), 3, replace=False)
        state = {k: v.clone() for k, v in m0.module_.state_dict().items()}
        result = {"seed": seed, "M0": float(m0_scores.mean())}
        for name, pick in (("M1", crit), ("M0 + 3 random", rnd)):
            m0.module_.load_state_dict(state)
            t0 = time.perf_counter()
            m0.fine_tune(train[pick], replay=core, n_replay=7, max_epochs=15 if not args.quick else 2)
            times["3 fine-tune"] += time.perf_counter() - t0
            result[name] = float(test_dice(m0)[0].mean())
        loop.append(result)
        # the fully supervised reference
        t0 = time.perf_counter()
        sup = train_seg(train, mae.encoder_, seed)
        times["fully supervised (train)"] += time.perf_counter() - t0
        full.append(float(test_dice(sup)[0].mean()))
        # stage 4: RCA on every model's predictions of the test stacks, references = the K-cover core
        t0 = time.perf_counter()
        rca = RCAMonitor(random_state=seed).fit(core)
        for _, scores, preds in [m for m in model_preds if m[0] == seed]:
            for (name, img, msk), p, d in zip(tests, preds, scores):
                if p.min() == p.max():
                    continue  # a blank prediction: RCA needs two classes
                rca_pairs.append((float(d), float(rca.score(img, p, axes="ZYX")["estimated_dice"])))
        times["4 RCA"] += time.perf_counter() - t0
        RAW.mkdir(parents=True, exist_ok=True)
        raw = {"seed": seed, "settings": _settings(args), "n_train": len(train), "n_tests": len(tests),
               "threads": torch.get_num_threads(),
               "rows": [r for r in rows if r["seed"] == seed], "loop": [r for r in loop if r["seed"] == seed],
               "full": full[-1], "rca": [p for p in rca_pairs[n_pairs_before:]], "times": dict(times)}
        (RAW / f"seed{seed}{'_quick' if args.quick else ''}.json").write_text(json.dumps(raw, indent=1))  # record
        measured.append(raw)
        times.clear()
    if args.child_out is not None:
        Path(args.child_out).write_text(json.dumps(measured))
        return
    report(args, measured)


def _measure_in_children(args) -> list[dict]:
    """Each seed in a child process of this run (``args.workers`` at a time); their raw results."""
    flags = ["--ks", *map(str, args.ks), "--steps", str(args.steps), "--mae-epochs", str(args.mae_epochs),
             "--test-slice-step", str(args.test_slice_step)] + (["--quick"] if args.quick else []) + \
        (["--threads", str(args.threads)] if args.threads else [])
    out: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(args.seeds)
        running: list[tuple[subprocess.Popen, Path]] = []
        while pending or running:
            while pending and len(running) < args.workers:
                seed = pending.pop(0)
                path = Path(tmp) / f"seed{seed}.json"
                running.append((subprocess.Popen([sys.executable, __file__, "--seeds", str(seed), *flags,
                                                  "--child-out", str(path)]), path))
            proc, path = running.pop(0)
            if proc.wait() != 0:
                raise SystemExit(f"the child measuring {path.stem} failed (exit status {proc.returncode})")
            out += json.loads(path.read_text())
    return out


def _settings(args) -> dict:
    return {"ks": list(args.ks), "steps": args.steps, "mae_epochs": args.mae_epochs, "quick": bool(args.quick),
            "test_slice_step": int(args.test_slice_step)}


#: this benchmark's stages in the runs table's terms (biodatacentric.plan.record_run)
RUN_STAGES = {"1 pretrain + embed": "pretrain", "segment (train)": "segment", "fully supervised (train)": "segment",
              "3 hunt": "hunt", "3 fine-tune": "hunt"}


def _record_runs(args, raws: list[dict], arch: dict) -> None:
    """One record per measured seed in the user's runs file (fingerprint, settings, measured
    seconds per stage, Dice), as the demo writes; BIODATACENTRIC_RUNS=off records nothing."""
    from biodatacentric import load_folder
    from biodatacentric._runs import user_runs_file
    from biodatacentric.plan import record_run

    path = user_runs_file()
    if path is None:
        return
    train = load_folder(require_vesselnn(), patch_shape=(128, 128), names=["burgess2014", "santos2015"])
    for r in raws:
        stages: dict[str, float] = defaultdict(float)
        for k, v in r["times"].items():
            stages[RUN_STAGES.get(k, k)] += v
        loop = r["loop"][0] if r["loop"] else {}
        results = {"dice_m0": loop.get("M0"), "dice_m1": loop.get("M1"), "dice_full": r["full"]}
        cfg = {**_settings(args), "seed": r["seed"], "arch": arch, "threads": r.get("threads")}
        record_run(path, "bench_loop" + ("_quick" if args.quick else ""), train, cfg, dict(stages),
                   sum(r["times"].values()), results, None)
    print(f"{len(raws)} run record(s) appended to {path}", flush=True)


def report(args, raws: list[dict]) -> None:
    """Tables from the seeds measured in this run."""
    raws = sorted(raws, key=lambda r: r["seed"])
    rows = [x for r in raws for x in r["rows"]]
    loop = [x for r in raws for x in r["loop"]]
    full = [r["full"] for r in raws]
    rca_pairs = [tuple(x) for r in raws for x in r["rca"]]
    times: dict[str, float] = defaultdict(float)
    for r in raws:
        for k, v in r["times"].items():
            times[k] += v
    seeds = [r["seed"] for r in raws]
    n_train, n_tests = raws[0]["n_train"], raws[0]["n_tests"]
    arch = dict(preset="tiny") if args.quick else dict(preset="small", embed_dim=128, depth=4, num_heads=4,
                                                          patch_size=16)
    bs = 8
    from biodatacentric import RCAMonitor

    # ------------------------------------------------------------------ tables
    def agg(vals):
        v = np.asarray(vals, float)
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"

    lines = ["| K | selector | scratch | MAE |", "|---|---|---|---|"]
    for K in args.ks:
        for s in ("random", "k-center", "K-cover"):
            cells = [agg([r["dice"] for r in rows if r["K"] == K and r["selector"] == s and r["init"] == i])
                     for i in ("scratch", "MAE")]
            lines.append(f"| {K} | {s} | {cells[0]} | {cells[1]} |")
    dlines = []
    for K in args.ks:
        for init in ("scratch", "MAE"):
            a = [d for r in rows if r["K"] == K and r["selector"] == "K-cover" and r["init"] == init for d in r["per_stack"]]
            b = [d for r in rows if r["K"] == K and r["selector"] == "random" and r["init"] == init for d in r["per_stack"]]
            dlines.append(f"| {K} | {init} | {np.mean(a) - np.mean(b):+.3f} | {cohens_d(a, b):.2f} | {len(a)} vs {len(b)} |")
    m0 = [r["M0"] for r in loop]
    m1 = [r["M1"] for r in loop]
    m0r = [r["M0 + 3 random"] for r in loop]
    n_annot = max(args.ks) + 3
    frac = np.mean(m1) / np.mean(full)
    pairs = rca_pairs
    t = np.array([p[0] for p in pairs])
    e = np.array([p[1] for p in pairs])
    ev = RCAMonitor().evaluate(t, e) if len(pairs) > 2 else {}
    kc = np.mean([r["dice"] for r in rows if r["K"] == max(args.ks) and r["selector"] == "K-cover" and r["init"] == "MAE"])
    rd = np.mean([r["dice"] for r in rows if r["K"] == max(args.ks) and r["selector"] == "random" and r["init"] == "MAE"])
    mae_mean = np.mean([r["dice"] for r in rows if r["init"] == "MAE"])
    by_key = {(r["seed"], r["K"], r["selector"], r["init"]): r["dice"] for r in rows}
    pairs_init = [by_key[(sd, K, sl, "MAE")] - by_key[(sd, K, sl, "scratch")] for (sd, K, sl, i) in by_key
                  if i == "MAE" and (sd, K, sl, "scratch") in by_key]
    n_mae_wins = int(np.sum(np.asarray(pairs_init) > 0))
    scr_mean = np.mean([r["dice"] for r in rows if r["init"] == "scratch"])
    goals = [
        (f"K-cover beats random at K={max(args.ks)} by >= 0.05 Dice (MAE init)", kc - rd >= 0.05, f"{kc - rd:+.3f}"),
        ("MAE pretraining beats scratch (mean over all runs)", mae_mean > scr_mean,
         f"{mae_mean:.3f} vs {scr_mean:.3f}; MAE better in {n_mae_wins} of {len(pairs_init)} paired runs "
         f"(same K, selector and seed), mean paired difference {np.mean(pairs_init):+.3f}"),
        ("M1 beats M0 and M0 + 3 random", np.mean(m1) > np.mean(m0) and np.mean(m1) > np.mean(m0r),
         f"{np.mean(m1):.3f} vs {np.mean(m0):.3f} / {np.mean(m0r):.3f}"),
        ("<= 2% of patches annotated reach >= 90% of fully supervised Dice",
         n_annot / n_train <= 0.02 and frac >= 0.9, f"{100 * n_annot / n_train:.1f}% of patches, {100 * frac:.0f}%"),
    ]
    body = f"""
Training patches: {n_train} (128x128, burgess2014 + santos2015); test: {n_tests} poon2015 stacks,
Dice per whole stack{f" (every {args.test_slice_step}th slice)" if args.test_slice_step > 1 else ""}. Seeds {seeds}; every segmenter trained for {args.steps} steps of batch {bs};
MAE {args.mae_epochs} epochs; architecture {arch}.

### Test Dice by core-set size, selector and encoder initialisation (mean ± SD over seeds)

{chr(10).join(lines)}

### K-cover vs random: difference of means and Cohen's d (per-stack Dice pooled over seeds)

| K | init | K-cover − random | Cohen's d | n |
|---|---|---|---|---|
{chr(10).join(dlines)}

### Hunting: M1 vs M0 vs M0 + 3 random (mean ± SD over seeds)

| model | test Dice |
|---|---|
| M0 (K-cover K={max(args.ks)}, MAE) | {agg(m0)} |
| M0 + 3 random patches | {agg(m0r)} |
| M1 (M0 + 3 hunted patches) | {agg(m1)} |
| fully supervised ({n_train} patches) | {agg(full)} |

Core set + critical set: {n_annot} patches = {100 * n_annot / n_train:.2f}% of the training patches; M1 reaches
{100 * frac:.0f}% of the fully supervised Dice.

### RCA on the pipeline's own test predictions

{len(pairs)} (model, test stack) pairs, references = the K-cover K={max(args.ks)} core set:
Pearson r {ev.get('pearson_r', float('nan')):.2f}, Spearman rho {ev.get('spearman_rho', float('nan')):.2f},
MAE {ev.get('mae', float('nan')):.3f}, pass/fail accuracy at 0.7 {ev.get('accuracy', float('nan')):.2f}.

### Goals

| goal | met | measured |
|---|---|---|
{chr(10).join(f"| {g} | {'yes' if ok else 'NO'} | {m} |" for g, ok, m in goals)}

### Wall time per stage (summed over seeds)

Seeds may run in concurrent child processes (`--workers`) on a shared machine, so these are
pessimistic wall times, not a clean speed measurement.

| stage | seconds |
|---|---|
{chr(10).join(f"| {k} | {v:.0f} |" for k, v in times.items())}
"""
    if args.workers > 1 and len(raws) > 1:
        threads = sorted({r.get("threads", 1) for r in raws})
        body = (f"Measured as one child process per seed ({args.workers} at a time, {threads} torch thread(s) "
                "each); the machine line above describes the parent process.\n" + body)
    cmd = "python benchmarks/bench_loop.py " + " ".join(
        [f"--seeds {' '.join(map(str, seeds))}", f"--ks {' '.join(map(str, args.ks))}", f"--steps {args.steps}",
         f"--mae-epochs {args.mae_epochs}", f"--test-slice-step {args.test_slice_step}"]
        + ([f"--workers {args.workers}"] if args.workers > 1 else []) + (["--quick"] if args.quick else []))
    _record_runs(args, raws, arch)
    # a smoke test's tables are not evidence: they go to _out/, never to results/
    path = write_result("loop_quick" if args.quick else "loop", "The whole loop on vesselnn_2pm", body, cmd,
                        folder=OUT if args.quick else None)
    print(path.read_text())


if __name__ == "__main__":
    main()
