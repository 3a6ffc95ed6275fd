"""Benchmark of RCAMonitor: speed on a 7x1024x1024 stack and validity on vesselnn_2pm.

Usage::

    python benchmarks/bench_rca.py                 # everything below, writes benchmarks/results/rca.md
    python benchmarks/bench_rca.py --section speed
    python benchmarks/bench_rca.py --section validity --stacks 3   # quicker, fewer held-out stacks
    python benchmarks/bench_rca.py --limits benchmarks/_out/rca_validity_extra_trees50.csv  # re-analyse a run's CSV
                                                   # (report to benchmarks/_out/rca_limits.md)

Speed: ``score`` on one 7x1024x1024 stack (tiles of four real vesselnn 512x512 slices per
plane, so the texture is real) with 25 references of 224x224, split into features /
training / reference prediction, then how it scales with the number of references and
of sampled pixels, and the alternative reverse classifiers.

Validity: for every stack of vesselnn_2pm, segmentations of widely varied quality are made
(the ground truth, erosions, dilations, shifts, dropped vessel branches, pixel noise,
thresholds of the smoothed image, Otsu, blank and inverted masks, and pixel classifiers
trained on other stacks with 30 / 300 / 3000 pixels, and the library's TransUNetSegmenter
after 2 / 6 / 30 epochs, trained on a core set of the other acquisition groups, as models
at different training stages). Each is scored with references = 25 annotated 128x128 patches of the OTHER stacks
(leave-one-stack-out) and compared with its true Dice. The default run then analyses that
run's CSVs: the calibration on error families it has not seen (leave-family-out), on real
segmentations of other stacks (ceiling), where the remaining error lies (limits) and the
agreement of each stack's labels with the others'. Numbers in the markdown are computed here,
in the same run, never typed in; ``--own-references 6`` is an experiment of its own (about 30
min) that writes ``results/rca_own.md``. The per-estimate CSVs of the runs of earlier
configurations are summarised, as text, in ``results/rca_history.md`` (the code of each is in
the git history); no run reads an earlier run's files from ``_out/``: the library's segmenters
of the validity section are trained in the run, and ``--retrieve`` pretrains the benchmark MAE
in the run (``_common.vesselnn_mae``). The ``--limits``, ``--ceiling``, ... options re-analyse a
CSV the user names; their report goes to ``benchmarks/_out/rca_<option>.md`` (never into
``results/``, which only measuring runs write). Results are written through ``_common.write_result``; data:
``BIODATACENTRIC_DATA``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from _common import OUT, VESSELNN, block_embeddings, vesselnn_mae, write_result
from biodatacentric import Patches
from biodatacentric.metrics import dice
from biodatacentric.monitor import RCAMonitor, decide, evaluate_estimates, pixel_features, plot_rca_scatter
from biodatacentric.monitor._retrieval import embed_image, normalize_image
from biodatacentric.monitor._sampling import reference_features
from biodatacentric.monitor.corruptions import drop_branches

DATA = VESSELNN  # BIODATACENTRIC_DATA, see _common.py
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "rca.md"


# ---------------------------------------------------------------------- data
def stack_names() -> list[str]:
    return sorted(p.stem for p in (DATA / "images").glob("*.tif"))


def read(name: str) -> tuple[np.ndarray, np.ndarray]:
    img = tifffile.imread(DATA / "images" / f"{name}.tif")
    msk = (tifffile.imread(DATA / "masks" / f"{name}.tif") > 0).astype(np.uint8)
    return img, msk


def _refs_per_stack(n_stacks: int, n_refs: int, rng: np.random.Generator) -> np.ndarray:
    """How many of ``n_refs`` references each of ``n_stacks`` stacks gives: an even share, the
    remainder to stacks drawn at random."""
    per = np.full(n_stacks, n_refs // n_stacks)
    per[rng.permutation(n_stacks)[: n_refs % n_stacks]] += 1
    return per


def reference_patches(names: list[str], n_refs: int, size: int, seed: int, min_fg: float = 0.02
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n_refs`` annotated patches with some foreground, spread evenly over ``names``."""
    rng = np.random.default_rng(seed)
    paths = [str(DATA / "images" / f"{n}.tif") for n in names]
    p = Patches.from_tiff(paths, axes="ZYX", patch_shape=(size, size), masks=str(DATA / "masks"))
    masks = p.masks()
    frac = masks.reshape(len(masks), -1).mean(axis=1)
    src = p.index["source"]
    ok = np.flatnonzero(frac >= min_fg)
    per = _refs_per_stack(len(names), n_refs, rng)
    chosen = []
    for s in range(len(names)):
        cand = ok[src[ok] == s]
        chosen.extend(rng.choice(cand, min(per[s], len(cand)), replace=False).tolist())
    chosen = np.sort(np.asarray(chosen))
    prov = p.provenance()[chosen]
    return p.images(chosen), masks[chosen], [Path(str(s)).stem for s in prov.source]


def pixel_sizes() -> dict[str, float]:
    """In-plane pixel size (µm) of every stack, from the dataset's ``manifest.csv``."""
    import csv

    with open(DATA / "manifest.csv", newline="") as fh:
        return {r["name"]: float(r["voxel_y_um"]) for r in csv.DictReader(fh)}


def reference_patches_at(names: list[str], n_refs: int, size: int, seed: int, pixel_size: float,
                         min_fg: float = 0.02) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """As :func:`reference_patches`, but every patch covers ``size * pixel_size`` µm and is resampled to
    ``size`` x ``size`` pixels of ``pixel_size``: the references at the scored stack's pixel size."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    um = pixel_sizes()
    per = _refs_per_stack(len(names), n_refs, rng)
    imgs, msks, srcs = [], [], []
    for s, name in enumerate(names):
        side = max(8, int(round(size * pixel_size / um[name])))
        p = Patches.from_tiff([str(DATA / "images" / f"{name}.tif")], axes="ZYX", patch_shape=(side, side),
                              masks=str(DATA / "masks"))
        masks = p.masks()
        ok = np.flatnonzero(masks.reshape(len(masks), -1).mean(axis=1) >= min_fg)
        for i in np.sort(rng.choice(ok, min(per[s], len(ok)), replace=False)):
            img = p.images([i])[0].astype(np.float32)
            imgs.append(resize(img, (size, size), order=1, anti_aliasing=side > size, preserve_range=True))
            msks.append(resize(masks[i].astype(np.float32), (size, size), order=1, anti_aliasing=side > size) >= 0.5)
            srcs.append(name)
    return np.stack(imgs).astype(np.float32), np.stack(msks).astype(np.uint8), srcs


# ---------------------------------------------------------------------- degradations
def _per_slice(fn, mask: np.ndarray) -> np.ndarray:
    return np.stack([fn(m) for m in mask]).astype(np.uint8)


def pixel_classifier_predictions(image: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]],
                                 n_train: list[int], seed: int) -> dict[str, np.ndarray]:
    """Random-forest pixel classifiers trained on other stacks with few/more pixels."""
    from sklearn.ensemble import RandomForestClassifier

    sig = (0.7, 1.6, 3.5)
    rng = np.random.default_rng(seed)
    Xs, ys = [], []
    for img, msk in others:
        z = rng.integers(0, len(img), 2)
        f = pixel_features(_norm(img)[z], sig, n_jobs=-1)
        F = f.shape[1]
        Xs.append(f.transpose(0, 2, 3, 1).reshape(-1, F))
        ys.append(msk[z].ravel())
    X, y = np.concatenate(Xs), np.concatenate(ys)
    feats = pixel_features(_norm(image), sig, n_jobs=-1)
    Fq = feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])
    out = {}
    for n in n_train:
        idx = rng.choice(len(X), n, replace=False)
        clf = RandomForestClassifier(30, min_samples_leaf=2, n_jobs=-1, random_state=seed).fit(X[idx], y[idx])
        out[f"pixel_rf_{n}px"] = clf.predict(Fq).reshape(image.shape).astype(np.uint8)
    return out


#: training epochs of the segmenter checkpoints used as "models at different training stages"
SEGMENTER_STAGES = (2, 6, 30)


#: segmenters trained in this run, by (left-out acquisition group, epochs)
_SEGMENTERS: dict = {}


def segmenter_predictions(name: str, names: list[str]) -> dict[str, np.ndarray]:
    """The library's own segmenter at three training stages, trained without ``name``'s acquisition group.

    For each acquisition group, ``TransUNetSegmenter`` models are trained for
    :data:`SEGMENTER_STAGES` epochs on a 25-patch K-cover core set (128x128 patches) of the OTHER
    groups' stacks, as the pipeline's M0 would be (trained in this run, kept in memory for the
    group's other stacks); ``name`` is then segmented whole with ``predict_image``, so the stack is
    new data to the model.
    """
    from biodatacentric.assess import KCoverSelector
    from biodatacentric.segment import TransUNetSegmenter

    group = name.split("_")[0]
    train = [str(DATA / "images" / f"{n}.tif") for n in names if n.split("_")[0] != group]
    core = None  # the training core set, built only if a stage is not cached yet
    out = {}
    for epochs in SEGMENTER_STAGES:
        seg = _SEGMENTERS.get((group, epochs))
        if seg is None:
            if core is None:
                patches = Patches.from_tiff(train, masks=str(DATA / "masks"), patch_shape=(128, 128))
                emb = block_embeddings(patches.images(), 8)
                core = patches[KCoverSelector(n_select=25, random_state=0).fit(emb).selected_indices_]
            seg = _SEGMENTERS[(group, epochs)] = TransUNetSegmenter(
                preset="tiny", feature_size=16, max_epochs=epochs, batch_size=8, lr=1e-3, random_state=0,
                progress=False).fit(core)
        out[f"transunet_e{epochs}"] = seg.predict_image(DATA / "images" / f"{name}.tif", axes="ZYX",
                                                        progress=False).astype(np.uint8)
    return out


def _norm(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.8])
    return np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def degradations(image: np.ndarray, truth: np.ndarray, seed: int,
                 others: list[tuple[np.ndarray, np.ndarray]], stack: str | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = truth.astype(bool)
    segs: dict[str, np.ndarray] = {"truth": truth}
    for it in (1, 2):
        segs[f"erode{it}"] = _per_slice(lambda m: ndi.binary_erosion(m, iterations=it), g)
    for it in (1, 2, 4):
        segs[f"dilate{it}"] = _per_slice(lambda m: ndi.binary_dilation(m, iterations=it), g)
    for sh in (3, 8):
        segs[f"shift{sh}"] = np.roll(truth, sh, axis=2)
    for fr in (0.3, 0.6):
        segs[f"drop{int(fr * 100)}"] = drop_branches(truth, fr, rng)
    for p in (0.05, 0.2):
        flip = rng.random(truth.shape) < p
        segs[f"noise{int(p * 100)}"] = np.where(flip, 1 - truth, truth).astype(np.uint8)
    sm = ndi.gaussian_filter(_norm(image), (0, 1.0, 1.0))
    frac = truth.mean()
    for name, f in (("thresh_half", 0.5), ("thresh_same", 1.0), ("thresh_double", 2.0)):
        q = np.quantile(sm, 1.0 - min(f * frac, 0.95))
        segs[name] = (sm > q).astype(np.uint8)
    from skimage.filters import threshold_otsu

    segs["otsu"] = (sm > threshold_otsu(sm)).astype(np.uint8)
    segs["inverted"] = (1 - truth).astype(np.uint8)
    segs["blank"] = np.zeros_like(truth)
    segs.update(pixel_classifier_predictions(image, others, [30, 300, 3000], seed))
    if stack is not None:
        segs.update(segmenter_predictions(stack, stack_names()))
    return segs


#: statistics of the forward (reference-trained) classifier's agreement with a mask, see forward_agreement
FORWARD_STATS = ("fwd_auc", "fwd_dice", "fwd_dice_prior", "fwd_dice_matched", "fwd_share")


def forward_agreement(mon: RCAMonitor, image: np.ndarray, segs: dict[str, np.ndarray], stride: int = 4,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Agreement of each segmentation with a pixel classifier trained FORWARD on the references.

    The opposite direction to RCA: extremely randomised trees (100, class-balanced) learn the
    references' expert masks from their pixel features (``mon.sigmas``, a class-balanced sample of
    at most 20,000 pixels on a stride-2 grid), then predict the foreground probability of every
    ``stride``-th pixel of ``image`` (normalised as ``mon`` normalises it). For each mask:
    ``fwd_auc`` (ROC AUC of that probability for the mask), ``fwd_dice`` / ``fwd_dice_prior``
    (Dice of the forward prediction cut at 0.5 / at 1 - the references' foreground share),
    ``fwd_dice_matched`` (cut at the mask's own foreground share) and ``fwd_share`` (log ratio of
    the forward to the mask's foreground share). NaN for single-class masks. A diagnostic of the
    benchmark (the "limits" section), not a statistic of the library.
    """
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.metrics import roc_auc_score

    assert mon.reference_stride == 2 and mon.feature_scaling == "shared", "raw features on a stride-2 grid"
    rng = np.random.default_rng(seed)
    feats, masks, _ = reference_features(mon)   # computed and cached by mon.fit
    X = feats.reshape(-1, feats.shape[-1])
    y = masks.ravel()
    fg, bg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate([rng.choice(fg, min(10000, len(fg)), replace=False),
                          rng.choice(bg, min(10000, len(bg)), replace=False)])
    fwd = ExtraTreesClassifier(100, min_samples_leaf=5, class_weight="balanced", n_jobs=-1,
                               random_state=seed).fit(X[idx], y[idx])
    img = normalize_image(mon.normalize, image)
    prob = []
    for z in range(len(img)):
        f = pixel_features(img[z:z + 1], mon.sigmas, n_jobs=-1)[0][:, ::stride, ::stride]
        prob.append(fwd.predict_proba(f.reshape(f.shape[0], -1).T)[:, 1])
    prob = np.concatenate(prob)
    ref_share = float(y.mean())
    out = {}
    for kind, seg in segs.items():
        m = seg[:, ::stride, ::stride].ravel().astype(bool)
        if m.all() or not m.any():
            out[kind] = dict.fromkeys(FORWARD_STATS, float("nan"))
            continue
        cut = np.quantile(prob, 1.0 - m.mean())
        out[kind] = {"fwd_auc": float(roc_auc_score(m, prob)), "fwd_dice": dice(prob > 0.5, m),
                     "fwd_dice_prior": dice(prob > 1.0 - ref_share, m), "fwd_dice_matched": dice(prob > cut, m),
                     "fwd_share": float(np.log((np.mean(prob > 0.5) + 1e-3) / (m.mean() + 1e-3)))}
    return out


# ---------------------------------------------------------------------- sections
def speed(lines: list[str], repeats: int = 3, quick: bool = False) -> None:
    names = stack_names()
    rng = np.random.default_rng(0)
    big_img = np.zeros((7, 1024, 1024), np.float32)
    big_msk = np.zeros((7, 1024, 1024), np.uint8)
    quads = [n for n in names if tifffile.imread(DATA / "images" / f"{n}.tif").shape[1:] == (512, 512)][:4]
    for q, n in enumerate(quads):
        img, msk = read(n)
        y, x = (q // 2) * 512, (q % 2) * 512
        big_img[:, y:y + 512, x:x + 512] = _norm(img[:7])
        big_msk[:, y:y + 512, x:x + 512] = msk[:7]
    ref_img, ref_msk, ref_src = reference_patches([n for n in names if n not in quads], 25, 224, seed=1)
    noisy = np.where(rng.random(big_msk.shape) < 0.1, 1 - big_msk, big_msk).astype(np.uint8)

    def run(mon: RCAMonitor, mask: np.ndarray, k: int = repeats) -> dict:
        res, cpu = [], []
        for _ in range(k):
            c = time.process_time()
            res.append(mon.score(big_img, mask, axes="ZYX"))
            cpu.append(time.process_time() - c)
        keys = ("features", "training", "references", "total")
        return {kk: float(np.median([r["timings"][kk] for r in res])) for kk in keys} | \
            {"dice": res[0]["estimated_dice"], "cpu": float(np.median(cpu))}

    title = "## Speed: `score` on one 7x1024x1024 stack, 25 references of 224x224"
    lines += [title + (" (without the other classifiers and the scaling)" if quick else ""), "",
              f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
              f"Python {platform.python_version()}. Stack = 2x2 tiles of real vesselnn slices "
              f"({', '.join(quads)}), references = 25 patches of the other stacks. Median of {repeats} "
              "calls; seconds. `fit` (reference features, cached) is timed separately.", ""]
    t = time.perf_counter()
    base = RCAMonitor(normalize="none", random_state=0).fit((ref_img, ref_msk))
    t_fit = time.perf_counter() - t
    lines += [f"`fit` with 25 references (features computed once and cached): {t_fit:.2f} s", ""]
    load0 = os.getloadavg()[0]
    busy = (f"The machine was shared with other jobs (load average {load0:.1f} on {os.cpu_count()} cores at "
            "the start), so wall times are inflated; " if load0 > 0.5 else
            f"Load average {load0:.1f} on {os.cpu_count()} cores at the start. ")
    lines += [busy + "`CPU s` is the process CPU time of the call (all threads), and CPU s / 2 is the "
              "wall time to expect on two idle cores when both are kept busy.", "",
              "| configuration | mask | features | training | references | total (wall) | CPU s | "
              "estimated Dice |", "|---|---|---|---|---|---|---|---|"]

    def row(label: str, mon: RCAMonitor, mask: np.ndarray, mask_name: str, k: int = repeats) -> None:
        r = run(mon, mask, k)
        lines.append(f"| {label} | {mask_name} | {r['features']:.2f} | {r['training']:.2f} | "
                     f"{r['references']:.2f} | **{r['total']:.2f}** | {r['cpu']:.2f} | {r['dice']:.3f} |")
        print(lines[-1], flush=True)

    row("default (random forest, 100 trees, sqrt features, 50 % bootstrap, 10k px)", base, big_msk, "truth")
    row("default", base, noisy, "10 % flipped")
    m = RCAMonitor(classifier="extra_trees", normalize="none", random_state=0).fit((ref_img, ref_msk))
    row("extra_trees", m, big_msk, "truth")
    t, c = time.perf_counter(), time.process_time()
    m = RCAMonitor(classifier="extra_trees", n_estimators=50, calibration="forest", normalize="none",
                   random_state=0).fit((ref_img, ref_msk), groups=np.array(ref_src))
    t_cal, c_cal = time.perf_counter() - t, time.process_time() - c
    row("extra_trees, 50 trees, `calibration='forest'` (the validated configuration)", m, big_msk, "truth")
    row("same", m, noisy, "10 % flipped")
    row("default (again, interleaved)", base, big_msk, "truth")
    tail = ["", f"`fit` of the calibrated configuration (25 references, {len(m.calibration_y_)} corrupted "
            f"masks scored): {t_cal:.1f} s wall, {c_cal:.1f} s CPU.", ""]
    if quick:
        lines += tail + [f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]
        return
    lines += ["", "Other reverse classifiers and settings (one call each, truth mask):", "",
              "| configuration | mask | features | training | references | total (wall) | CPU s | "
              "estimated Dice |", "|---|---|---|---|---|---|---|---|"]
    m = RCAMonitor(classifier="hist_gradient_boosting", n_jobs=1, normalize="none",
                   random_state=0).fit((ref_img, ref_msk))
    row("hist_gradient_boosting (100 iterations)", m, big_msk, "truth", 1)
    m = RCAMonitor(max_features=0.7, max_samples=None, normalize="none", random_state=0).fit((ref_img, ref_msk))
    row("random forest as Cao et al. (max_features=0.7, full bootstrap)", m, big_msk, "truth", 1)
    m = RCAMonitor(reference_stride=1, normalize="none", random_state=0).fit((ref_img, ref_msk))
    row("reference_stride=1 (every reference pixel)", m, big_msk, "truth", 1)
    m = RCAMonitor(n_tiles=None, normalize="none", random_state=0).fit((ref_img, ref_msk))
    row("n_tiles=None (features of whole slices)", m, big_msk, "truth", 1)
    lines += ["", "Scaling with the number of references (default settings, truth mask):", "",
              "| references | references time | total | CPU s |", "|---|---|---|---|"]
    for n in (5, 25, 50, 100):
        idx = np.arange(n) % len(ref_img)
        imgs = ref_img[idx] if n <= len(ref_img) else np.concatenate(
            [ref_img, np.flip(ref_img, axis=2)] * (n // (2 * len(ref_img)) + 1))[:n]
        msks = ref_msk[idx] if n <= len(ref_msk) else np.concatenate(
            [ref_msk, np.flip(ref_msk, axis=2)] * (n // (2 * len(ref_msk)) + 1))[:n]
        m = RCAMonitor(normalize="none", random_state=0).fit((imgs, msks))
        r = run(m, big_msk, k=1)
        lines.append(f"| {n} | {r['references']:.2f} | {r['total']:.2f} | {r['cpu']:.2f} |")
        print(lines[-1], flush=True)
    lines += ["", "Scaling with the number of sampled pixels (`n_pixels`, default settings, truth mask):", "",
              "| n_pixels | features | training | references | total | CPU s |", "|---|---|---|---|---|---|"]
    for n in (2000, 10000, 40000):
        m = RCAMonitor(n_pixels=n, normalize="none", random_state=0).fit((ref_img, ref_msk))
        r = run(m, big_msk, k=1)
        lines.append(f"| {n} | {r['features']:.2f} | {r['training']:.2f} | {r['references']:.2f} | "
                     f"{r['total']:.2f} | {r['cpu']:.2f} |")
        print(lines[-1], flush=True)
    lines += tail + [f"Load average at the end: {os.getloadavg()[0]:.1f}.", ""]


def _flags_right(true: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Where the pass/fail flag at 0.7 of the estimates agrees with that of the true Dice."""
    return (np.asarray(true) >= 0.7) == (np.asarray(est) >= 0.7)


RAW_VARIANTS = {f"{rule}+{agg}": f"{rule}_{stat}" for rule in ("balanced", "prior")
                for agg, stat in (("max", "max"), ("max_corrected", "max_corrected"), ("top3", "top_k"))}
CALIBRATIONS = ("isotonic", "linear", "forest")


def validity(lines: list[str], n_stacks: int | None, n_refs: int = 25, size: int = 128,
             same_group: bool = False, classifier: str = "random_forest", calibration: str = "forest",
             calibration_size: int = 16, kinds_subset: list[str] | None = None,
             n_estimators: int = 100, tag: str = "", retrieve: int | None = None,
             match_pixel_size: bool = False) -> tuple[Path, Path]:
    """The validity section; returns the paths of its per-estimate and calibration-set CSVs.

    With ``retrieve``, the ``n_refs`` patches are a pool and each stack (and each calibration
    fold) is scored against the ``retrieve`` of them nearest by the embedding of the benchmark MAE,
    pretrained in this run (``RCAMonitor(n_references=retrieve, embedder=...)``). With
    ``match_pixel_size``, the references of each held-out stack are cut to the same field of view in
    µm and resampled to that stack's pixel size (:func:`reference_patches_at`).
    """
    from biodatacentric.monitor._calibration import _Calibration
    from biodatacentric.monitor._statistics import STATISTICS

    names = stack_names()
    held = names if n_stacks is None else names[:: max(1, len(names) // n_stacks)][:n_stacks]
    rows = []
    data = {n: read(n) for n in names}
    fit_seconds, fit_cpu, n_calib, calib_rows = [], [], [], []
    embedder = None
    if retrieve is not None:
        embedder = vesselnn_mae()[0]          # bench_mae.py's settings, pretrained in this run
        embedder.set_params(progress=False)
    for si, name in enumerate(held):
        others = [n for n in names if n != name]
        ref_from = [n for n in others if n.split("_")[0] == name.split("_")[0]] if same_group else others
        if match_pixel_size:
            ref_img, ref_msk, ref_src = reference_patches_at(ref_from, n_refs, size, seed=si,
                                                             pixel_size=pixel_sizes()[name])
        else:
            ref_img, ref_msk, ref_src = reference_patches(ref_from, n_refs, size, seed=si)
        assert name not in ref_src, "a reference comes from the held-out stack"
        img, truth = data[name]
        segs = degradations(img, truth, seed=si, others=[data[o] for o in others[:4]], stack=name)
        if kinds_subset:
            segs = {k: v for k, v in segs.items() if k in kinds_subset}
        t, c = time.perf_counter(), time.process_time()
        # calibration uses the references only (their own masks, corrupted): nothing of `name`
        mon = RCAMonitor(classifier=classifier, n_estimators=n_estimators, single_class="constant",
                         calibration=calibration, calibration_size=calibration_size, n_references=retrieve,
                         embedder=embedder, random_state=0).fit((ref_img, ref_msk), groups=np.array(ref_src))
        fit_seconds.append(time.perf_counter() - t)
        fit_cpu.append(time.process_time() - c)
        n_calib.append(len(mon.calibration_y_))
        for x, yv, k_, r_ in zip(mon.calibration_X_, mon.calibration_y_, mon.calibration_kinds_,
                                 mon.calibration_raw_):
            calib_rows.append({"stack": name, "kind": k_, "true": yv, "raw": r_} | dict(zip(STATISTICS, x)))
        others_cal = {kind: _Calibration(kind, mon.calibration_X_, mon.calibration_y_, mon.calibration_raw_)
                      for kind in CALIBRATIONS if kind != calibration}
        print(f"{name}: fit with self-calibration ({n_calib[-1]} corrupted reference masks) "
              f"{fit_seconds[-1]:.0f} s", flush=True)
        forward = forward_agreement(mon, img, segs)
        img_emb = None if embedder is None else embed_image(mon, normalize_image(mon.normalize, img))  # once per stack
        for kind, seg in segs.items():
            true_d = dice(seg, truth)
            t = time.perf_counter()
            c = time.process_time()
            r = mon.score(img, seg, axes="ZYX", embeddings=img_emb)
            row = {"stack": name, "kind": kind, "true": true_d, "seconds": time.perf_counter() - t,
                   "cpu_seconds": time.process_time() - c}
            st = r["statistics"]
            row.update({v: st[k] for v, k in RAW_VARIANTS.items()})
            assert abs(row["balanced+max"] - r["raw_estimated_dice"]) < 1e-9, "variant bookkeeping is off"
            n_fg = int(np.count_nonzero(seg))
            single = n_fg in (0, seg.size)
            for ck in CALIBRATIONS:
                if ck == calibration:
                    row[f"calibrated:{ck}"] = r["estimated_dice"]
                else:
                    row[f"calibrated:{ck}"] = r["raw_estimated_dice"] if single else others_cal[ck].predict(
                        np.array([st[k] for k in STATISTICS]), r["raw_estimated_dice"])
            row.update({f"stat:{k}": v for k, v in st.items()})
            row.update({f"diag:{k}": v for k, v in forward[kind].items()})
            rows.append(row)
            print(f"{name:42s} {kind:16s} true {true_d:.3f} raw {row['balanced+max']:.3f} " +
                  " ".join(f"{ck} {row[f'calibrated:{ck}']:.3f}" for ck in CALIBRATIONS), flush=True)
    OUT.mkdir(exist_ok=True)
    suffix = ("_same_group" if same_group else "") + ("" if classifier == "random_forest" else f"_{classifier}") + \
        ("" if n_estimators == 100 else f"{n_estimators}") + \
        ("" if calibration_size == 16 else f"_cal{calibration_size}") + \
        ("" if n_refs == 25 else f"_pool{n_refs}") + ("" if retrieve is None else f"_k{retrieve}") + \
        ("_um" if match_pixel_size else "") + tag
    _write_csv(OUT / f"rca_validity{suffix}.csv", rows)
    _write_csv(OUT / f"rca_calibration{suffix}.csv", calib_rows)
    true = np.array([r["true"] for r in rows])
    kinds = [r["kind"] for r in rows]
    var_names = list(RAW_VARIANTS) + [f"calibrated:{ck}" for ck in CALIBRATIONS]
    default_variant = f"calibrated:{calibration}"
    tag = ("same acquisition group" if same_group else "all other stacks") + \
        ("" if classifier == "random_forest" else f"; classifier={classifier}") + \
        ("" if retrieve is None else f"; the {retrieve} nearest by MAE embedding") + \
        ("; resampled to the held-out stack's pixel size" if match_pixel_size else "")
    lines += [f"## Validity on vesselnn_2pm, raw and self-calibrated (leave-one-stack-out references: {tag})", "",
              f"{len(held)} held-out stacks x {len(rows) // len(held)} segmentations = {len(rows)} "
              f"estimates; references: {n_refs} annotated {size}x{size} patches (foreground >= 2 %) "
              f"of the other stacks ({tag}); true Dice over the whole stack. Blank masks are scored with "
              "`single_class='constant'`. Positive = failure (true Dice < 0.7). One reverse classifier "
              f"(`classifier={classifier!r}, n_estimators={n_estimators}`, other parameters library "
              "defaults) per segmentation.", "",
              "*Raw* rows: the RCA aggregates of that one classifier, decision rule `balanced` "
              "(probability > 0.5, the library default) or `prior` (> 1 - foreground share, "
              "`prior_correction=True`) x aggregate `max` (the default), `max_corrected`, `top3`.", "",
              f"*Calibrated* rows: `RCAMonitor(calibration=...)`. In `fit`, the references are split by "
              f"source stack; the references of each stack get {calibration_size} corrupted versions of "
              "their own masks (erosion, dilation, shift, dropped branches, flipped pixels, thresholds of "
              "the smoothed image, Otsu, inverted; random strengths) and each is scored against the "
              "references of the OTHER stacks, as a new stack is; a map from the RCA statistics "
              "(both decision rules x max / mean / top-k / max_corrected / predicted-to-true foreground "
              "share / mean over the references most similar to the image in feature means, that "
              "similarity, the reverse classifier's out-of-bag agreement with its own training mask, and "
              "the mask's foreground and boundary share, how well one threshold of the smoothed "
              "intensity explains the mask (ROC AUC, best-threshold Dice, and both minus the references' "
              "median), and three shape statistics minus the references' median: the ROC AUC of a Hessian "
              "ridge measure for the mask, the boundary share and the share of foreground in fragments "
              "under 16 pixels) to the true Dice "
              "of the corrupted masks is fitted (`isotonic`: monotone map of the raw `balanced+max`; "
              "`linear`: ridge on all statistics; `forest`: extremely randomised regression trees on all "
              "statistics). No ground truth of the held-out stack is used: its references, "
              "corruptions and calibration come from the other stacks only. The benchmark's `pixel_rf_*` "
              "segmentations (pixel classifiers trained on other stacks) and `transunet_e*` segmentations "
              "(the library's `TransUNetSegmenter` after "
              f"{' / '.join(map(str, SEGMENTER_STAGES))} epochs on a 25-patch K-cover core set of the other "
              "acquisition groups' stacks, `predict_image` on the whole stack) are of kinds the calibration "
              "never sees; the others share families (not exact strengths) with it.", "",
              f"`fit` with self-calibration ({int(np.median(n_calib))} corrupted masks): median "
              f"{np.median(fit_seconds):.0f} s wall, {np.median(fit_cpu):.0f} s CPU per held-out stack "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end). "
              f"Median time per estimate (`score`, calibration included): "
              f"{np.median([r['seconds'] for r in rows]):.2f} s wall, "
              f"{np.median([r['cpu_seconds'] for r in rows]):.2f} s CPU (machine shared with other jobs).", "",
              "| estimate | Pearson r | Spearman rho | MAE | accuracy @0.7 | sensitivity | "
              "specificity | accuracy on `pixel_rf_*` only | accuracy on `transunet_*` only |",
              "|---|---|---|---|---|---|---|---|---|"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def acc_of(prefix: str, est: np.ndarray) -> float:
        sel = np.array([k.startswith(prefix) for k in kinds])
        return float(np.mean(_flags_right(true[sel], est[sel]))) if sel.any() else float("nan")

    for c in var_names:
        est = np.array([r[c] for r in rows])
        m = evaluate_estimates(true, est, 0.7)
        label = ("raw: " if "+" in c else "") + c + (" (library default)" if c == "balanced+max" else "") + \
            (" (benchmarked method)" if c == default_variant else "")
        lines.append(f"| {label} | {m['pearson_r']:.3f} | {m['spearman_rho']:.3f} | {m['mae']:.3f} | "
                     f"{m['accuracy']:.3f} | {m['sensitivity']:.3f} | {m['specificity']:.3f} | "
                     f"{acc_of('pixel_rf', est):.3f} | "
                     f"{acc_of('transunet', est):.3f} |")
        ax = plot_rca_scatter(true, est, 0.7, groups=kinds, title=f"RCA on vesselnn_2pm ({c})")
        ax.figure.tight_layout()
        ax.figure.savefig(OUT / f"rca_scatter_{c.replace('+', '_').replace(':', '_')}{suffix}.png", dpi=120)
        plt.close(ax.figure)
    goal_r, goal_acc = 0.85, 0.90
    for v in ("balanced+max", default_variant):
        m = evaluate_estimates(true, np.array([r[v] for r in rows]), 0.7)
        lines += ["", f"Goals (`{v}`): Pearson r >= {goal_r} -> "
                  f"{'met' if m['pearson_r'] >= goal_r else 'NOT met'} ({m['pearson_r']:.3f}); accuracy >= "
                  f"{goal_acc} -> {'met' if m['accuracy'] >= goal_acc else 'NOT met'} ({m['accuracy']:.3f})."]
    lines += ["", "Per kind of segmentation: mean true Dice and mean estimate of each variant:", "",
              "| kind | true | " + " | ".join(var_names) + " |", "|---|---|" + "---|" * len(var_names)]
    for kind in dict.fromkeys(kinds):
        sel = np.array([k == kind for k in kinds])
        cells = " | ".join(f"{np.mean([r[c] for r, s_ in zip(rows, sel) if s_]):.3f}" for c in var_names)
        lines.append(f"| {kind} | {true[sel].mean():.3f} | {cells} |")
    lines += ["", f"Per held-out stack (raw `balanced+max` / `{default_variant}`):", "",
              "| stack | Pearson r raw | MAE raw | accuracy raw | Pearson r cal. | MAE cal. | accuracy cal. |",
              "|---|---|---|---|---|---|---|"]
    for name in held:
        sel = [r for r in rows if r["stack"] == name]
        cells = []
        for v in ("balanced+max", default_variant):
            mm = evaluate_estimates([r["true"] for r in sel], [r[v] for r in sel], 0.7)
            cells += [f"{mm['pearson_r']:.3f}", f"{mm['mae']:.3f}", f"{mm['accuracy']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Scatter plots: `benchmarks/_out/rca_scatter_<variant>{suffix}.png`; per-estimate table: "
              f"`benchmarks/_out/rca_validity{suffix}.csv`; calibration sets: "
              f"`benchmarks/_out/rca_calibration{suffix}.csv`.", ""]
    return OUT / f"rca_validity{suffix}.csv", OUT / f"rca_calibration{suffix}.csv"


#: benchmark segmentation kind (prefix) -> the calibration's corruption family of the same nature
FAMILY = {"truth": "identity", "erode": "erode", "dilate": "dilate", "shift": "shift", "drop": "drop",
          "noise": "noise", "thresh": "threshold", "otsu": "otsu", "inverted": "inverted",
          "pixel_rf": None, "transunet": None, "blank": None}


def _family(kind: str) -> str | None:
    return next(f for k, f in FAMILY.items() if kind.startswith(k))


def _write_csv(path: Path, rows: list[dict]) -> None:
    """Rows with the keys of the first row as columns; read back by :func:`_read_csv`."""
    keys = list(rows[0])
    with open(path, "w") as fh:
        fh.write(",".join(keys) + "\n")
        fh.writelines(",".join(str(r[k]) for k in keys) + "\n" for r in rows)


def _read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        keys = fh.readline().strip().split(",")
        return [dict(zip(keys, line.strip().split(","))) for line in fh if line.strip()]


def _stat_matrix(rows: list[dict], prefix: str = "") -> np.ndarray:
    """The RCA statistics of CSV rows, (n, len(STATISTICS)); ``prefix="stat:"`` for validity rows."""
    from biodatacentric.monitor._statistics import STATISTICS

    return np.array([[float(r[prefix + k]) for k in STATISTICS] for r in rows]).reshape(-1, len(STATISTICS))


def _replayed_estimate(model, row: dict) -> float:
    """A calibration's estimate for one validity-CSV row; blank (single-class) masks keep the raw
    constant estimate 0, as in ``RCAMonitor.score``."""
    if row["kind"] == "blank":
        return 0.0
    return model.predict(_stat_matrix([row], "stat:")[0], float(row["balanced+max"]))


def leave_family_out(lines: list[str], validity_csv: Path, calibration_csv: Path) -> None:
    """Re-fit each held-out stack's forest calibration WITHOUT the corruption family that matches
    the benchmark segmentation being estimated: how the calibration does on error types it has
    never seen. Uses the per-estimate and calibration-set CSVs of a validity run; no RCA is re-run."""
    from biodatacentric.monitor._calibration import _Calibration

    val, cal = _read_csv(validity_csv), _read_csv(calibration_csv)
    true, est, kinds = [], [], []
    for stack in sorted({r["stack"] for r in val}):
        c = [r for r in cal if r["stack"] == stack]
        X = _stat_matrix(c)
        y = np.array([float(r["true"]) for r in c])
        raw = np.array([float(r["raw"]) for r in c])
        ck = np.array([r["kind"] for r in c])
        models: dict = {}
        for r in (r for r in val if r["stack"] == stack):
            fam = _family(r["kind"])
            if fam not in models and r["kind"] != "blank":
                keep = ck != fam
                models[fam] = _Calibration("forest", X[keep], y[keep], raw[keep])
            true.append(float(r["true"]))
            est.append(_replayed_estimate(models.get(fam), r))
            prefix = r["kind"] if r["kind"] == "blank" else r["kind"].rsplit("_", 1)[0] + "_*"
            kinds.append(fam or f"none ({prefix})")
    true, est, kinds = np.array(true), np.array(est), np.array(kinds)
    ev = evaluate_estimates(true, est, 0.7)
    full = evaluate_estimates(true, np.array([float(r["calibrated:forest"]) for r in val]), 0.7)
    lines += [f"## Leave-family-out: the forest calibration on error types it has not seen ({validity_csv.name})", "",
              "Each benchmark segmentation is re-estimated from its own RCA statistics by a forest calibration "
              "re-fitted without the corruption family of the same nature (erode / dilate / shift / drop / "
              "noise / threshold for `thresh_*` / otsu / inverted / identity for `truth`; `pixel_rf_*` and "
              "`transunet_*` have no such family, so their numbers equal the full calibration's). The full "
              "calibration's numbers on the "
              f"same estimates: r {full['pearson_r']:.3f}, accuracy {full['accuracy']:.3f}.", "",
              f"Pearson r **{ev['pearson_r']:.3f}**, Spearman rho {ev['spearman_rho']:.3f}, MAE {ev['mae']:.3f}, "
              f"accuracy @0.7 **{ev['accuracy']:.3f}** (sensitivity {ev['sensitivity']:.3f}, specificity "
              f"{ev['specificity']:.3f}).", "",
              "| family left out | estimates | accuracy @0.7 | MAE |", "|---|---|---|---|"]
    for f in sorted(set(kinds)):
        sel = kinds == f
        ok = _flags_right(true[sel], est[sel])
        lines.append(f"| {f} | {sel.sum()} | {ok.mean():.3f} | {np.abs(true[sel] - est[sel]).mean():.3f} |")
    lines.append("")


def _cross_stack_estimates(val: list[dict], X: np.ndarray, extra=None, use_other: bool = True) -> np.ndarray:
    """Each stack's validity rows, with inputs ``X`` (one row per validity row), re-estimated by a
    forest calibration fitted on the rows ``extra(stack) -> (X, y)`` when given, followed (when
    ``use_other``) by the inputs and true Dice of the OTHER stacks' non-blank segmentations. Blank
    masks keep the constant estimate 0, as in ``RCAMonitor.score``."""
    from biodatacentric.monitor._calibration import _Calibration

    true = np.array([float(r["true"]) for r in val])
    stack = np.array([r["stack"] for r in val])
    real = np.array([r["kind"] != "blank" for r in val])
    est = np.zeros(len(val))
    for s in sorted(set(stack)):
        train = (stack != s) & real & use_other
        Xe, ye = extra(s) if extra is not None else (np.empty((0, X.shape[1])), np.empty(0))
        Xt, yt = np.concatenate([Xe, X[train]]), np.concatenate([ye, true[train]])
        model = _Calibration("forest", Xt, yt, np.zeros(len(yt)))
        for i in np.flatnonzero((stack == s) & real):
            est[i] = model.predict(X[i], 0.0)
    return est


def calibration_ceiling(lines: list[str], validity_csv: Path, calibration_csv: Path) -> None:
    """How far better calibration data could take the pass/fail flag: each held-out stack's forest
    calibration is re-fitted with the benchmark segmentations of the OTHER stacks (their RCA
    statistics and true Dice) added to, or replacing, its corrupted reference masks. Real
    segmentations with known Dice of other stacks are more than a user has; if even they do not
    lift the accuracy, the limit is in the RCA statistics, not in the calibration set. Uses the
    CSVs of a validity run; no RCA is re-run."""
    val, cal = _read_csv(validity_csv), _read_csv(calibration_csv)
    lines += [f"## Calibration ceiling: calibrating on real segmentations of the other stacks ({validity_csv.name})",
              "", "Each held-out stack's forest calibration is re-fitted on the RCA statistics and true Dice of the "
              "benchmark segmentations of the other 8 stacks (blank masks excepted), with or without its corrupted "
              "reference masks, and re-estimates the held-out stack's segmentations. Real segmentations with known "
              "Dice are more than a user has, so this indicates how much a better calibration set could give. "
              "The first row replays the validity section from its CSVs.", "",
              "| calibration set | Pearson r | Spearman rho | MAE | accuracy @0.7 | sensitivity | specificity |",
              "|---|---|---|---|---|---|---|"]
    true = np.array([float(r["true"]) for r in val])
    X = _stat_matrix(val, "stat:")

    def corrupted(stack: str) -> tuple[np.ndarray, np.ndarray]:
        c = [r for r in cal if r["stack"] == stack]
        return _stat_matrix(c), np.array([float(r["true"]) for r in c])

    for label, est in (("corrupted reference masks (the library's)",
                        _cross_stack_estimates(val, X, corrupted, use_other=False)),
                       ("corrupted reference masks + other stacks' segmentations",
                        _cross_stack_estimates(val, X, corrupted)),
                       ("other stacks' segmentations only", _cross_stack_estimates(val, X))):
        ev = evaluate_estimates(true, est, 0.7)
        lines.append(f"| {label} | {ev['pearson_r']:.3f} | {ev['spearman_rho']:.3f} | {ev['mae']:.3f} | "
                     f"{ev['accuracy']:.3f} | {ev['sensitivity']:.3f} | {ev['specificity']:.3f} |")
    lines.append("")


def limits(lines: list[str], validity_csv: Path) -> None:
    """Where the remaining error of the calibrated estimate lies, from the CSV of a validity run.

    (a) how the pass/fail errors concentrate near the threshold; (b) how small an unbiased error
    would have to be for 90 % accuracy on this benchmark's true Dice values (simulated); (c) an
    oracle that removes each stack's mean error, measured on the stack's own labels, to see
    whether the error is a per-stack offset; (d) the accuracy of the flags outside a review band
    around the threshold; (e) how the raw RCA statistics rate the models' masks against the
    ground truth itself (:func:`model_preference`); (f) the forward agreement of :func:`forward_agreement`
    (an estimator of another family) alone and beside the RCA statistics, each calibrated on the
    other stacks' benchmark segmentations as in the ceiling section."""
    val = _read_csv(validity_csv)
    true = np.array([float(r["true"]) for r in val])
    est = np.array([float(r["calibrated:forest"]) for r in val])
    stack = np.array([r["stack"] for r in val])
    kind = np.array([r["kind"] for r in val])
    real = kind != "blank"
    right = _flags_right(true, est)
    ev = evaluate_estimates(true, est, 0.7)
    lines += [f"## Where the remaining error lies ({validity_csv.name})", "",
              f"The calibrated estimate: accuracy {ev['accuracy']:.3f}, MAE {ev['mae']:.3f} over {len(val)} "
              "estimates.", "",
              "**(a) Near the threshold.** Pass/fail accuracy by the distance of the true Dice from 0.7:", "",
              "| true Dice within | share of estimates | accuracy inside | accuracy outside |",
              "|---|---|---|---|"]
    for band in (0.05, 0.10, 0.15):
        inside = np.abs(true - 0.7) < band
        if not inside.any() or inside.all():
            continue
        lines.append(f"| ±{band:.2f} of 0.7 | {inside.mean():.3f} | {right[inside].mean():.3f} | "
                     f"{right[~inside].mean():.3f} |")
    rng = np.random.default_rng(0)
    resid = (est - true)[real]
    lines += ["", "**(b) The error budget.** Accuracy when an unbiased Gaussian error of standard deviation SD "
              "is added to the true Dice of these segmentations (mean of 2,000 draws), against the "
              f"residual of the calibrated estimate (SD {resid.std():.3f}, MAE {np.abs(resid).mean():.3f}, "
              "blank masks excepted):", "", "| error SD | accuracy @0.7 |", "|---|---|"]
    for sd in (0.03, 0.05, 0.07, 0.10, 0.13):
        acc = np.mean([np.mean(_flags_right(true, true + rng.normal(0.0, sd, len(true)))) for _ in range(2000)])
        lines.append(f"| {sd:.2f} | {acc:.3f} |")
    oracle = est.copy()
    for i in np.flatnonzero(real):
        same = (stack == stack[i]) & real & (kind != "inverted") & (np.arange(len(val)) != i)
        oracle[i] = np.clip(est[i] + np.mean(true[same] - est[same]), 0.0, 1.0)
    eo = evaluate_estimates(true, oracle, 0.7)
    stack_means = [resid[stack[real] == s].mean() for s in np.unique(stack)]
    lines += ["", "**(c) Is it a per-stack offset?** Each estimate shifted by its stack's mean error over the "
              "stack's other segmentations (inverted and blank masks excepted), which needs the stack's labels: "
              f"accuracy {eo['accuracy']:.3f}, MAE {eo['mae']:.3f} (from {ev['accuracy']:.3f} / {ev['mae']:.3f}). "
              f"The stacks' mean errors spread with SD {np.std(stack_means):.3f} against a residual SD of "
              f"{resid.std():.3f}: the error depends on the segmentation within a stack, not on the stack alone.", ""]
    lines += ["**(d) A review band.** Estimates within a margin of 0.7 sent to a person instead of flagged "
              "automatically (`RCAMonitor(review_margin=...)`, whose `score` then returns `decision='review'`): "
              "the share sent, and how often the automatic flag is right on the rest (the "
              "margins are a grid, not fitted; a user picks one by the share of stacks they can review):", "",
              "| margin on the estimate | share sent to review | accuracy of the automatic flags | "
              "accuracy on the reviewed share, had it been flagged |", "|---|---|---|---|"]
    for margin in (0.05, 0.10, 0.15):  # the rule of RCAMonitor(review_margin=margin)
        sure = np.array([decide(e, 0.7, margin) != "review" for e in est])
        lines.append(f"| ±{margin:.2f} | {1 - sure.mean():.3f} | {right[sure].mean():.3f} | "
                     f"{right[~sure].mean() if (~sure).any() else float('nan'):.3f} |")
    lines.append("")
    model_preference(lines, val)
    if f"diag:{FORWARD_STATS[0]}" not in val[0]:
        lines += ["(f) skipped: this CSV has no forward-agreement columns (written before they were added).", ""]
        return
    fwd = np.array([[float(r[f"diag:{k}"]) for k in FORWARD_STATS] for r in val])
    corr = []
    for j, k in enumerate(FORWARD_STATS):
        has = real & ~np.isnan(fwd[:, j])
        corr.append(f"`{k}` {np.corrcoef(fwd[has, j], true[has])[0, 1]:.3f}")
    lines += ["**(f) Another family of estimator: forward agreement.** A pixel classifier trained on the "
              "references' expert masks segments the scored stack, and the mask is compared with that "
              "(`forward_agreement` in this file). Pearson r with the true Dice (blank masks excepted): " +
              ", ".join(corr) + ".", "",
              "Each held-out stack re-estimated by a forest calibration (the library's) fitted on the other "
              "stacks' benchmark segmentations and their true Dice, from these inputs:", "",
              "| calibration inputs | Pearson r | Spearman rho | MAE | accuracy @0.7 | sensitivity | specificity |",
              "|---|---|---|---|---|---|---|"]
    rca_stats = _stat_matrix(val, "stat:")
    for label, X in (("RCA statistics (as the ceiling section)", rca_stats),
                     ("forward agreement only", fwd),
                     ("RCA statistics + forward agreement", np.hstack([rca_stats, fwd]))):
        e = evaluate_estimates(true, _cross_stack_estimates(val, X), 0.7)
        lines.append(f"| {label} | {e['pearson_r']:.3f} | {e['spearman_rho']:.3f} | {e['mae']:.3f} | "
                     f"{e['accuracy']:.3f} | {e['sensitivity']:.3f} | {e['specificity']:.3f} |")
    lines.append("")


def label_agreement(lines: list[str], validity_csv: Path, per_stack: int = 3) -> None:
    """Per-stack flag accuracy against how well the stack's own labels agree with the other stacks'.

    Two measures of that agreement: the raw ``prior+max`` of each stack's ground truth in the
    validity run (the whole stack scored against the other stacks' references; needs the
    stack's labels, so analysis only), and ``RCAMonitor.reference_agreement`` of one monitor
    whose references are ``per_stack`` annotated patches of every stack (what a user can run
    on their annotated core set before trusting the estimates).
    """
    val = _read_csv(validity_csv)
    stack = np.array([r["stack"] for r in val])
    names = sorted(set(stack))
    right = _flags_right(np.array([float(r["true"]) for r in val]),
                         np.array([float(r["calibrated:forest"]) for r in val]))
    acc = {n: right[stack == n].mean() for n in names}
    own = {r["stack"]: float(r["prior+max"]) for r in val if r["kind"] == "truth"}
    ref_img, ref_msk, ref_src = reference_patches(names, per_stack * len(names), 128, seed=0)
    t = time.perf_counter()
    mon = RCAMonitor(classifier="extra_trees", n_estimators=50, random_state=0).fit((ref_img, ref_msk),
                                                                                     groups=np.array(ref_src))
    rows = {r["group"]: r for r in mon.reference_agreement()}
    seconds = time.perf_counter() - t
    a = np.array([acc[n] for n in names])
    o = np.array([own[n] for n in names])
    g = np.array([rows[n]["agreement"] for n in names])
    low = o < np.median(o)
    lines += ["## Flag accuracy follows the agreement of a stack's labels with the others' "
              f"({validity_csv.name})", "",
              "RCA measures how far a mask agrees with the references' annotations. A stack "
              "whose own annotators drew vessels differently from the other stacks' gets estimates that "
              "rank its segmentations by the others' convention, not by its own ground truth. (The next "
              "section shows that this is not the whole cause: with the stack's own annotated patches as "
              "the references, the same three stacks still have the least accurate flags.) Per stack: "
              "the accuracy of the calibrated flag in the validity run; the raw `prior+max` its ground "
              "truth got there (its labels scored against the other stacks' references; needs its "
              f"labels); and `RCAMonitor.reference_agreement()` of one monitor fitted on {per_stack} "
              "annotated 128x128 patches of every stack (extra_trees, 50 trees; each stack's patches "
              f"scored against the other stacks'; {seconds:.0f} s for fit and the agreement, all "
              "stacks), which needs only the annotated references a user already has.", "",
              "| stack | flag accuracy | own labels: raw `prior+max` | `reference_agreement` |",
              "|---|---|---|---|"]
    for n, ai, oi, gi in sorted(zip(names, a, o, g), key=lambda x: x[2]):
        lines.append(f"| {n} | {ai:.3f} | {oi:.3f} | {gi:.3f} |")
    lines += ["", f"Pearson r over the {len(names)} stacks: flag accuracy vs own labels' `prior+max` "
              f"**{np.corrcoef(a, o)[0, 1]:.3f}**, vs `reference_agreement` **{np.corrcoef(a, g)[0, 1]:.3f}**; "
              f"own labels' `prior+max` vs `reference_agreement` {np.corrcoef(o, g)[0, 1]:.3f}. "
              f"Flag accuracy on the {int((~low).sum())} stacks whose own labels score at or above the median "
              f"({np.median(o):.3f}): {np.mean(a[~low]):.3f}; on the {int(low.sum())} below it: "
              f"{np.mean(a[low]):.3f}.", ""]


def model_preference(lines: list[str], val: list[dict]) -> None:
    """Section (e) of :func:`limits`: mean true Dice and raw RCA aggregates by kind of segmentation,
    and in how many stacks a model's failed mask (true Dice < 0.7) gets a higher raw ``prior+max``
    than the stack's ground truth."""
    groups = (("ground truth", ("truth",)), ("`pixel_rf_*` (pixel classifiers of other stacks)", ("pixel_rf",)),
              ("`transunet_*` (the library's segmenter, other groups)", ("transunet",)),
              ("`thresh_*` and `otsu` (intensity thresholds)", ("thresh", "otsu")),
              ("erosions, dilations, shifts", ("erode", "dilate", "shift")))
    lines += ["**(e) RCA prefers the models' masks to the ground truth.** Means by kind of segmentation "
              "(raw aggregates: no calibration):", "",
              "| segmentations | n | true Dice | raw `prior+max` | raw `balanced+max` | calibrated estimate |",
              "|---|---|---|---|---|---|"]
    means = {}
    for label, prefixes in groups:
        rows = [r for r in val if r["kind"].startswith(prefixes)]
        mean = means[prefixes] = {k: np.mean([float(r[k]) for r in rows])
                                  for k in ("true", "prior+max", "balanced+max", "calibrated:forest")}
        lines.append(f"| {label} | {len(rows)} | {mean['true']:.3f} | {mean['prior+max']:.3f} | "
                     f"{mean['balanced+max']:.3f} | {mean['calibrated:forest']:.3f} |")
    truth_m, rf_m = means[("truth",)], means[("pixel_rf",)]
    stacks = sorted({r["stack"] for r in val})
    inverted = 0
    for st in stacks:
        rows = [r for r in val if r["stack"] == st]
        truth = next(float(r["prior+max"]) for r in rows if r["kind"] == "truth")
        inverted += any(float(r["prior+max"]) > truth and float(r["true"]) < 0.7 for r in rows
                        if r["kind"].startswith(("pixel_rf", "transunet")))
    lines += ["", f"In {inverted} of {len(stacks)} stacks at least one model mask that fails (true Dice < 0.7) "
              "gets a higher raw `prior+max` than the stack's own ground truth: the reverse classifier "
              "reproduces a model's feature-driven mask on the other stacks' references better than it "
              "reproduces the annotators' mask, whose conventions differ between stacks. The calibration, "
              "which sees more statistics than these two, still rates the pixel classifiers' masks (true Dice "
              f"{rf_m['true']:.3f}) almost as highly as the ground truth ({rf_m['calibrated:forest']:.3f} "
              f"against {truth_m['calibrated:forest']:.3f}).", ""]


#: slices of a held-out stack that give its own reference patches in :func:`own_references`; the rest are scored
OWN_REFERENCE_SLICES = slice(1, None, 3)


def own_reference_patches(name: str, z_ref: np.ndarray, n: int, size: int, seed: int, min_fg: float = 0.02
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` annotated ``size`` x ``size`` patches (foreground >= ``min_fg``) of the slices ``z_ref`` of ``name``,
    normalised as :func:`reference_patches` normalises every stack."""
    rng = np.random.default_rng(seed)
    p = Patches.from_tiff([str(DATA / "images" / f"{name}.tif")], axes="ZYX", patch_shape=(size, size),
                          masks=str(DATA / "masks"))
    masks = p.masks()
    ok = (masks.reshape(len(masks), -1).mean(axis=1) >= min_fg) & np.isin(p.provenance().z, z_ref)
    chosen = np.sort(rng.choice(np.flatnonzero(ok), min(n, int(ok.sum())), replace=False))
    return p.images(chosen), masks[chosen]


OWN_MONITORS = ("other", "own", "other+own")
#: own patches per held-out stack in the reported run of :func:`own_references`
OWN_REFERENCE_PATCHES = 6


def own_references(lines: list[str], n_own: int, n_stacks: int | None = None, n_refs: int = 25, size: int = 128,
                   n_estimators: int = 50) -> Path:
    """Validity when the references share the scored stack's annotation convention.

    Every held-out stack's slices are split: every third slice (:data:`OWN_REFERENCE_SLICES`)
    gives ``n_own`` annotated patches, the other slices are scored, and true Dice is computed
    on them only. The same segmentations as the validity section (cropped to the scored slices)
    are estimated by three monitors of the validated configuration: ``other`` (the validity
    section's 25 references of the other stacks, calibration folds by stack), ``own`` (the
    ``n_own`` own patches only, calibration folds by patch) and ``other+own`` (both, folds by
    stack). Not the issue's protocol, which takes references from other stacks only: it measures
    what annotating a few patches of each new acquisition would give. Returns the CSV path.
    """
    names = stack_names()
    held = names if n_stacks is None else names[:: max(1, len(names) // n_stacks)][:n_stacks]
    data = {n: read(n) for n in names}
    params = dict(classifier="extra_trees", n_estimators=n_estimators, single_class="constant",
                  calibration="forest", calibration_size=16, random_state=0)
    rows = []
    for si, name in enumerate(names):
        if name not in held:
            continue
        others = [n for n in names if n != name]
        img, truth = data[name]
        z_ref = np.arange(len(img))[OWN_REFERENCE_SLICES]
        z_eval = np.setdiff1d(np.arange(len(img)), z_ref)
        ref_img, ref_msk, ref_src = reference_patches(others, n_refs, size, seed=si)   # as validity()
        own_img, own_msk = own_reference_patches(name, z_ref, n_own, size, seed=si)
        t = time.perf_counter()
        monitors = {
            "other": RCAMonitor(**params).fit((ref_img, ref_msk), groups=np.array(ref_src)),
            "own": RCAMonitor(**params).fit((own_img, own_msk), groups=np.arange(len(own_img))),
            "other+own": RCAMonitor(**params).fit(
                (np.concatenate([ref_img, own_img]), np.concatenate([ref_msk, own_msk])),
                groups=np.array(ref_src + [name] * len(own_img))),
        }
        print(f"{name}: {len(own_img)} own patches from slices {z_ref.tolist()}, three fits "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        segs = degradations(img, truth, seed=si, others=[data[o] for o in others[:4]], stack=name)
        for kind, seg in segs.items():
            seg = seg[z_eval]
            row = {"stack": name, "kind": kind, "true": dice(seg, truth[z_eval])}
            for label, mon in monitors.items():
                r = mon.score(img[z_eval], seg, axes="ZYX")
                row |= {f"{label}:calibrated": r["estimated_dice"], f"{label}:balanced+max": r["raw_estimated_dice"],
                        f"{label}:prior+max": r["statistics"]["prior_max"]}
            rows.append(row)
            print(f"{name:42s} {kind:16s} true {row['true']:.3f} " +
                  " ".join(f"{m} {row[f'{m}:calibrated']:.3f}" for m in monitors), flush=True)
    OUT.mkdir(exist_ok=True)
    csv_path = OUT / f"rca_own{n_own}.csv"
    _write_csv(csv_path, rows)
    own_references_section(lines, csv_path, n_own)
    return csv_path


#: how many stacks :func:`own_references_section` singles out as agreeing least with the others (the
#: label-agreement section found three well apart from the rest)
N_DISAGREEING = 3


def _kind_counts(kinds: list[str]) -> list[tuple[str, int]]:
    """Counts of segmentation kinds grouped by family prefix (``thresh_*``, ``pixel_rf_*``, ...), most first."""
    from collections import Counter

    fam = [k if not k.startswith(("thresh", "pixel_rf", "transunet")) else k.rsplit("_", 1)[0] + "_*" for k in kinds]
    return Counter(fam).most_common()


def own_references_section(lines: list[str], csv_path: Path, n_own: int) -> None:
    """The markdown of :func:`own_references`, from its CSV."""
    val = _read_csv(csv_path)
    true = np.array([float(r["true"]) for r in val])
    stack = np.array([r["stack"] for r in val])
    col = {c: np.array([float(r[c]) for r in val]) for c in val[0] if c.startswith(OWN_MONITORS)}
    # the stacks whose ground truth, scored against the other stacks' references, gets the lowest raw
    # prior+max in this run (as in the label-agreement section)
    truth_score = {r["stack"]: float(r["other:prior+max"]) for r in val if r["kind"] == "truth"}
    bad = np.isin(stack, sorted(truth_score, key=truth_score.get)[:N_DISAGREEING])
    lines += [f"## References that share the scored stack's annotation convention ({csv_path.name})", "",
              f"Command: `python benchmarks/bench_rca.py --own-references {n_own}` (about 30 min; it writes "
              f"`benchmarks/_out/{csv_path.name}`, which `--own-section` re-analyses). "
              "Not the issue's protocol (references from other stacks only), but what annotating a few patches "
              f"of each new acquisition would give. In each held-out stack, every third slice (z = 1, 4, 7, ...) "
              f"gives {n_own} annotated 128x128 patches (foreground >= 2 %) and the other slices are scored; "
              "the true Dice is computed on those slices only. The validity section's segmentations, cropped "
              "to them, are estimated by three monitors of the validated configuration (extra_trees, 50 trees, "
              "forest calibration): *other* (the validity section's 25 references of the other stacks; "
              f"calibration folds by stack), *own* (the {n_own} own patches only; folds by patch) and "
              "*other+own* (both; folds by stack).", "",
              "| references | estimate | Pearson r | Spearman rho | MAE | accuracy @0.7 | sensitivity | "
              f"specificity | accuracy, {N_DISAGREEING} disagreeing stacks | "
              f"accuracy, other {len(truth_score) - N_DISAGREEING} |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for mon in OWN_MONITORS:
        for est_name in ("balanced+max", "prior+max", "calibrated"):
            est = col[f"{mon}:{est_name}"]
            e = evaluate_estimates(true, est, 0.7)
            ok = _flags_right(true, est)
            lines.append(f"| {mon} | {est_name} | {e['pearson_r']:.3f} | {e['spearman_rho']:.3f} | {e['mae']:.3f} | "
                         f"{e['accuracy']:.3f} | {e['sensitivity']:.3f} | {e['specificity']:.3f} | "
                         f"{ok[bad].mean():.3f} | {ok[~bad].mean():.3f} |")
    cal = {m: col[f"{m}:calibrated"] for m in OWN_MONITORS}
    keep = np.array([r["kind"] != "blank" for r in val])
    wrong = {m: ~_flags_right(true, cal[m]) for m in OWN_MONITORS}
    lines += ["", "Calibrated accuracy against the goal of 0.90: " + ", ".join(
        f"{m} {1 - wrong[m].mean():.3f} ({'met' if 1 - wrong[m].mean() >= 0.9 else 'not met'})" for m in OWN_MONITORS) +
        f". Wrong flags: other {wrong['other'].sum()}, own {wrong['own'].sum()}, of which "
        f"{(wrong['other'] & wrong['own']).sum()} are the same segmentations; correlation of the errors "
        "(estimate minus true Dice, blank masks excepted) of other and own "
        f"{np.corrcoef((cal['other'] - true)[keep], (cal['own'] - true)[keep])[0, 1]:.3f}. Wrong flags of own by kind: " +
        ", ".join(f"{k} {n}" for k, n in _kind_counts([r["kind"] for r, w in zip(val, wrong["own"]) if w])) + "."]
    lines += ["", "Per held-out stack, accuracy @0.7 of the calibrated estimate:", "",
              "| stack | " + " | ".join(OWN_MONITORS) + " |", "|---|" + "---|" * len(OWN_MONITORS)]
    for name in sorted(set(stack)):
        sel = stack == name
        cells = [f"{_flags_right(true[sel], cal[m][sel]).mean():.3f}" for m in OWN_MONITORS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")


def replot(csv: Path) -> None:
    """Redraw the scatter plots of every variant from a per-estimate CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_csv(csv)
    keys = list(rows[0])
    suffix = csv.stem[len("rca_validity"):]
    true = np.array([float(r["true"]) for r in rows])
    kinds = [r["kind"] for r in rows]
    for c in [k for k in keys if "+" in k or k.startswith("calibrated:")]:
        ax = plot_rca_scatter(true, np.array([float(r[c]) for r in rows]), 0.7, groups=kinds,
                              title=f"RCA on vesselnn_2pm ({c})")
        ax.figure.tight_layout()
        ax.figure.savefig(csv.parent / f"rca_scatter_{c.replace('+', '_').replace(':', '_')}{suffix}.png", dpi=120)
        plt.close(ax.figure)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=("speed", "speed-default", "validity", "all"), default="all")
    ap.add_argument("--stacks", type=int, default=None, help="number of held-out stacks (default: all 9)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classifier", default="extra_trees",
                    help="reverse classifier of the validity section (default: the validated configuration)")
    ap.add_argument("--calibration", default="forest", choices=("forest", "linear", "isotonic"),
                    help="self-calibration whose estimate the goals are checked on (all three are reported)")
    ap.add_argument("--calibration-size", type=int, default=16, help="corrupted masks per reference stack")
    ap.add_argument("--n-estimators", type=int, default=50, help="trees of the reverse classifier (validity)")
    ap.add_argument("--pool", type=int, default=25, help="annotated reference patches of the other stacks")
    ap.add_argument("--retrieve", type=int, default=None,
                    help="score each stack against only this many of the pool, nearest by MAE embedding")
    ap.add_argument("--match-pixel-size", action="store_true",
                    help="cut references to the held-out stack's field of view in µm and resample them to its "
                         "pixel size (manifest.csv)")
    ap.add_argument("--tag", default="", help="suffix of the CSV and plot names (keeps runs apart)")
    ap.add_argument("--kinds", nargs="+", default=None, help="only these segmentation kinds (quicker)")
    ap.add_argument("--same-group", action="store_true",
                    help="references only from other stacks of the held-out stack's acquisition group")
    ap.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    ap.add_argument("--replot", default=None, metavar="CSV",
                    help="only redraw the scatter plots from a per-estimate CSV written by the validity section")
    ap.add_argument("--leave-family-out", nargs=2, default=None, metavar=("VALIDITY_CSV", "CALIBRATION_CSV"),
                    help="only the leave-family-out section, from the CSVs of a validity run")
    ap.add_argument("--ceiling", nargs=2, default=None, metavar=("VALIDITY_CSV", "CALIBRATION_CSV"),
                    help="only the calibration-ceiling section (calibration on the other stacks' benchmark "
                         "segmentations), from the CSVs of a validity run")
    ap.add_argument("--limits", default=None, metavar="VALIDITY_CSV",
                    help="only the where-the-error-lies section, from the per-estimate CSV of a validity run")
    ap.add_argument("--agreement", default=None, metavar="VALIDITY_CSV",
                    help="only the label-agreement section (per-stack flag accuracy vs how well each stack's labels "
                         "agree with the others'), from the per-estimate CSV of a validity run")
    ap.add_argument("--own-references", type=int, default=None, metavar="N",
                    help="only the own-convention experiment: N annotated patches of every third slice of each "
                         "held-out stack as references, the other slices scored (about 30 min; writes "
                         "results/rca_own.md unless --out is given)")
    ap.add_argument("--own-section", nargs=2, default=None, metavar=("CSV", "N"),
                    help="only re-analyse the own-convention CSV of an earlier run (report to benchmarks/_out/)")
    args = ap.parse_args(argv)
    if args.replot:
        replot(Path(args.replot))
        return
    command = " ".join(["python benchmarks/bench_rca.py", *(argv if argv is not None else sys.argv[1:])])
    lines: list[str] = []
    reanalysis = next((k for k in ("leave_family_out", "ceiling", "limits", "agreement", "own_section")
                       if getattr(args, k)), None)
    if args.leave_family_out:  # from the CSVs of an earlier validity run; no RCA is run
        leave_family_out(lines, *map(Path, args.leave_family_out))
    elif args.ceiling:
        calibration_ceiling(lines, *map(Path, args.ceiling))
    elif args.limits:
        limits(lines, Path(args.limits))
    elif args.agreement:
        label_agreement(lines, Path(args.agreement))
    elif args.own_section:
        own_references_section(lines, Path(args.own_section[0]), int(args.own_section[1]))
    elif not (DATA / "images").is_dir():
        sys.exit(f"{DATA} not found; set BIODATACENTRIC_DATA to the folder holding vesselnn_2pm")
    else:
        os.environ.setdefault("BIODATACENTRIC_PROGRESS", "0")
        run_sections(lines, args)
    out = Path(args.out)
    if args.own_references and args.out == str(RESULTS):
        out = RESULTS.with_name("rca_own.md")
    if reanalysis:
        # a re-analysis reads a CSV of some earlier run (under _out/, git-ignored): its text is for
        # inspection and never becomes a committed result (results/ is written by measuring runs only)
        if args.out == str(RESULTS):
            out = OUT / f"rca_{reanalysis}.md"
        elif out.resolve().parent == RESULTS.parent.resolve():
            sys.exit(f"--{reanalysis.replace('_', '-')} re-analyses an earlier run's CSV; its report cannot be "
                     f"written into {RESULTS.parent} (committed results come from measuring runs only): "
                     "leave --out out (it goes to benchmarks/_out/) or name a file elsewhere")
    title = "RCAMonitor benchmark" + (": references that share the scored stack's annotation convention"
                                      if args.own_references or args.own_section else "")
    path = write_result(out.stem, title, "\n".join(lines), command, folder=out.parent)
    print(path.read_text(encoding="utf-8"))


def run_sections(lines: list[str], args: argparse.Namespace) -> None:
    if args.own_references:   # an experiment of its own, instead of the sections
        own_references(lines, args.own_references, args.stacks)
        return
    if args.section in ("speed", "all"):
        speed(lines, args.repeats)
    if args.section == "speed-default":
        speed(lines, args.repeats, quick=True)
    if args.section in ("validity", "all"):
        val_csv, cal_csv = validity(lines, args.stacks, same_group=args.same_group, classifier=args.classifier,
                                    calibration=args.calibration, calibration_size=args.calibration_size,
                                    kinds_subset=args.kinds, n_estimators=args.n_estimators, tag=args.tag,
                                    n_refs=args.pool, retrieve=args.retrieve,
                                    match_pixel_size=args.match_pixel_size)
        if args.section == "all" and (args.stacks is None or args.stacks >= 2):  # analyses of that run's CSVs
            leave_family_out(lines, val_csv, cal_csv)
            calibration_ceiling(lines, val_csv, cal_csv)
            limits(lines, val_csv)
            label_agreement(lines, val_csv)
            lines += ["References that share the scored stack's annotation convention: `rca_own.md` "
                      f"(`--own-references {OWN_REFERENCE_PATCHES}`, an experiment of its own). Earlier "
                      "configurations: `rca_history.md` (a record of earlier runs, kept as text).", ""]


if __name__ == "__main__":
    main()
