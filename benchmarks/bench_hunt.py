"""Stage 3 benchmark: MC-dropout hunting on real two-photon vessel stacks (vesselnn_2pm).

Writes ``benchmarks/results/hunt.md`` through ``_common.write_result`` (every number in it is
computed here, in this run: M0 is trained anew (about 20 s) and the MAE of the facility-location
rows is pretrained anew by ``_common.vesselnn_mae`` (the settings of ``bench_mae.py``, about 5
minutes on 2 cores; ``--mae-epochs``), so a fresh clone reproduces the results without any
earlier ``_out/`` file). Raw per-run JSON goes to ``benchmarks/_out/hunt/`` and is never read.

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
   held-out poon2015 stacks, over 6 seeds (fine-tuning seed and random picks). Also the
   best rule of part 2 and the default rule with facility-location diversity.

``--protocol target`` hunts on a pool that also holds unlabelled patches of the poon2015
stacks' upper halves and tests on their lower halves (parts 2-3 only; results/hunt_target.md):
the user's situation of hunting on the data the model must work on.

``--redraw N`` replicates part 3 over N freshly drawn pools (each hunted anew, so the hunted
picks differ between replicates, unlike the seeds of part 3) and writes
results/hunt[_target]_redraw.md.

Run: ``python benchmarks/bench_hunt.py [--protocol target] [--redraw 10]`` (a few minutes plus the MAE);
``--quick`` for a smoke test (tiny M0 and a 1-epoch ``tiny`` MAE; written under ``_out/hunt/``).
Data: ``BIODATACENTRIC_DATA`` (see ``_common.py``).
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

from _common import OUT as OUT_ROOT, VESSELNN, block_embeddings, vesselnn_mae, write_result
from biodatacentric import Patches
from biodatacentric.hunt import MCDropoutHunter
from biodatacentric.hunt.aggregate import AGGREGATES
from biodatacentric.hunt.uncertainty import MEASURES
from biodatacentric.metrics import dice_per_sample
from biodatacentric.nn.transunet import TransUNet
from biodatacentric.segment import TransUNetSegmenter

ROOT = Path(__file__).resolve().parent
DATA = VESSELNN  # BIODATACENTRIC_DATA, see _common.py
OUT = OUT_ROOT / "hunt"
TRAIN_GROUPS = ("burgess2014", "santos2015")
TEST_GROUP = "poon2015"


# the hunter's settings when this benchmark's committed results were measured (the defaults before
# evidence_hunt.md made transforms="dihedral", aggregate="pairwise_dice" the default)
MEASURED_WITH = {"transforms": "none", "aggregate": "top_q"}

def stacks(group: str) -> list[str]:
    files = sorted(str(p) for p in (DATA / "images").glob(f"{group}*.tif"))
    if not files:
        raise FileNotFoundError(f"no {group}* stacks in {DATA / 'images'}")
    return files


def embeddings(patches: Patches, block: int = 8) -> np.ndarray:
    """Cheap image embedding: block-averaged pixels, centred per feature."""
    return block_embeddings(patches.images(), block)


def per_stack_dice(model: TransUNetSegmenter, test: Patches) -> dict:
    pred = model.predict(test)
    true = test.masks()
    src = test.index["source"]
    out = {}
    for s, name in enumerate(test.sources):
        sel = src == s
        if not sel.any():
            continue
        p, t = pred[sel].astype(bool), true[sel].astype(bool)
        out[Path(name).stem] = float(2 * np.sum(p & t) / max(p.sum() + t.sum(), 1))
    out["mean"] = float(np.mean(list(out.values())))
    return out


def dice_cells(rs: list[dict], stems: list[str]) -> str:
    """Table cells for runs of one variant: mean, SD and range of the mean test Dice, then the
    mean Dice of each test stack."""
    v = np.array([r["dice_mean"] for r in rs])
    return (f"{v.mean():.4f} | {v.std(ddof=1) if len(v) > 1 else 0:.4f} | {v.min():.4f}-{v.max():.4f} | "
            + " | ".join(f"{np.mean([r[f'dice_{s}'] for r in rs]):.4f}" for s in stems))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-pair differences a - b and the standard error of their mean (NaN for one pair)."""
    diff = a - b
    return diff, diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")


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
                               progress=False, **MEASURED_WITH)
            t0 = time.perf_counter()
            h.fit(patches)
            times[k].append(time.perf_counter() - t0)
    full = float(np.median(times["full"]))
    return [{"model": label, "variant": k, "median_s": float(np.median(v)), "speedup": full / float(np.median(v)),
             "per_patch_ms": 1000 * float(np.median(v)) / len(patches)} for k, v in times.items()]


def part1(args: argparse.Namespace, m0: TransUNetSegmenter, pool: Patches, hunter: MCDropoutHunter,
          precision: str) -> tuple[float, float, int, list[dict]]:
    """Speed of decoder-only vs full MC dropout, and how much the two rankings agree."""
    t0 = time.perf_counter()
    hunter_dec = MCDropoutHunter(m0, n_samples=args.samples, mode="decoder_only", random_state=0,
                                 progress=False, **MEASURED_WITH).fit(pool)
    t_dec_pool = time.perf_counter() - t0
    rank_rho = float(spearmanr(hunter.scores_, hunter_dec.scores_).statistic)
    top10 = len(set(hunter.ranking_[:10]) & set(hunter_dec.ranking_[:10]))
    speed_patches = pool[:4 if args.quick else 8]
    speed = speed_rows(f"M0 (tiny preset, feature_size {m0.feature_size})", m0.module_, speed_patches, args.samples,
                       2 if args.quick else 3, precision)
    torch.manual_seed(0)
    small_cfg = dict(img_size=128, patch_size=16, embed_dim=256, depth=6, num_heads=8, mlp_ratio=4.0,
                     feature_size=8, drop=0.1, decoder_dropout=0.1, decoder_dropout_at="head")
    small = TransUNet(**small_cfg).eval()
    speed += speed_rows("small preset, feature_size 8 (untrained; timing only)", small,
                        pool[:2 if args.quick else 4], args.samples, 2 if args.quick else 3, precision)
    return t_dec_pool, rank_rho, top10, speed


def part1_report(L: list[str], args: argparse.Namespace, speed: list[dict], pool: Patches, t_full_pool: float,
                 t_dec_pool: float, rank_rho: float, top10: int) -> None:
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


def write_parts23(L: list[str], args: argparse.Namespace, rho: dict, err: np.ndarray, test_files: list[str],
                  d_m0: dict, hunted: dict, runs: list[dict], true_fg: np.ndarray, pred_fg: np.ndarray,
                  target: bool, pool_is_target: np.ndarray, emb_rule: str) -> None:
    L.append("## 2. Does the score find the errors? Spearman(score, 1 - Dice) over the pool\n")
    L.append(f"Pool error 1 - Dice of M0: mean {err.mean():.3f}, median {np.median(err):.3f}, "
             f"range {err.min():.3f}-{err.max():.3f}.\n")
    aggs = [a for a in AGGREGATES if a != "pairwise_dice"]   # per-measure rules (pairwise Dice ignores the measure)
    L.append("| measure | " + " | ".join(aggs) + " |")
    L.append("|---|" + "---|" * len(aggs))
    for m in MEASURES:
        L.append(f"| {m} | " + " | ".join(f"{rho[f'{m}/{a}']:.3f}" for a in aggs) + " |")
    L.append(f"| disconnect (branch breaks across samples) | | | | | {rho['disconnect/structure']:.3f} |")
    best = best_of(rho)
    L.append(f"\nBest: **{best} = {rho[best]:.3f}** (goal >= 0.5: {'met' if rho[best] >= 0.5 else 'NOT met'}). "
             f"Hunter default (mutual_information/top_q): {rho['mutual_information/top_q']:.3f}; "
             f"Cao et al.'s code (variance/sum): {rho['variance/sum']:.3f}.\n")

    L.append("## 3. Fine-tuning with 3 hunted vs 3 random patches (test: poon2015"
             + (", lower halves; the pool holds patches of their upper halves)\n" if target else ", held out)\n"))
    L.append(f"Fine-tuning: `fine_tune(picks, replay=core, max_epochs={args.ft_epochs})` (7 core patches "
             "replayed per epoch, lr = lr/5); hunted picks are `hunter.select(3, diversity=\"one_per_slice\")` "
             "(hunter seed 0, so the same picks for every seed) of the default hunter and of a hunter using the "
             "rule that correlated best with the error in part 2 (chosen on the hunting pool); the "
             "facility-location row is `hunter.select(3, diversity=embeddings)` of the default hunter (among its "
             f"30 best-scored patches, 3 by facility location over the pool's {emb_rule}); seeds change the "
             "fine-tuning randomness and the random picks. Dice = per-stack Dice over all test patches of a "
             "stack, averaged over the 3 stacks. Pool columns describe the 3 picks on the hunting pool.\n")
    stems = [Path(f).stem for f in test_files]
    L.append("| model | mean Dice over seeds | SD | min-max | " + " | ".join(stems)
             + " | M0 error of picks | true vessel fraction of picks | M0 predicted fraction | picks from target stacks |")
    L.append("|---|---|---|---|" + "---|" * len(stems) + "---|---|---|---|")
    L.append(f"| M0 | {d_m0['mean']:.4f} | - | - | " + " | ".join(f"{d_m0[s]:.4f}" for s in stems)
             + f" | pool mean {err.mean():.3f} | pool mean {true_fg.mean():.3f} | pool mean {pred_fg.mean():.3f} | "
             f"{int(pool_is_target.sum())} of {len(pool_is_target)} in the pool |")
    summary = {}
    for name in [*hunted, "random"]:
        rs = [r for r in runs if r["variant"] == name]
        summary[name] = np.array([r["dice_mean"] for r in rs])
        L.append(f"| M0 + 3 {name} | {dice_cells(rs, stems)}"
                 + f" | {np.mean([r['pool_error_of_picks'] for r in rs]):.3f}"
                 + f" | {np.mean([r['true_fg_of_picks'] for r in rs]):.3f}"
                 + f" | {np.mean([r['pred_fg_of_picks'] for r in rs]):.3f}"
                 + f" | {np.mean([r['target_picks'] for r in rs]):.1f} of 3 |")
    r_ = summary["random"]
    L.append("")
    for name in hunted:
        h = summary[name]
        verdict = "beats" if h.mean() > max(r_.mean(), d_m0["mean"]) else "does NOT beat"
        diff, se = paired_difference(h, r_)
        noise = " (within two standard errors of zero: no evidence either way)" if abs(diff.mean()) < 2 * se else ""
        L.append(f"- {name} {verdict} both M0 and the random picks (mean over {args.seeds} seeds: "
                 f"{h.mean():.4f} vs random {r_.mean():.4f}, M0 {d_m0['mean']:.4f}; per-seed hunted - random: "
                 + ", ".join(f"{a - b:+.4f}" for a, b in zip(h, r_))
                 + f"; mean {diff.mean():+.4f}, standard error {se:.4f}, positive in {int((diff > 0).sum())} of "
                 f"{len(diff)}{noise}); picks {[int(i) for i in hunted[name]]}.")
    L.append("")
    L.append(f"These seeds share one hunting pool, hence one set of hunted picks: they measure the spread of "
             f"fine-tuning, not of hunting. `hunt{'_target' if target else ''}_redraw.md` "
             f"(`--redraw 10`) repeats the comparison over freshly drawn pools.\n")


#: epochs and preset of the benchmark MAE (set from --mae-epochs / --quick in main)
MAE_SETTINGS = {"epochs": 40, "preset": "small"}


def pool_embeddings(pool: Patches) -> tuple[np.ndarray, str]:
    """Embeddings for facility-location diversity: the benchmark MAE's encoder, pretrained in this run."""
    mae = vesselnn_mae(MAE_SETTINGS["epochs"], MAE_SETTINGS["preset"])[0].set_params(progress=False)
    return mae.transform(pool), ("MAE embeddings (the encoder of `bench_mae.py`'s settings, pretrained on the "
                                 f"training stacks in this run: {MAE_SETTINGS['preset']}, {MAE_SETTINGS['epochs']} epochs)")


def fine_tuned_dice(m0: TransUNetSegmenter, picks: Patches, core: Patches, test: Patches, seed: int,
                    epochs: int) -> dict:
    m = copy.deepcopy(m0)
    m._seed = 1000 + seed  # fine-tuning seed (fine_tune draws its seed from the fit seed)
    m.fine_tune(picks, replay=core, max_epochs=epochs)
    return per_stack_dice(m, test)


def replicate(args: argparse.Namespace, m0: TransUNetSegmenter, m0_time: float, core: Patches, core_rule: str,
              draw_pool, test: Patches, test_files: list[str], target: bool, t_start: float) -> None:
    """Replication over fresh pools: each replicate draws its own pool, so the hunted picks differ too."""
    d_m0 = per_stack_dice(m0, test)
    names = ("hunted, default rule (M1)", "hunted, facility-location diversity", "random")
    runs = []
    emb_rule = ""
    for r in range(args.redraw):
        pool, is_tgt = draw_pool(np.random.default_rng(20_000 + r))
        hunter = MCDropoutHunter(m0, n_samples=args.samples, random_state=r, progress=False, **MEASURED_WITH).fit(pool)
        emb, emb_rule = pool_embeddings(pool)
        picks = {names[0]: hunter.select(3, diversity="one_per_slice"), names[1]: hunter.select(3, diversity=emb),
                 names[2]: np.random.default_rng(100 + r).choice(len(pool), 3, replace=False)}
        err = 1.0 - dice_per_sample(m0.predict(pool), pool.masks())
        for name, sel in picks.items():
            d = fine_tuned_dice(m0, pool[sel], core, test, r, args.ft_epochs)
            runs.append({"replicate": r, "variant": name, "picks": [int(i) for i in sel],
                         "pool_error_of_picks": float(err[sel].mean()), "target_picks": int(is_tgt[sel].sum()),
                         **{f"dice_{k}": v for k, v in d.items()}})
            print(f"(redraw) replicate {r} {name}: test Dice {d['mean']:.4f}", flush=True)
    total = time.perf_counter() - t_start
    stems = [Path(f).stem for f in test_files]
    title = f"MCDropoutHunter benchmark, replicated over fresh hunting pools ({args.protocol} protocol)"
    L = [f"Total run time {total / 60:.1f} min on {args.threads} CPU threads, torch {torch.__version__}.\n",
         "The runs of `hunt.md` / `hunt_target.md` hunt one pool, so their hunted picks are the same in every "
         f"seed. Here each of {args.redraw} replicates draws a fresh pool ({args.pool} non-core training "
         "patches" + (f" plus {args.pool} unlabelled patches of the upper halves of the {TEST_GROUP} stacks"
                      if target else "") + f"; numpy seed 20000 + r), fits the default hunter on it "
         f"(`MCDropoutHunter(m0, n_samples={args.samples}, transforms='none', aggregate='top_q', random_state=r)`), and fine-tunes M0 "
         f"(`fine_tune(picks, replay=core, max_epochs={args.ft_epochs})`, seed 1000 + r) with its 3 picks under "
         "the default rule (`diversity=\"one_per_slice\"`), under facility-location diversity over the pool's "
         f"{emb_rule}, and with 3 random patches of the same pool. M0, core set ({core_rule}) and test set are "
         f"those of the single-pool run ({len(test)} test patches; M0 trained {m0_time:.0f} s). The replicate "
         "count, the seeds and the decision rule below were fixed before the run.\n",
         "Decision rule: hunting helps iff the mean test Dice of M1 exceeds both M0's and the random picks', and "
         "the paired mean difference M1 - random exceeds two standard errors.\n",
         "| model | mean Dice | SD | min-max | " + " | ".join(stems)
         + " | M0 error of picks | picks from target stacks |",
         "|---|---|---|---|" + "---|" * len(stems) + "---|---|",
         f"| M0 | {d_m0['mean']:.4f} | - | - | " + " | ".join(f"{d_m0[s]:.4f}" for s in stems) + " | | |"]
    dice = {}
    for name in names:
        rs = [x for x in runs if x["variant"] == name]
        dice[name] = np.array([x["dice_mean"] for x in rs])
        L.append(f"| M0 + 3 {name} | {dice_cells(rs, stems)}"
                 + f" | {np.mean([x['pool_error_of_picks'] for x in rs]):.3f}"
                 + f" | {np.mean([x['target_picks'] for x in rs]):.1f} of 3 |")
    L.append("")
    for name in names[:2]:
        diff, se = paired_difference(dice[name], dice["random"])
        helps = dice[name].mean() > max(dice["random"].mean(), d_m0["mean"]) and diff.mean() > 2 * se
        L.append(f"- {name}: {'hunting helps' if helps else 'hunting NOT shown to help'} "
                 f"(mean {dice[name].mean():.4f} vs random {dice['random'].mean():.4f}, M0 {d_m0['mean']:.4f}; "
                 f"paired difference to random {diff.mean():+.4f}, standard error {se:.4f}, positive in "
                 f"{int((diff > 0).sum())} of {len(diff)}; minus M0 {dice[name].mean() - d_m0['mean']:+.4f}).")
    L.append("")
    suffix = ("_quick" if args.quick else "") + ("_target" if target else "") + "_redraw"
    out = write_result(f"hunt{suffix}", title, "\n".join(L), _command(), folder=OUT if args.quick else None)
    (OUT / f"raw{suffix}.json").write_text(json.dumps({"runs": runs, "m0": d_m0}, indent=1))
    print(f"wrote {out} in {total / 60:.1f} min", flush=True)


def _command() -> str:
    return " ".join(["python benchmarks/bench_hunt.py", *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--pool", type=int, default=80, help="hunting pool size (non-core training patches)")
    ap.add_argument("--epochs", type=int, default=30, help="M0 training epochs")
    ap.add_argument("--ft-epochs", type=int, default=20, help="fine-tuning epochs")
    ap.add_argument("--test-every", type=int, default=4, help="use every k-th slice of the test stacks")
    ap.add_argument("--samples", type=int, default=20, help="MC samples T")
    ap.add_argument("--seeds", type=int, default=6, help="fine-tuning seeds (and random picks)")
    ap.add_argument("--feature-size", type=int, default=16, help="M0's decoder width (16: the library's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mae-epochs", type=int, default=40,
                    help="epochs of the benchmark MAE pretrained in this run for the facility-location rows "
                         "(bench_mae.py's setting: 40)")
    ap.add_argument("--redraw", type=int, default=0, metavar="N",
                    help="replication mode: N fresh hunting pools, each hunted (default rule and facility "
                         "location) and compared with random picks from it; writes hunt[_target]_redraw.md "
                         "instead of parts 1-3")
    ap.add_argument("--protocol", choices=("train", "target"), default="train",
                    help="train: the hunting pool holds training-stack patches only and the test is every "
                         "--test-every-th slice of the poon2015 stacks (parts 1-3); target: the pool also "
                         "holds unlabelled patches of the poon2015 stacks taken from their upper half, the "
                         "test is every 2nd slice of their lower half (parts 2-3, written to hunt_target.md)")
    args = ap.parse_args()
    target = args.protocol == "target"
    if args.quick:
        args.pool, args.epochs, args.ft_epochs, args.test_every, args.samples, args.seeds = 12, 2, 1, 12, 4, 1
    MAE_SETTINGS.update({"epochs": 1, "preset": "tiny"} if args.quick else {"epochs": args.mae_epochs})
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
    if target:
        # one Patches over all stacks: the training stacks come first, so indices into
        # train_all are indices into all_ as well
        all_ = Patches.from_tiff(train_files + test_files, masks=DATA / "masks", patch_shape=shape)
        n_tr = len(train_all)
        for f in ("source", "z", "y", "x"):
            assert np.array_equal(all_.index[f][:n_tr], train_all.index[f]), "patch order changed"
        src, z = all_.index["source"], all_.index["z"]
        depth = np.zeros(len(all_.sources), int)
        np.maximum.at(depth, src, z + 1)
        is_tgt = src >= len(train_files)
        half = depth[src] // 2
        test = all_[is_tgt & (z < half) & (z % 2 == 0)]
        target_cand = np.flatnonzero(is_tgt & (z >= half + 2))
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

    def draw_pool(rng: np.random.Generator) -> tuple[Patches, np.ndarray]:
        pool_idx = np.sort(rng.choice(rest, size=min(args.pool, len(rest)), replace=False))
        pool = train_all[pool_idx]
        if target:
            tgt_idx = np.sort(rng.choice(target_cand, size=min(args.pool, len(target_cand)), replace=False))
            pool = all_[np.concatenate([pool_idx, tgt_idx])]
        return pool, np.asarray(pool.index["source"]) >= len(train_files)

    pool, pool_is_target = draw_pool(rng)

    # ------------------------------------------------------------------ M0
    fs_tag = "" if args.feature_size == 8 else f"_fs{args.feature_size}"
    m0_path = OUT / ("m0_quick" if args.quick else f"m0_e{args.epochs}_headdrop{fs_tag}")
    seg_params = dict(preset="tiny", feature_size=args.feature_size, max_epochs=args.epochs, batch_size=8, lr=1e-3,
                      decoder_dropout=0.1, decoder_dropout_at="head", mlp_dropout=0.1, random_state=0,
                      progress=False)
    t0 = time.perf_counter()
    m0 = TransUNetSegmenter(**seg_params).fit(core)      # trained in every run (never loaded from _out/)
    m0_time = time.perf_counter() - t0
    m0.save(m0_path)                                     # for inspection only
    print(f"M0 ready ({m0_time:.0f} s training)", flush=True)
    precision = m0._runtime()[1]

    if args.redraw:
        return replicate(args, m0, m0_time, core, core_rule, draw_pool, test, test_files, target, t_start)

    # ------------------------------------------------------------------ (2) score vs error
    t0 = time.perf_counter()
    hunter = MCDropoutHunter(m0, n_samples=args.samples, mode="full", random_state=0, progress=False,
                             **MEASURED_WITH).fit(pool)
    t_full_pool = time.perf_counter() - t0
    table = hunter.score_table(pool, aggregates=[a for a in AGGREGATES if a != "pairwise_dice"])   # as measured
    pred = m0.predict(pool)
    err = 1.0 - dice_per_sample(pred, pool.masks())
    rho = {k: float(spearmanr(v, err).statistic) for k, v in table.items()}
    print(f"(2) done: best {best_of(rho)} rho={rho[best_of(rho)]:.3f}", flush=True)

    # ------------------------------------------------------------------ (1) speed + ranking agreement
    t_dec_pool = rank_rho = top10 = float("nan")
    speed: list[dict] = []
    if not target:
        t_dec_pool, rank_rho, top10, speed = part1(args, m0, pool, hunter, precision)
    print("(1) done" if not target else "(1) skipped (protocol target)", flush=True)

    # ------------------------------------------------------------------ (3) M1 vs random vs M0
    d_m0 = per_stack_dice(m0, test)
    hunted = {"hunted, default rule (M1)": hunter.select(3, diversity="one_per_slice")}
    # Suggestive-Annotation diversity: among the 30 best-scored, 3 by facility location over the pool
    pool_emb, emb_rule = pool_embeddings(pool)
    hunted["hunted, default rule, facility-location diversity"] = hunter.select(3, diversity=pool_emb)
    best_key = best_of(rho)  # chosen with the hunting pool's masks; the test patches are never used
    if best_key != "mutual_information/top_q":
        measure, agg = best_key.split("/")
        kw = dict(aggregate="structure", branch_score="disconnect") if measure == "disconnect" \
            else dict(measure=measure, aggregate=agg)
        h_best = MCDropoutHunter(m0, n_samples=args.samples, random_state=0, progress=False,
                                 **{**MEASURED_WITH, **kw}).fit(pool)
        hunted[f"hunted, best rule of part 2 ({best_key})"] = h_best.select(3, diversity="one_per_slice")
    true_fg = pool.masks().reshape(len(pool), -1).mean(axis=1)
    pred_fg = pred.reshape(len(pool), -1).mean(axis=1)
    runs = []
    for seed in range(args.seeds):
        picks = {**hunted, "random": np.random.default_rng(100 + seed).choice(len(pool), 3, replace=False)}
        for name, sel in picks.items():
            d = fine_tuned_dice(m0, pool[sel], core, test, seed, args.ft_epochs)
            runs.append({"seed": seed, "variant": name, "picks": [int(i) for i in sel],
                         "pool_error_of_picks": float(err[sel].mean()),
                         "true_fg_of_picks": float(true_fg[sel].mean()), "pred_fg_of_picks": float(pred_fg[sel].mean()),
                         "target_picks": int(pool_is_target[sel].sum()),
                         **{f"dice_{k}": v for k, v in d.items()}})
            print(f"(3) seed {seed} {name}: test Dice {d['mean']:.4f}", flush=True)
    total = time.perf_counter() - t_start

    # ------------------------------------------------------------------ report
    L = []
    title = "MCDropoutHunter benchmark (stage 3)" + (", hunting on the target stacks" if target else "")
    L.append(f"Total run time {total / 60:.1f} min "
             f"on {args.threads} CPU threads ({platform.processor() or platform.machine()}, shared with other "
             f"jobs, so absolute times are noisy; ratios come from alternating repeats in one run), torch "
             f"{torch.__version__}, precision {precision}.\n")
    L.append("## Setup\n")
    L.append(f"- Data: `vesselnn_2pm`, 128x128 patches without overlap, per-stack percentile normalisation. "
             f"Training stacks ({', '.join(TRAIN_GROUPS)}): {len(train_all)} patches; test stacks "
             f"({TEST_GROUP}, held out from training): "
             + ("see Test below." if target else f"every {args.test_every}th slice, {len(test)} patches."))
    seg_args = ", ".join(f"{k}={v!r}" for k, v in seg_params.items())
    L.append(f"- Core set: {core_rule}. M0 = `TransUNetSegmenter({seg_args})` trained on the core "
             f"({m0_time:.0f} s).")
    if target:
        L.append(f"- Test: every 2nd slice of the LOWER half (z < depth/2) of each {TEST_GROUP} stack, "
                 f"{len(test)} patches.")
        L.append(f"- Hunting pool: {int((~pool_is_target).sum())} random non-core training patches plus "
                 f"{int(pool_is_target.sum())} random unlabelled patches of the {TEST_GROUP} stacks from their "
                 "UPPER half (z >= depth/2 + 2, at least 2 slices from any test slice), as a user hunts on the "
                 "new data the model must work on. Their masks are read only for the 3 picked patches (the "
                 "person's annotation) and for part 2 (which also chooses the 'best rule' row). "
                 f"T = {args.samples} MC samples, seed 0.\n")
    else:
        L.append(f"- Hunting pool: {len(pool)} random non-core training patches. T = {args.samples} MC samples, "
                 f"seed 0.\n")

    if not target:
        part1_report(L, args, speed, pool, t_full_pool, t_dec_pool, rank_rho, top10)
    write_parts23(L, args, rho, err, test_files, d_m0, hunted, runs, true_fg, pred_fg, target, pool_is_target,
                  emb_rule)
    suffix = ("_quick" if args.quick else "") + ("_target" if target else "")
    out = write_result(f"hunt{suffix}", title, "\n".join(L), _command(), folder=OUT if args.quick else None)
    (OUT / f"raw{suffix}.json").write_text(json.dumps(
        {"rho": rho, "speed": speed, "runs": runs, "m0": d_m0, "rank_rho": rank_rho}, indent=1))
    print(f"wrote {out} in {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    sys.exit(main())
