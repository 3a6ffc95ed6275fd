"""QualityMonitor (issue 21) on real predictions of graded quality, and on corrupted ground truth.

Protocol (vesselnn_2pm). The 9 stacks are split into 3 folds of 3 (``names[f::3]``). For each
fold, tiny ``TransUNetSegmenter`` models (feature_size 8, 64x64 patches) are trained on core
sets drawn from the other 6 stacks: K in {5, 10, 25, 50, 200}, random or K-cover selection
(block-mean embeddings), four stages (6, 40, 160 and 600 optimisation steps of 8 patches: early,
late, long, xlong), seeds 0-2, in a fixed shuffled order until the time budget runs out. Each
model segments a crop of each of the 3 held-out stacks (4 evenly spaced slices, central
256x256, normalised per stack with the 0.5 / 99.8 percentiles as ``Patches`` do) and of the
tubenet OCT-A volume (cross-domain: an imaging modality the model never saw). Every
(model, image) pair is scored by

* ``QualityMonitor(seg, rca=<fold RCA>, embedder=<block means>)``, fitted on 48 annotated 64x64
  patches of the 6 training stacks (8 per stack) that no core set of the fold contains, with
  ``training_embeddings`` = the fold's selection pool: agreement estimate, RCA estimate, drift
  percentile and the combined estimate;
* the pre-registered calibration variants of the agreement estimate (``calibration_unit=
  "pooled"``, ``monotone=True`` and both), refitted from the same references' counts;
* the fold's RCA monitor: the best configuration of issue 7 (``extra_trees``, 50 trees,
  ``calibration="forest"``) on 25 annotated 128x128 patches of the 6 training stacks.

No reference ever comes from a scored stack (leave-one-stack-out). The tubenet volume (the
bundled sample) is a second protocol: models trained on its slices 0-47 (K in {5, 10, 25, 50}),
references from slices 0-47 outside the core sets, scored on 4 of the held-out slices 48-63.

Corruptions: per fold one good model (K=200, random, xlong); the ground-truth masks of the
held-out crops are corrupted (erosion, dilation, dropped branches, added blobs, shifts, blank,
full) and scored as if they were predictions.

Results: ``benchmarks/results/monitor.md`` (written by :mod:`_monitor_report`) and
``docs/figures/monitor_scatter.png``; per-pair rows in ``benchmarks/_out/monitor_pairs*.csv``.

Usage: ``python benchmarks/bench_monitor.py [--budget-min 30] [--part 0/2] [--corruptions]``;
``--report-only`` rewrites the results from the CSVs; ``--speed-only`` times one 7x1024x1024 stack.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import time
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
from biodatacentric.monitor._agreement import statistics_vector  # noqa: E402

PATCH = 64
CROP = (4, 256, 256)
KS = (5, 10, 25, 50, 200)
KS_TUBENET = (5, 10, 25, 50)
SELECTIONS = ("random", "kcover")
STAGES = {"early": 6, "late": 40, "long": 160, "xlong": 600}  # optimisation steps (batches of 8)
SEEDS = 3
# the agreement column is the calibration before issue 21's keep rules (patch rows, unconstrained);
# the variants were pre-registered, and pooled + monotone became the library default after this run
BASE = dict(calibration_unit="patch", monotone=False)
VARIANTS = {"pooled": dict(calibration_unit="pooled", monotone=False),
            "monotone": dict(calibration_unit="patch", monotone=True),
            "pooled_monotone": dict(calibration_unit="pooled", monotone=True)}
SPEED_PATH = OUT / "monitor_speed.md"
TUBENET_Z_SPLIT = 48

FIELDS = ["dataset", "kind", "fold", "seed", "k", "selection", "stage", "stack", "corruption", "true_dice",
          "combined", "agreement", "rca", "drift", *(f"agreement_{v}" for v in VARIANTS), "low", "high",
          "decision", "driver", "pred_share", "train_s", "assess_s", "sampling_s", "rca_s", "load1"]


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
    img = normalised(s.image)[TUBENET_Z_SPLIT:]
    held = (crop(img, (4, 128, 128)), crop((s.mask[TUBENET_Z_SPLIT:] > 0).astype(np.uint8), (4, 128, 128)))
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


def fit_monitors(seg, ref, rca, pool_emb, seed):
    """The QualityMonitor of one model and its calibration variants (same references and counts)."""
    mon = QualityMonitor(seg, rca=rca, embedder=block_embed, normalize="none", random_state=seed,
                         **BASE).fit(ref[:2], groups=ref[2], training_embeddings=pool_emb)
    variants = {}
    for name, params in VARIANTS.items():
        v = copy.copy(mon).set_params(**params)
        v._calibrate(seed)  # refit rows and map from the stored counts (no new sampling)
        variants[name] = v
    return mon, variants


def add_blobs(mask: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Add discs of radius 4-10 px at random places until the foreground grows by ``share``."""
    out = mask.astype(bool).copy()
    target = out.sum() + share * max(out.sum(), 0.01 * out.size)
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


def _row(writer, fh, base: dict, rec: dict, variants: dict, truth: np.ndarray, pred: np.ndarray, t_assess: float):
    sig = rec["signals"]
    stats = rec["statistics"]
    va = {f"agreement_{k}": (float(np.clip(v._calibration_map().predict(statistics_vector(stats)[None])[0], 0, 1))
                             if stats is not None else 0.0) for k, v in variants.items()}
    writer.writerow({**base, "true_dice": dice(pred > 0, truth > 0), "combined": rec["estimated_dice"],
                     "agreement": sig["agreement"] if sig["agreement"] is not None else 0.0,
                     "rca": sig["rca"] if sig["rca"] is not None else 0.0,
                     "drift": sig["drift"] if sig["drift"] is not None else "", **va,
                     "low": rec["interval"][0], "high": rec["interval"][1], "decision": rec["decision"],
                     "driver": rec["driver"], "pred_share": float(pred.mean()), "assess_s": round(t_assess, 3),
                     "sampling_s": round(rec["timings"].get("sampling", 0.0), 3),
                     "rca_s": round(rec["timings"].get("rca", 0.0), 3), "load1": round(os.getloadavg()[0], 2)})
    fh.flush()


def _fit_rca(rca_ref, cache: Path) -> RCAMonitor:
    if (cache / "config.json").is_file():
        return RCAMonitor.load(cache)
    rca = RCAMonitor(classifier="extra_trees", n_estimators=50, calibration="forest", normalize="none",
                     random_state=0, verbose=False).fit(rca_ref[:2], groups=rca_ref[2])
    rca.save(cache)
    return rca


def run(budget_min: float, part: tuple[int, int], do_corruptions: bool, csv_path: Path) -> None:
    data = require_vesselnn()
    names = sorted(p.stem for p in (data / "images").glob("*.tif"))
    stacks = {n: (crop(normalised(tifffile.imread(data / "images" / f"{n}.tif"))),
                  crop((tifffile.imread(data / "masks" / f"{n}.tif") > 0).astype(np.uint8))) for n in names}
    OUT.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    meta = {"part": f"{part[0]}/{part[1]}", "budget_min": budget_min, "load_start": os.getloadavg()}
    try:
        _run(names, stacks, data, budget_min, part, do_corruptions, csv_path, t_start)
    finally:
        meta.update(wall_s=round(time.perf_counter() - t_start, 1), load_end=os.getloadavg(),
                    threads=torch.get_num_threads())
        csv_path.with_suffix(".meta.json").write_text(json.dumps(meta), encoding="utf-8")


def _run(names, stacks, data, budget_min, part, do_corruptions, csv_path, t_start) -> None:
    folds = []
    for f in range(3):
        scored = names[f::3]
        train = [n for n in names if n not in scored]
        pool, ref, rca_ref = vesselnn_fold(data, train, seed=f)
        rca = _fit_rca(rca_ref, OUT / f"monitor_rca_fold{f}")
        folds.append(dict(dataset="vesselnn", scored={n: stacks[n] for n in scored}, pool=pool,
                          emb=block_embed(pool.images()), ref=ref, rca=rca))
    pool, ref, rca_ref, held = tubenet_fold(seed=3)
    tube = dict(dataset="tubenet", scored={"octa_01": held}, pool=pool, emb=block_embed(pool.images()), ref=ref,
                rca=_fit_rca(rca_ref, OUT / "monitor_rca_tubenet"))
    folds.append(tube)
    print(f"folds ready: {time.perf_counter() - t_start:.0f} s", flush=True)
    done_models, done_corr = _done(csv_path)
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        if do_corruptions:
            for f, fold in enumerate(folds):
                todo = [(name, kind, strength) for name in fold["scored"] for kind, strength in CORRUPTION_SET
                        if (str(f), name, f"{kind} {strength:g}") not in done_corr]
                if not todo:
                    continue
                t = time.perf_counter()
                seg = train_model(fold["pool"], 200 if f < 3 else 50, "random", "xlong", 1000 + f, fold["emb"])
                train_s = time.perf_counter() - t
                mon, variants = fit_monitors(seg, fold["ref"], fold["rca"], fold["emb"], 0)
                rng = np.random.default_rng(f)
                for name, kind, strength in todo:
                    img, truth = fold["scored"][name]
                    pred = corrupted(truth, kind, strength, rng)
                    t = time.perf_counter()
                    rec = mon.assess(img, pred, axes="ZYX")
                    _row(writer, fh, {"dataset": fold["dataset"], "kind": "corruption", "fold": f, "seed": 0,
                                      "k": 200 if f < 3 else 50, "selection": "random", "stage": "xlong",
                                      "stack": name, "corruption": f"{kind} {strength:g}",
                                      "train_s": round(train_s, 2)},
                         rec, variants, truth, pred, time.perf_counter() - t)
                print(f"corruptions fold {f}: {time.perf_counter() - t_start:.0f} s", flush=True)
        # every (seed, stage, K, selection, fold) in one fixed shuffled order, split between the
        # parts, so that a run cut short by the time budget still covers every kind of model
        configs = [(seed, stage, k, sel, f) for seed in range(SEEDS) for stage in STAGES for sel in SELECTIONS
                   for f in range(4) for k in (KS if f < 3 else KS_TUBENET) if _wanted(seed, stage, k, f)]
        order = [configs[i] for i in np.random.default_rng(2026).permutation(len(configs))][part[0]::part[1]]
        for seed, stage, k, selection, f in order:
            if (str(seed), stage, str(k), selection, str(f)) in done_models:
                continue
            if time.perf_counter() - t_start > budget_min * 60:
                print("time budget reached", flush=True)
                return
            fold = folds[f]
            t = time.perf_counter()
            seg = train_model(fold["pool"], k, selection, stage, 100 * seed + f, fold["emb"])
            train_s = time.perf_counter() - t
            mon, variants = fit_monitors(seg, fold["ref"], fold["rca"], fold["emb"], seed)
            targets = dict(fold["scored"])
            if f < 3 and seed == 0:  # a vesselnn model on the OCT-A volume: a modality it never saw
                targets["octa_01 (cross-domain)"] = tube["scored"]["octa_01"]
            for name, (img, truth) in targets.items():
                pred = seg.predict_image(img, axes="ZYX", normalize="none", progress=False)
                t = time.perf_counter()
                rec = mon.assess(img, pred, axes="ZYX")
                kind = "cross-domain" if "cross" in name else "real"
                _row(writer, fh, {"dataset": fold["dataset"], "kind": kind, "fold": f, "seed": seed, "k": k,
                                  "selection": selection, "stage": stage, "stack": name, "corruption": "",
                                  "train_s": round(train_s, 2)}, rec, variants, truth, pred, time.perf_counter() - t)
            print(f"seed {seed} {stage} K={k} {selection} fold {f}: {time.perf_counter() - t_start:.0f} s",
                  flush=True)


def _wanted(seed: int, stage: str, k: int, f: int) -> bool:
    """The configurations run (sized for a shared 2-core machine): the 600-step stage only for
    K >= 50 (small core sets do not become good models by training longer); tubenet models for
    seed 0, K in {5, 25} and the three shorter stages (one scored crop per model)."""
    if stage == "xlong" and k < 50:
        return False
    if f == 3:
        return seed == 0 and k in (5, 25) and stage != "xlong"
    return True


def _done(csv_path: Path) -> tuple[set, set]:
    """Models and corrupted masks already in the other CSVs under ``OUT`` (a stopped run resumes)."""
    models, corr = set(), set()
    for path in OUT.glob("monitor_pairs*.csv"):
        if path.resolve() == csv_path.resolve():
            continue
        for r in csv.DictReader(open(path, encoding="utf-8")):
            if r["kind"] == "corruption":
                corr.add((r["fold"], r["stack"], r["corruption"]))
            else:
                models.add((r["seed"], r["stage"], r["k"], r["selection"], r["fold"]))
    return models, corr


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
    OUT.mkdir(exist_ok=True)
    SPEED_PATH.write_text("\n".join(lines), encoding="utf-8")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=30.0, help="stop training new models after this")
    ap.add_argument("--part", default="0/1", help="i/n: run every n-th model from the i-th (parallel processes)")
    ap.add_argument("--corruptions", action="store_true", help="score the corrupted ground truth first")
    ap.add_argument("--csv", default="monitor_pairs.csv", help="per-pair CSV under benchmarks/_out "
                    "(the report reads every monitor_pairs*.csv there)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a loaded machine)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the results from the saved CSVs")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--agreement-only", action="store_true", help="with --speed-only: skip the RCA rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed_only:
        print("\n".join(speed(args.agreement_only)))
        return
    if not args.report_only:
        i, n = (int(x) for x in args.part.split("/"))
        run(args.budget_min, (i, n), args.corruptions, OUT / args.csv)
    from _monitor_report import report

    report(SPEED_PATH.read_text(encoding="utf-8").splitlines() if SPEED_PATH.is_file() else None)


if __name__ == "__main__":
    main()
