"""Stage 3 benchmark: MC-dropout hunting on real two-photon vessel stacks (vesselnn_2pm).

Writes ``benchmarks/results/hunt.md`` (every number in it is computed here) and caches M0
under ``benchmarks/_out/hunt/`` so a rerun skips its training.

1. Speed, side by side in one process: ``mode="decoder_only"`` vs ``mode="full"`` at T=20 on
   the same patches (median of repeats, alternating), and the Spearman correlation of the two
   rankings over the hunting pool.
2. Uncertainty vs error: M0 = TransUNetSegmenter trained on a 25-patch core set (K-cover on
   simple image embeddings) of the burgess2014 + santos2015 stacks; for a pool of other
   patches of those stacks, the Spearman correlation between each measure x aggregation
   score and the true error 1 - Dice(M0 prediction, real mask).
3. Hunting helps?: M1 = M0 fine-tuned with the 3 best-ranked pool patches (default hunter,
   one per stack/slice neighbourhood; real masks stand in for the person), replaying the
   core set, vs M0 fine-tuned the same way with 3 random pool patches, vs M0; Dice on the
   held-out poon2015 stacks, over 3 seeds (fine-tuning seed and random picks).

Run: ``python benchmarks/bench_hunt.py`` (about 15-20 min on 2 busy CPU cores);
``--quick`` for a smoke test.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from biodatacentric import Patches
from biodatacentric.hunt import MCDropoutHunter
from biodatacentric.hunt.aggregate import AGGREGATES
from biodatacentric.hunt.uncertainty import MEASURES
from biodatacentric.metrics import dice_per_sample
from biodatacentric.nn.transunet import TransUNet
from biodatacentric.segment import TransUNetSegmenter

ROOT = Path(__file__).resolve().parent
DATA = Path("/work/shared/data/vesselnn_2pm")
OUT = ROOT / "_out" / "hunt"
RESULTS = ROOT / "results" / "hunt.md"
TRAIN_GROUPS = ("burgess2014", "santos2015")
TEST_GROUP = "poon2015"


def stacks(group: str) -> list[str]:
    files = sorted(str(p) for p in (DATA / "images").glob(f"{group}*.tif"))
    if not files:
        raise FileNotFoundError(f"no {group}* stacks in {DATA / 'images'}")
    return files


def embeddings(patches: Patches, block: int = 8) -> np.ndarray:
    """Cheap image embedding: block-averaged pixels, centred per feature."""
    imgs = patches.images()
    n, h, w = imgs.shape
    e = imgs.reshape(n, h // block, block, w // block, block).mean(axis=(2, 4)).reshape(n, -1)
    return e - e.mean(axis=0, keepdims=True)


def per_stack_dice(model: TransUNetSegmenter, test: Patches) -> dict:
    pred = model.predict(test)
    true = test.masks()
    src = test.index["source"]
    out = {}
    for s, name in enumerate(test.sources):
        sel = src == s
        p, t = pred[sel].astype(bool), true[sel].astype(bool)
        out[Path(name).stem] = float(2 * np.sum(p & t) / max(p.sum() + t.sum(), 1))
    out["mean"] = float(np.mean(list(out.values())))
    return out


def best_of(rho: dict) -> str:
    """Key with the highest finite correlation (a constant score gives NaN: no ranking)."""
    return max(rho, key=lambda k: rho[k] if np.isfinite(rho[k]) else -np.inf)


def speed_rows(label: str, module: torch.nn.Module, patches: Patches, T: int, repeats: int,
               precision: str) -> list[dict]:
    """Full vs decoder-only MC dropout (the hunter uses the module's decode_prepare/decode_sample)."""
    variants = {"full": (module, "full"), "decoder_only": (module, "decoder_only")}
    times = {k: [] for k in variants}
    for _ in range(repeats):  # alternate the variants so load changes hit all of them
        for k, (m, mode) in variants.items():
            h = MCDropoutHunter(m, n_samples=T, mode=mode, batch_size=4, precision=precision, random_state=0,
                               progress=False)
            t0 = time.perf_counter()
            h.fit(patches)
            times[k].append(time.perf_counter() - t0)
    full = float(np.median(times["full"]))
    return [{"model": label, "variant": k, "median_s": float(np.median(v)), "speedup": full / float(np.median(v)),
             "per_patch_ms": 1000 * float(np.median(v)) / len(patches)} for k, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--pool", type=int, default=80, help="hunting pool size (non-core training patches)")
    ap.add_argument("--epochs", type=int, default=30, help="M0 training epochs")
    ap.add_argument("--ft-epochs", type=int, default=8, help="fine-tuning epochs")
    ap.add_argument("--test-every", type=int, default=4, help="use every k-th slice of the test stacks")
    ap.add_argument("--samples", type=int, default=20, help="MC samples T")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.pool, args.epochs, args.ft_epochs, args.test_every, args.samples, args.seeds = 12, 2, 1, 12, 4, 1
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ data
    train_files = [f for g in TRAIN_GROUPS for f in stacks(g)]
    test_files = stacks(TEST_GROUP)
    shape = (128, 128)
    train_all = Patches.from_tiff(train_files, masks=DATA / "masks", patch_shape=shape)
    test_all = Patches.from_tiff(test_files, masks=DATA / "masks", patch_shape=shape)
    test = test_all[test_all.index["z"] % args.test_every == 0]
    print(f"train patches {len(train_all)}, test patches {len(test)} (every {args.test_every}th slice)",
          flush=True)

    # core set: K-cover (facility location) on cheap embeddings of the training stacks
    try:
        from biodatacentric.assess import KCoverSelector

        core_idx = KCoverSelector(n_select=25, random_state=0).fit(embeddings(train_all)).selected_indices_
        core_rule = "KCoverSelector(n_select=25) on 16x16 block-mean embeddings"
    except Exception as exc:  # selector not available: random core set
        print(f"KCoverSelector unavailable ({exc}); random core set", flush=True)
        core_idx = rng.choice(len(train_all), 25, replace=False)
        core_rule = "random 25 patches"
    core = train_all[core_idx]
    rest = np.setdiff1d(np.arange(len(train_all)), core_idx)
    pool_idx = np.sort(rng.choice(rest, size=min(args.pool, len(rest)), replace=False))
    pool = train_all[pool_idx]

    # ------------------------------------------------------------------ M0
    m0_path = OUT / ("m0_quick" if args.quick else f"m0_e{args.epochs}_headdrop")
    seg_params = dict(preset="tiny", feature_size=8, max_epochs=args.epochs, batch_size=8, lr=1e-3,
                      decoder_dropout=0.1, decoder_dropout_at="head", mlp_dropout=0.1, random_state=0,
                      progress=False)
    t0 = time.perf_counter()
    if (m0_path / "config.json").is_file():
        m0 = TransUNetSegmenter.load(m0_path)
        m0_time = json.loads((OUT / f"{m0_path.name}_time.json").read_text())["seconds"]
        print(f"M0 loaded from {m0_path}", flush=True)
    else:
        m0 = TransUNetSegmenter(**seg_params).fit(core)
        m0_time = time.perf_counter() - t0
        m0.save(m0_path)
        (OUT / f"{m0_path.name}_time.json").write_text(json.dumps({"seconds": m0_time}))
    print(f"M0 ready ({m0_time:.0f} s training)", flush=True)
    precision = m0._runtime()[1]

    # ------------------------------------------------------------------ (2) score vs error
    t0 = time.perf_counter()
    hunter = MCDropoutHunter(m0, n_samples=args.samples, mode="full", random_state=0, progress=False).fit(pool)
    t_full_pool = time.perf_counter() - t0
    table = hunter.score_table(pool)
    pred = m0.predict(pool)
    err = 1.0 - dice_per_sample(pred, pool.masks())
    rho = {k: float(spearmanr(v, err).statistic) for k, v in table.items()}
    print(f"(2) done: best {best_of(rho)} rho={rho[best_of(rho)]:.3f}", flush=True)

    # ------------------------------------------------------------------ (1) speed + ranking agreement
    t0 = time.perf_counter()
    hunter_dec = MCDropoutHunter(m0, n_samples=args.samples, mode="decoder_only", random_state=0,
                                 progress=False).fit(pool)
    t_dec_pool = time.perf_counter() - t0
    rank_rho = float(spearmanr(hunter.scores_, hunter_dec.scores_).statistic)
    top10 = len(set(hunter.ranking_[:10]) & set(hunter_dec.ranking_[:10]))
    speed_patches = pool[:4 if args.quick else 8]
    speed = speed_rows("M0 (tiny preset, feature_size 8)", m0.module_, speed_patches, args.samples,
                       2 if args.quick else 3, precision)
    torch.manual_seed(0)
    small_cfg = dict(img_size=128, patch_size=16, embed_dim=256, depth=6, num_heads=8, mlp_ratio=4.0,
                     feature_size=8, drop=0.1, decoder_dropout=0.1, decoder_dropout_at="head")
    small = TransUNet(**small_cfg).eval()
    speed += speed_rows("small preset, feature_size 8 (untrained; timing only)", small,
                        pool[:2 if args.quick else 4], args.samples, 2 if args.quick else 3, precision)
    print("(1) done", flush=True)

    # ------------------------------------------------------------------ (3) M1 vs random vs M0
    d_m0 = per_stack_dice(m0, test)
    hunted = {"hunted, default rule (M1)": hunter.select(3, diversity="one_per_slice")}
    best_key = best_of(rho)  # chosen on the training pool only; the test stacks are never used
    if best_key != "mutual_information/top_q":
        measure, agg = best_key.split("/")
        kw = dict(aggregate="structure", branch_score="disconnect") if measure == "disconnect" \
            else dict(measure=measure, aggregate=agg)
        h_best = MCDropoutHunter(m0, n_samples=args.samples, random_state=0, progress=False, **kw).fit(pool)
        hunted[f"hunted, best rule of part 2 ({best_key})"] = h_best.select(3, diversity="one_per_slice")
    true_fg = pool.masks().reshape(len(pool), -1).mean(axis=1)
    pred_fg = pred.reshape(len(pool), -1).mean(axis=1)
    runs = []
    for seed in range(args.seeds):
        picks = {**hunted, "random": np.random.default_rng(100 + seed).choice(len(pool), 3, replace=False)}
        for name, sel in picks.items():
            m = copy.deepcopy(m0)
            m._seed = 1000 + seed  # fine-tuning seed (fine_tune draws its seed from the fit seed)
            m.fine_tune(pool[sel], replay=core, max_epochs=args.ft_epochs)
            d = per_stack_dice(m, test)
            runs.append({"seed": seed, "variant": name, "picks": [int(i) for i in sel],
                         "pool_error_of_picks": float(err[sel].mean()),
                         "true_fg_of_picks": float(true_fg[sel].mean()), "pred_fg_of_picks": float(pred_fg[sel].mean()),
                         **{f"dice_{k}": v for k, v in d.items()}})
            print(f"(3) seed {seed} {name}: test Dice {d['mean']:.4f}", flush=True)
    total = time.perf_counter() - t_start

    # ------------------------------------------------------------------ report
    L = []
    L.append("# MCDropoutHunter benchmark (stage 3)\n")
    L.append(f"Written by `benchmarks/bench_hunt.py{' --quick' if args.quick else ''}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); total run time {total / 60:.1f} min "
             f"on {args.threads} CPU threads ({platform.processor() or platform.machine()}, shared with other "
             f"jobs, so absolute times are noisy; ratios come from alternating repeats in one run), torch "
             f"{torch.__version__}, precision {precision}.\n")
    L.append("## Setup\n")
    L.append(f"- Data: `vesselnn_2pm`, 128x128 patches without overlap, per-stack percentile normalisation. "
             f"Training stacks ({', '.join(TRAIN_GROUPS)}): {len(train_all)} patches; test stacks "
             f"({TEST_GROUP}, held out): every {args.test_every}th slice, {len(test)} patches.")
    seg_args = ", ".join(f"{k}={v!r}" for k, v in seg_params.items())
    L.append(f"- Core set: {core_rule}. M0 = `TransUNetSegmenter({seg_args})` trained on the core "
             f"({m0_time:.0f} s).")
    L.append(f"- Hunting pool: {len(pool)} random non-core training patches. T = {args.samples} MC samples, "
             f"seed 0.\n")

    L.append("## 1. Speed: decoder-only vs full MC dropout (T = %d, same patches)\n" % args.samples)
    L.append("| model | variant | median time (s) | ms / patch | speed-up vs full |")
    L.append("|---|---|---|---|---|")
    for r in speed:
        L.append(f"| {r['model']} | {r['variant']} | {r['median_s']:.2f} | {r['per_patch_ms']:.0f} | "
                 f"{r['speedup']:.2f}x |")
    sp = [r["speedup"] for r in speed if r["variant"] == "decoder_only"]
    L.append(f"\nDecoder-only speed-up: {', '.join(f'{v:.1f}x' for v in sp)} (goal >= 5x: "
             f"{'met' if sp and min(sp) >= 5 else 'NOT met'}).\n")
    L.append(f"Whole pool ({len(pool)} patches, M0): full {t_full_pool:.1f} s, decoder-only {t_dec_pool:.1f} s "
             f"({t_full_pool / t_dec_pool:.2f}x). Spearman correlation of the two rankings (default "
             f"measure/aggregate, mutual information / top-q): **{rank_rho:.3f}**; {top10} of the top 10 "
             "patches are shared.\n")
    L.append("M0 carries its decoder dropout before the 1x1 head (`decoder_dropout_at=\"head\"`), so "
             "`decoder_only` runs the encoder and the whole decoder once per patch (`decode_prepare`) and only "
             "the dropout and the head T times (`decode_sample`); `full` samples every dropout of the network "
             "(transformer MLPs and the head).\n")

    L.append("## 2. Does the score find the errors? Spearman(score, 1 - Dice) over the pool\n")
    L.append(f"Pool error 1 - Dice of M0: mean {err.mean():.3f}, median {np.median(err):.3f}, "
             f"range {err.min():.3f}-{err.max():.3f}.\n")
    aggs = list(AGGREGATES)
    L.append("| measure | " + " | ".join(aggs) + " |")
    L.append("|---|" + "---|" * len(aggs))
    for m in MEASURES:
        L.append(f"| {m} | " + " | ".join(f"{rho[f'{m}/{a}']:.3f}" for a in aggs) + " |")
    L.append(f"| disconnect (branch breaks across samples) | | | | | {rho['disconnect/structure']:.3f} |")
    best = best_of(rho)
    L.append(f"\nBest: **{best} = {rho[best]:.3f}** (goal >= 0.5: {'met' if rho[best] >= 0.5 else 'NOT met'}). "
             f"Hunter default (mutual_information/top_q): {rho['mutual_information/top_q']:.3f}; "
             f"Cao et al.'s code (variance/sum): {rho['variance/sum']:.3f}.\n")

    L.append("## 3. Fine-tuning with 3 hunted vs 3 random patches (test: poon2015, held out)\n")
    L.append(f"Fine-tuning: `fine_tune(picks, replay=core, max_epochs={args.ft_epochs})` (7 core patches "
             "replayed per epoch, lr = lr/5); hunted picks are `hunter.select(3, diversity=\"one_per_slice\")` "
             "(hunter seed 0, so the same picks for every seed) of the default hunter and of a hunter using the "
             "rule that correlated best with the error in part 2 (chosen on the training pool); seeds change the "
             "fine-tuning randomness and the random picks. Dice = per-stack Dice over all test patches of a "
             "stack, averaged over the 3 stacks. Pool columns describe the 3 picks on the training pool.\n")
    stems = [Path(f).stem for f in test_files]
    L.append("| model | mean Dice over seeds | SD | min-max | " + " | ".join(stems)
             + " | M0 error of picks | true vessel fraction of picks | M0 predicted fraction |")
    L.append("|---|---|---|---|" + "---|" * len(stems) + "---|---|---|")
    L.append(f"| M0 | {d_m0['mean']:.4f} | - | - | " + " | ".join(f"{d_m0[s]:.4f}" for s in stems)
             + f" | pool mean {err.mean():.3f} | pool mean {true_fg.mean():.3f} | pool mean {pred_fg.mean():.3f} |")
    summary = {}
    for name in [*hunted, "random"]:
        rs = [r for r in runs if r["variant"] == name]
        v = np.array([r["dice_mean"] for r in rs])
        summary[name] = v
        L.append(f"| M0 + 3 {name} | {v.mean():.4f} | {v.std(ddof=1) if len(v) > 1 else 0:.4f} | "
                 f"{v.min():.4f}-{v.max():.4f} | "
                 + " | ".join(f"{np.mean([r[f'dice_{s}'] for r in rs]):.4f}" for s in stems)
                 + f" | {np.mean([r['pool_error_of_picks'] for r in rs]):.3f}"
                 + f" | {np.mean([r['true_fg_of_picks'] for r in rs]):.3f}"
                 + f" | {np.mean([r['pred_fg_of_picks'] for r in rs]):.3f} |")
    r_ = summary["random"]
    L.append("")
    for name in hunted:
        h = summary[name]
        verdict = "beats" if h.mean() > max(r_.mean(), d_m0["mean"]) else "does NOT beat"
        L.append(f"- {name} {verdict} both M0 and the random picks (mean over {args.seeds} seeds: "
                 f"{h.mean():.4f} vs random {r_.mean():.4f}, M0 {d_m0['mean']:.4f}; per-seed hunted - random: "
                 + ", ".join(f"{a - b:+.4f}" for a, b in zip(h, r_)) + f"); picks {[int(i) for i in hunted[name]]}.")
    L.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.quick:
        out = OUT / "hunt_quick.md"
    else:
        out = RESULTS
    out.write_text("\n".join(L), encoding="utf-8")
    (OUT / ("raw_quick.json" if args.quick else "raw.json")).write_text(json.dumps(
        {"rho": rho, "speed": speed, "runs": runs, "m0": d_m0, "rank_rho": rank_rho}, indent=1))
    print(f"wrote {out} in {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    sys.exit(main())
