"""QualityMonitor (issue 21) on real predictions of graded quality, and on corrupted ground truth.

Protocol (vesselnn_2pm). The 9 stacks are split into 3 folds of 3 (``names[f::3]``). For each
fold, tiny ``TransUNetSegmenter`` models (feature_size 8, 64x64 patches) are trained on core
sets drawn from the other 6 stacks: K in {5, 10, 25, 50, 200}, random or K-cover selection
(block-mean embeddings), four stages (6, 40, 160 and 600 optimisation steps of 8 patches: early,
late, long, xlong; xlong for K >= 50), seeds 0-2, in a fixed shuffled order until the time
budget runs out. Each model segments a crop of each of the 3 held-out stacks (4 evenly spaced
slices, central 256x256, normalised per stack with the 0.5 / 99.8 percentiles as ``Patches``
do); seed-0 models also segment an OCT-A crop of the tubenet volume (cross-domain: a modality
the model never saw). Every (model, image) pair is scored by
``QualityMonitor(seg, rca=<fold RCA>, embedder=<block means>, combine="bounded")`` (library
defaults otherwise), fitted on 48 annotated 64x64 patches of the 6 training stacks (8 per
stack) that no core set of the fold contains, with ``training_embeddings`` = the fold's
selection pool. The fold's RCA monitor is the best configuration of issue 7 (``extra_trees``,
50 trees, ``calibration="forest"``) on 25 annotated 128x128 patches of the 6 training stacks.
Each row records the agreement, RCA and drift signals, the model's own estimated Dice and the
triangle bounds, the ``"bounded"`` estimate and the ``"min"`` one (the default until rule 4).

No reference ever comes from a scored stack (leave-one-stack-out). The tubenet volume (the
bundled sample) is a second protocol: models trained on its slices 0-47 (K in {5, 25, 50},
seeds 0-1, three stages), references from slices 0-47 outside the core sets, each model scored
on two held-out crops (slices 48-55 and 56-63, 4 slices of 128x128 each).

Corruptions: per fold (the three vesselnn folds and tubenet) one good model (random core set,
K = 200 on vesselnn, 50 on tubenet, 600 steps); the ground-truth masks of the held-out crops
are corrupted (erosion, dilation, dropped branches, added blobs, shifts, blank, full) and
scored as if they were predictions.

Training and scoring run in worker processes (one torch thread each); tasks not started
within the time budget are skipped and the report says how many. Rows of this run also go to
``benchmarks/_out/monitor/run/pairs.csv`` (rewritten by every run, never read back by a later
one; ``--rerender`` re-renders the report of that same run).

Usage: ``python benchmarks/bench_monitor.py [--budget-min 60] [--workers 2] [--quick]``;
``--speed-only`` times one 7x1024x1024 stack. Writes ``benchmarks/results/monitor.md`` and
``docs/figures/monitor_scatter.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, require_vesselnn  # noqa: E402

from biodatacentric import Patches, QualityMonitor, RCAMonitor, TransUNetSegmenter  # noqa: E402
from biodatacentric.assess import KCoverSelector  # noqa: E402
from biodatacentric.data import load_sample  # noqa: E402
from biodatacentric.monitor import corrupt_mask  # noqa: E402
from biodatacentric.monitor.quality import combine_estimates  # noqa: E402

PATCH = 64
CROP = (4, 256, 256)
KS = (5, 10, 25, 50, 200)
KS_TUBENET = (5, 10, 25, 50)
SELECTIONS = ("random", "kcover")
STAGES = {"early": 6, "late": 40, "long": 160, "xlong": 600}  # optimisation steps (batches of 8)
SEEDS = 3
TUBENET_Z_SPLIT = 48

FIELDS = ["dataset", "kind", "fold", "seed", "k", "selection", "stage", "stack", "corruption", "true_dice",
          "bounded", "min", "auto", "agreement", "rca", "foreign", "pairwise_dice", "mask_vote_dice", "drift", "own", "bound_low", "bound_high", "mask_own_dice",
          "low", "high", "decision", "driver", "pred_share", "train_s", "monitor_fit_s", "assess_s", "sampling_s",
          "rca_s", "load1"]


def block_embed(images: np.ndarray, block: int = 8) -> np.ndarray:
    """Block means of (n, h, w) tiles (h, w multiples of ``block``): a cheap, fixed embedder."""
    n, h, w = images.shape
    h, w = h - h % block, w - w % block
    x = np.asarray(images[:, :h, :w], dtype=np.float32)
    return x.reshape(n, h // block, block, w // block, block).mean(axis=(2, 4)).reshape(n, -1)


def normalised(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32)
    lo, hi = np.percentile(img[:: max(1, len(img) // 16)], [0.5, 99.8])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def crop(arr: np.ndarray, shape: tuple[int, int, int] = CROP) -> np.ndarray:
    z = np.linspace(0, len(arr) - 1, shape[0]).round().astype(int)
    _, H, W = arr.shape
    h, w = min(shape[1], H), min(shape[2], W)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return np.ascontiguousarray(arr[z, y0:y0 + h, x0:x0 + w])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = int(a.sum()), int(b.sum())
    return 1.0 if sa + sb == 0 else 2.0 * int((a & b).sum()) / (sa + sb)


def _split(p: Patches, groups: np.ndarray, n_ref: int, rng: np.random.Generator, pool_max: int = 120):
    """Per group: ``n_ref`` references with >= 2% foreground, and a selection pool of the rest."""
    masks = p.masks()
    frac = masks.reshape(len(masks), -1).mean(axis=1)
    refs, pool = [], []
    for g in np.unique(groups):
        ok = rng.permutation(np.flatnonzero((groups == g) & (frac >= 0.02)))
        refs.extend(ok[:n_ref].tolist())
        rest = np.setdiff1d(np.flatnonzero(groups == g), ok[:n_ref])
        pool.extend(rng.choice(rest, min(pool_max, len(rest)), replace=False).tolist())
    refs, pool = np.sort(refs), np.sort(pool)
    return (p.images(refs), masks[refs], groups[refs].astype(str)), p[pool]


def _rca_refs(p128: Patches, groups: np.ndarray, rng: np.random.Generator, n: int = 25):
    m = p128.masks()
    f = m.reshape(len(m), -1).mean(axis=1)
    gs = np.unique(groups)
    per = np.full(len(gs), n // len(gs))
    per[rng.permutation(len(gs))[: n % len(gs)]] += 1
    chosen = []
    for g, k in zip(gs, per):
        cand = np.flatnonzero((groups == g) & (f >= 0.02))
        chosen.extend(rng.choice(cand, min(k, len(cand)), replace=False).tolist())
    chosen = np.sort(chosen)
    return p128.images(chosen), m[chosen], groups[chosen].astype(str)


def vesselnn_fold(data: Path, train: list[str], seed: int):
    rng = np.random.default_rng(seed)
    paths = [str(data / "images" / f"{n}.tif") for n in train]
    p = Patches.from_tiff(paths, axes="ZYX", patch_shape=(PATCH, PATCH), masks=str(data / "masks"))
    ref, pool = _split(p, np.array(train)[np.asarray(p.index["source"])], 8, rng)
    p128 = Patches.from_tiff(paths, axes="ZYX", patch_shape=(128, 128), masks=str(data / "masks"))
    return pool, ref, _rca_refs(p128, np.array(train)[np.asarray(p128.index["source"])], rng)


def tubenet_fold(seed: int):
    """The bundled OCT-A volume: training slices 0-47 (groups = slabs of 12 slices), held out 48-63."""
    s = load_sample()
    rng = np.random.default_rng(seed)
    mask_dir = str(Path(s.mask_path).parent)
    p = Patches.from_tiff(str(s.image_path), axes="ZYX", patch_shape=(PATCH, PATCH), masks=mask_dir)
    p = p[np.asarray(p.index["z"]) < TUBENET_Z_SPLIT]
    slab = np.array([f"z{12 * (z // 12)}" for z in np.asarray(p.index["z"])])
    ref, pool = _split(p, slab, 4, rng)
    p128 = Patches.from_tiff(str(s.image_path), axes="ZYX", patch_shape=(128, 128), masks=mask_dir)
    p128 = p128[np.asarray(p128.index["z"]) < TUBENET_Z_SPLIT]
    slab128 = np.array([f"z{12 * (z // 12)}" for z in np.asarray(p128.index["z"])])
    img, mask = normalised(s.image), (s.mask > 0).astype(np.uint8)
    z0, z1 = TUBENET_Z_SPLIT, len(img)
    half = (z0 + z1) // 2
    held = {f"octa_01 z{a}-{b - 1}": (crop(img[a:b], (4, 128, 128)), crop(mask[a:b], (4, 128, 128)))
            for a, b in ((z0, half), (half, z1))}
    return pool, ref, _rca_refs(p128, slab128, rng), held


def train_model(pool: Patches, k: int, selection: str, stage: str, seed: int, pool_emb: np.ndarray):
    k = min(k, len(pool))
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


def fit_monitor(seg, ref, rca, pool_emb, seed):
    """The QualityMonitor of one model (library defaults; ``combine="bounded"``, the candidate of
    rule 4: the default ``"min"`` is the minimum of the recorded agreement and RCA estimates)."""
    return QualityMonitor(seg, rca=rca, embedder=block_embed, normalize="none", random_state=seed,
                          combine="bounded").fit(ref[:2], groups=ref[2], training_embeddings=pool_emb)


def add_blobs(mask: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Add discs of radius 4-10 px at random places until the foreground grows by ``share``."""
    out = mask.astype(bool).copy()
    # capped below the crop's size: on a densely labelled crop "+100 %" would never be reached
    target = min(out.sum() + share * max(out.sum(), 0.01 * out.size), 0.9 * out.size)
    yy, xx = np.mgrid[: out.shape[1], : out.shape[2]]
    while out.sum() < target:
        z, r = rng.integers(0, out.shape[0]), rng.integers(4, 11)
        cy, cx = rng.integers(0, out.shape[1]), rng.integers(0, out.shape[2])
        out[z] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out.astype(np.uint8)


CORRUPTION_SET = [("identity", 0), ("erode", 1), ("erode", 2), ("dilate", 1), ("dilate", 3), ("drop", 0.3),
                  ("drop", 0.6), ("blobs", 0.3), ("blobs", 1.0), ("shift", 4), ("shift", 10), ("blank", 0),
                  ("full", 0)]


def corrupted(truth: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "blank":
        return np.zeros_like(truth)
    if kind == "full":
        return np.ones_like(truth)
    if kind == "blobs":
        return add_blobs(truth, strength, rng)
    return corrupt_mask(truth, kind, strength, rng)


def _row(base: dict, rec: dict, truth: np.ndarray, pred: np.ndarray, t_assess: float) -> dict:
    sig, stats = rec["signals"], rec["statistics"]
    blank = stats is None
    agree = 0.0 if blank else sig["agreement"]
    rca = 0.0 if blank else sig["rca"]
    lo, hi = (0.0, 0.0) if blank else sig["bounds"]
    # the monitor runs with combine="bounded"; "min" and "auto" are the same record's signals
    # combined by the library's combine_estimates, as QualityMonitor(combine=...) does
    other = {c: 0.0 if blank else combine_estimates(c, {"agreement": agree, "rca": rca}, sig["bounds"],
                                                    sig["foreign"])[0] for c in ("min", "auto")}
    return {**base, "true_dice": dice(pred > 0, truth > 0), "bounded": rec["estimated_dice"],
            "min": other["min"], "auto": other["auto"], "agreement": agree, "rca": rca,
            "foreign": "" if blank else int(sig["foreign"]),
            "pairwise_dice": "" if blank else stats["pairwise_dice"],
            "mask_vote_dice": "" if blank else stats["mean_mask_dice"],
            "drift": "" if sig["drift"] is None else sig["drift"], "own": 0.0 if blank else sig["own"],
            "bound_low": lo, "bound_high": hi, "mask_own_dice": 0.0 if blank else sig["own_mask_dice"],
            "low": rec["interval"][0], "high": rec["interval"][1], "decision": rec["decision"],
            "driver": rec["driver"], "pred_share": float(pred.mean()), "assess_s": round(t_assess, 3),
            "sampling_s": round(rec["timings"].get("sampling", 0.0), 3),
            "rca_s": round(rec["timings"].get("rca", 0.0), 3), "load1": round(os.getloadavg()[0], 2)}


def _fit_rca(rca_ref) -> RCAMonitor:
    return RCAMonitor(classifier="extra_trees", n_estimators=50, calibration="forest", normalize="none",
                      random_state=0, verbose=False).fit(rca_ref[:2], groups=rca_ref[2])


# ---------------------------------------------------------------------- workers
_FOLDS: dict = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    # scikit-learn's forests fall back to n_jobs=1 inside a worker process, and say so on every fit
    warnings.filterwarnings("ignore", message="Loky-backed parallel loops cannot be called")


def _fold(f: int) -> dict:
    """Fold ``f`` (0-2 vesselnn, 3 tubenet), built once per worker process, deterministically
    (seeded splits, RCA with random_state 0): every worker builds the same folds."""
    if f in _FOLDS:
        return _FOLDS[f]
    if f < 3:
        data = require_vesselnn()
        names = sorted(p.stem for p in (data / "images").glob("*.tif"))
        scored = names[f::3]
        train = [n for n in names if n not in scored]
        pool, ref, rca_ref = vesselnn_fold(data, train, seed=f)
        targets = {n: (crop(normalised(tifffile.imread(data / "images" / f"{n}.tif"))),
                       crop((tifffile.imread(data / "masks" / f"{n}.tif") > 0).astype(np.uint8))) for n in scored}
        fold = dict(dataset="vesselnn", scored=targets, pool=pool, ref=ref, rca=_fit_rca(rca_ref))
    else:
        pool, ref, rca_ref, held = tubenet_fold(seed=3)
        fold = dict(dataset="tubenet", scored=held, pool=pool, ref=ref, rca=_fit_rca(rca_ref))
    fold["emb"] = block_embed(fold["pool"].images())
    _FOLDS[f] = fold
    return fold


def run_task(task: dict) -> list[dict]:
    """One model (or one fold's corruption set): train, fit its monitor, score; the rows."""
    if time.time() > task["deadline"]:
        return [{"skipped": True, **{k: task[k] for k in ("kind", "fold")}}]
    f = task["fold"]
    fold = _fold(f)
    t = time.perf_counter()
    seg = train_model(fold["pool"], task["k"], task["selection"], task["stage"], task["train_seed"], fold["emb"])
    train_s = time.perf_counter() - t
    mon = fit_monitor(seg, fold["ref"], fold["rca"], fold["emb"], task["seed"])
    base = {k: task[k] for k in ("fold", "seed", "k", "selection", "stage")}
    base.update(dataset=fold["dataset"], train_s=round(train_s, 2), monitor_fit_s=round(mon.fit_seconds_, 2))
    rows = []
    if task["kind"] == "corruption":
        rng = np.random.default_rng(f)
        for name, (img, truth) in fold["scored"].items():
            for kind, strength in CORRUPTION_SET:
                pred = corrupted(truth, kind, strength, rng)
                t = time.perf_counter()
                rec = mon.assess(img, pred, axes="ZYX")
                rows.append(_row({**base, "kind": "corruption", "stack": name, "corruption": f"{kind} {strength:g}"},
                                 rec, truth, pred, time.perf_counter() - t))
        return rows
    targets = dict(fold["scored"])
    if f < 3 and task["seed"] == 0:  # a vesselnn model on the OCT-A volume: a modality it never saw
        name, held = next(iter(_fold(3)["scored"].items()))
        targets[f"{name} (cross-domain)"] = held
    for name, (img, truth) in targets.items():
        pred = seg.predict_image(img, axes="ZYX", normalize="none", progress=False)
        t = time.perf_counter()
        rec = mon.assess(img, pred, axes="ZYX")
        rows.append(_row({**base, "kind": "cross-domain" if "cross" in name else "real", "stack": name,
                          "corruption": ""}, rec, truth, pred, time.perf_counter() - t))
    return rows


def tasks_in_order(deadline: float, quick: bool = False) -> list[dict]:
    """The corruption sets first (one good model per fold), then every model configuration in one
    fixed shuffled order, so that a run cut short by its time budget still covers every kind."""
    tasks = [dict(kind="corruption", fold=f, seed=0, k=200 if f < 3 else 50, selection="random", stage="xlong",
                  train_seed=1000 + f, deadline=deadline) for f in range(4)]
    configs = [(seed, stage, k, sel, f) for seed in range(SEEDS) for stage in STAGES for sel in SELECTIONS
               for f in range(4) for k in (KS if f < 3 else KS_TUBENET) if _wanted(seed, stage, k, f)]
    order = [configs[i] for i in np.random.default_rng(2026).permutation(len(configs))]
    tasks += [dict(kind="model", fold=f, seed=seed, k=k, selection=sel, stage=stage, train_seed=100 * seed + f,
                   deadline=deadline) for seed, stage, k, sel, f in order]
    if quick:   # smoke test: the tubenet corruptions, a tubenet model and a vesselnn model
        tasks = ([t for t in tasks if t["fold"] == 3 and t["stage"] in ("early", "xlong")][:2]
                 + [t for t in tasks if t["fold"] == 0 and t["stage"] == "early" and t["seed"] == 0][:1])
    return tasks


def run(budget_min: float, workers: int, threads: int, run_dir: Path, quick: bool) -> tuple[list[dict], dict]:
    """Run the tasks in worker processes (a task not started within ``budget_min`` minutes is
    skipped); returns the rows and the run's metadata. Rows also go to ``run_dir/pairs.csv``
    (this run's own file, for inspection and ``--rerender``)."""
    t_start = time.time()
    tasks = tasks_in_order(t_start + 60 * budget_min, quick)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"budget_min": budget_min, "workers": workers, "threads": threads, "load_start": os.getloadavg(),
            "n_tasks": len(tasks), "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    rows, skipped = [], 0
    with open(run_dir / "pairs.csv", "w", newline="", encoding="utf-8") as fh, mp.get_context("spawn").Pool(
            workers, initializer=_worker_init, initargs=(threads,)) as pool:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        for i, out in enumerate(pool.imap_unordered(run_task, tasks)):   # rows as tasks finish
            if out and out[0].get("skipped"):
                skipped += 1
                continue
            for r in out:
                writer.writerow(r)
            fh.flush()
            rows.extend(out)
            r = out[0]
            print(f"[{i + 1}/{len(tasks)}] {r['kind']} fold {r['fold']} seed {r['seed']} K={r['k']} {r['selection']} "
                  f"{r['stage']}: train {r['train_s']:.0f} s, {len(out)} rows (elapsed {(time.time() - t_start) / 60:.1f} "
                  f"min, load {os.getloadavg()[0]:.1f})", flush=True)
    meta.update(wall_s=round(time.time() - t_start, 1), load_end=os.getloadavg(), skipped=skipped)
    (run_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return rows, meta


def _wanted(seed: int, stage: str, k: int, f: int) -> bool:
    """The configurations run (sized for a shared 2-core machine): the 600-step stage only for
    K >= 50 (small core sets do not become good models by training longer); tubenet models for
    seeds 0-1, K in {5, 25, 50} and the three shorter stages (two scored crops per model)."""
    if stage == "xlong" and k < 50:
        return False
    if f == 3:
        return seed <= 1 and k in (5, 25, 50) and stage != "xlong"
    return True


def speed(agreement_only: bool = False) -> list[str]:
    """Seconds per synthetic 7x1024x1024 stack with the library-default QualityMonitor settings
    (``agreement_only``: without the RCA rows, whose calibration ``fit`` is slow on a loaded machine)."""
    from biodatacentric import make_vessels

    img, mask = make_vessels((7, 1024, 1024), random_state=0)
    rimg, rmask = make_vessels((25, 128, 128), random_state=1)
    seg = TransUNetSegmenter(preset="small", device="cpu", precision="fp32", random_state=0).initialize((128, 128))
    rca = None if agreement_only else RCAMonitor(classifier="extra_trees", n_estimators=50, calibration="forest",
                                                 normalize="none", random_state=0).fit((rimg, rmask))
    tiny = TransUNetSegmenter(preset="tiny", feature_size=8, device="cpu", precision="fp32",
                              random_state=0).initialize((64, 64))
    rows = []
    for label, mon in (("agreement only (QualityMonitor defaults: small preset at 128x128, 16 tiles x 8 samples)",
                        QualityMonitor(seg, normalize="none", random_state=0)),
                       ("agreement only, the benchmark's tiny models (64x64, feature_size 8), 16 tiles x 8 samples",
                        QualityMonitor(tiny, normalize="none", random_state=0)),
                       ("RCA only (RCAMonitor best configuration)", None),
                       ("combined (QualityMonitor with the RCA monitor), small preset",
                        QualityMonitor(seg, rca=rca, normalize="none", random_state=0))):
        if agreement_only and "RCA" in label:
            continue
        if mon is not None:
            mon.fit((rimg, rmask))
        times = []
        for _ in range(3):
            load = os.getloadavg()[0]
            t = time.perf_counter()
            mon.assess(img, mask, axes="ZYX") if mon is not None else rca.score(img, mask, axes="ZYX")
            times.append((time.perf_counter() - t, load))
        best = min(times)
        rows.append(f"| {label} | {best[0]:.2f} | {np.median([x[0] for x in times]):.2f} | "
                    f"{', '.join(f'{x[1]:.1f}' for x in times)} |")
    lines = [f"| monitor | best of 3 (s) | median of 3 (s) | load average (1 min) at each run |",
             "|---|---|---|---|", *rows]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=60.0, help="models not started after this are skipped")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--quick", action="store_true", help="smoke test: three tubenet tasks; report under _out/")
    ap.add_argument("--no-speed", action="store_true", help="skip the 7x1024x1024 timing at the end")
    ap.add_argument("--rerender", metavar="RUN_DIR", help="re-render the report of the run whose rows are in "
                    "RUN_DIR (its pairs.csv, meta.json, speed.md) after a change to the report code; "
                    "rows of different runs are never mixed")
    ap.add_argument("--speed-only", action="store_true", help="only time one 7x1024x1024 stack")
    ap.add_argument("--agreement-only", action="store_true", help="with --speed-only: skip the RCA rows")
    args = ap.parse_args()
    from _monitor_report import load_run, report

    if args.speed_only:
        torch.set_num_threads(args.threads)
        print("\n".join(speed(args.agreement_only)))
        return
    if args.rerender:
        report(*load_run(Path(args.rerender)))
        return
    run_dir = OUT / "monitor" / ("quick" if args.quick else "run")
    rows, meta = run(args.budget_min, args.workers, args.threads, run_dir, args.quick)
    meta["command"] = "python benchmarks/bench_monitor.py " + " ".join(sys.argv[1:])
    (run_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    speed_lines = None
    if not (args.no_speed or args.quick):
        torch.set_num_threads(2)
        speed_lines = speed()
        (run_dir / "speed.md").write_text("\n".join(speed_lines), encoding="utf-8")
    report(rows, meta, speed_lines, OUT if args.quick else None)


if __name__ == "__main__":
    main()
