"""The four-stage data-centric loop, end to end, on the bundled sample or a folder of stacks.

``python -m biodatacentric demo`` (or ``make demo``) runs:

1. pretrain a masked autoencoder on every training patch and embed them;
2. audit the dataset and select a core set by max K-cover; "annotate" it;
3. train the segmenter M0 on the core set; hunt for mistakes (flips, rotations and MC dropout); "curate" three
   critical patches; fine-tune with replay to get M1;
4. monitor held-out data with :class:`~biodatacentric.monitor.QualityMonitor`: the model's own
   agreement under flips and MC dropout, reverse classification accuracy (RCA) and drift,
   calibrated on a few annotated validation patches; it scores M0, M1 and a deliberately weak model.

**Simulation.** The demo has no person at the keyboard: wherever a person would paint or
correct masks (the core set, the critical patches), the data's own manual masks are written
into the annotation folder instead, through the same export / read-back round trip a person
would use. The report says so.

It prints a per-stage report and writes ``report.md`` and figures to ``out``.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import (DatasetAuditor, KCoverSelector, MAEPretrainer, MCDropoutHunter, QualityMonitor, RCAMonitor,
               TransUNetSegmenter)
from ._io import atomic_write, atomic_write_text
from ._runs import user_runs_file
from .assess.audit import AuditWarning
from .assess.plots import plot_embedding_map, plot_montage
from .data import Patches, load_sample
from .data.writers import write_tiff
from .metrics import dice
from .monitor import evaluate_estimates, plot_rca_scatter
from .plan import Deadline, demo_config, plan, record_run
from .segment.plots import plot_prediction_overlays

__all__ = ["run_demo"]


class _Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = ["# biodatacentric demo report", ""]
        self.times: dict[str, float] = {}

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def stage(self, name: str) -> "_Timer":
        return _Timer(self, name)

    def write(self) -> Path:
        self.lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
        self.lines += [f"| {k} | {v:.1f} |" for k, v in self.times.items()]
        path = self.out / "report.md"

        atomic_write_text(path, "\n".join(self.lines) + "\n")
        return path


class _Timer:
    def __init__(self, report: _Report, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> "_Timer":
        self.report.say(f"\n## {self.name}")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        dt = time.perf_counter() - self.t0
        self.report.times[self.name] = dt
        self.report.say(f"({dt:.1f} s)")


def _limit_note(params: dict) -> str:
    """' (time limit N s, at most M)' for a time-limited training stage, else ''."""
    if params.get("max_time") is None:
        return ""
    return f" (time limit {params['max_time']:.0f} s, at most {params['max_epochs']})"


def _fresh_folder(folder: Path) -> Path:
    """Remove the demo's own previous annotation folder, so a re-run exports afresh."""
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def _simulate_annotation(folder: Path, true_masks: np.ndarray) -> None:
    """Stand-in for the person: write the data's manual masks as the painted masks."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    (folder / "masks").mkdir(exist_ok=True)
    for entry, mask in zip(manifest["patches"], true_masks):
        atomic_write(folder / entry["mask"], lambda p, m=mask: tifffile.imwrite(p, m.astype(np.uint8)))


def _load(data: str | None, patch_size: int | None):
    """Training patches (with masks), a held-out stack, a description, and the held-out stack's
    file name and first z in that file."""
    if data is None:
        s = load_sample()
        p = patch_size or 64
        all_p = Patches.from_tiff(s.image_path, axes="ZYX", patch_shape=(p, p), masks=str(Path(s.mask_path).parent))
        z_split = int(s.image.shape[0] * 0.75)
        train = all_p[all_p.index["z"] < z_split]
        test_img, test_mask = s.image[z_split:], s.mask[z_split:]
        held_out = (Path(s.image_path).name, z_split)
        desc = (f"bundled sample: OCT-A volume {s.image.shape} (tUbeNet, MIT); training slices 0-{z_split - 1}, "
                f"held-out slices {z_split}-{s.image.shape[0] - 1}")
        return train, test_img, test_mask, desc, held_out
    folder = Path(data)
    files = sorted(p for p in (folder / "images").glob("*.tif*"))
    if not files:
        raise FileNotFoundError(f"{folder}/images holds no .tif files")
    p = patch_size or 128
    if len(files) >= 2:
        train = Patches.from_tiff([str(f) for f in files[:-1]], axes="ZYX", patch_shape=(p, p),
                                  masks=str(folder / "masks"))
        test_img = tifffile.imread(files[-1])
        test_mask = tifffile.imread(folder / "masks" / files[-1].name)
        desc = f"{folder}: {len(files) - 1} training stacks, held-out stack {files[-1].name}"
        held_out = (files[-1].name, 0)
    else:
        all_p = Patches.from_tiff(str(files[0]), axes="ZYX", patch_shape=(p, p), masks=str(folder / "masks"))
        img = tifffile.imread(files[0])
        mask = tifffile.imread(folder / "masks" / files[0].name)
        z_split = max(1, int(img.shape[0] * 0.75))
        train = all_p[all_p.index["z"] < z_split]
        test_img, test_mask = img[z_split:], mask[z_split:]
        desc = f"{files[0].name}: training slices 0-{z_split - 1}, held-out slices {z_split}-{img.shape[0] - 1}"
        held_out = (files[0].name, z_split)
    return train, test_img, (test_mask > 0).astype(np.uint8), desc, held_out


def _monitor_stage(rep: _Report, out: Path, train: Patches, emb: np.ndarray, mae: Any, core: Patches,
                   core_idx: Any, crit_idx: Any, seg_params: dict, models: dict, test_img: np.ndarray,
                   test_mask: np.ndarray, quick: bool, seed: int, monitor: dict) -> list[dict]:
    """Stage 4: fit a QualityMonitor per model on annotated validation patches and score the
    held-out slices of M0, M1 and a deliberately weak model; returns one row per scored slice."""
    import matplotlib.pyplot as plt

    # validation references: patches neither model was trained on, "annotated" like the core set
    # (simulation), spread over slabs of the training slices
    masks = train.masks()
    used = set(np.asarray(core_idx).tolist()) | set(np.asarray(crit_idx).tolist())
    slab = np.asarray(train.index["z"]) // 12
    rng = np.random.default_rng(seed)
    val_idx = []
    for g in np.unique(slab):
        ok = [i for i in np.flatnonzero(slab == g) if i not in used and masks[i].mean() >= 0.02]
        val_idx += rng.permutation(ok)[:3].tolist()
    val_idx = np.sort(val_idx)
    val_dir = _fresh_folder(out / "annotation" / "validation")
    train[val_idx].export(val_dir)
    _simulate_annotation(val_dir, masks[val_idx])
    val = Patches.read_annotations(val_dir, require_all=True)
    groups = [f"slices {12 * g}-{12 * g + 11}" for g in slab[val_idx]]
    # the RCA part takes the plan's monitor settings (cfg["monitor"]: its trees and seed)
    rca = RCAMonitor(**{"classifier": "extra_trees", "calibration": "forest", "calibration_size": 4 if quick else 8,
                        "verbose": False, **monitor}).fit(val, groups=groups)
    # a deliberately weak model: M0's recipe stopped after a few steps
    weak = TransUNetSegmenter(encoder=mae.encoder_, **{**seg_params, "max_epochs": 1}).fit(core)
    models = {"weak (1 epoch)": (weak, weak.predict_image(test_img, axes="ZYX")), **models}
    rep.say(f"References: {len(val)} validation patches the models never saw, annotated (SIMULATION) in "
            f"{val_dir}. Each model gets its own monitor (its agreement is measured on its own samples); "
            "the RCA part and the drift (MAE embeddings against the training patches) are shared.")
    z_pick = np.unique(np.linspace(0, len(test_img) - 1, min(8, len(test_img))).astype(int))
    rows = []
    for name, (model, pred) in models.items():
        # a held-out slice holds four tiles of the training patch size: 4 tiles x 8 samples
        mon = QualityMonitor(model, rca=rca, embedder=mae, n_samples=4 if quick else 8, n_tiles=4,
                             n_estimators=20 if quick else 100, random_state=seed)
        mon.fit(val, groups=groups, training_embeddings=emb)
        for z in z_pick:
            rec = mon.assess(test_img[z], pred[z], axes="YX")
            rows.append({"model": name, "z": int(z), "true": dice(pred[z], test_mask[z]),
                         "estimated": rec["estimated_dice"], "passed": rec["passed"], "decision": rec["decision"],
                         "agreement": rec["signals"]["agreement"], "rca": rec["signals"]["rca"],
                         "drift": rec["signals"]["drift"], "reason": rec["reasons"][0]})
    true_d = np.array([r["true"] for r in rows])
    est_d = np.array([r["estimated"] for r in rows])
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    plot_rca_scatter(true_d, est_d, threshold=0.7, groups=[r["model"] for r in rows], ax=ax,
                     title="QualityMonitor estimate vs true Dice\n(held-out slices)")
    fig.tight_layout()
    fig.savefig(out / "quality_scatter.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    rep.say("| model | slice | true Dice | estimate | agreement | RCA | drift pct | decision |")
    rep.say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        drift = "-" if r["drift"] is None else f"{r['drift']:.0f}"
        sig = [("-" if r[k] is None else f"{r[k]:.3f}") for k in ("agreement", "rca")]
        rep.say(f"| {r['model']} | {r['z']} | {r['true']:.3f} | {r['estimated']:.3f} | {sig[0]} | {sig[1]} | "
                f"{drift} | {r['decision']} |")
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        if mine:
            t, e = np.mean([r["true"] for r in mine]), np.mean([r["estimated"] for r in mine])
            verdict = ", ".join(f"{d} {sum(r['decision'] == d for r in mine)}" for d in ("pass", "review", "fail"))
            rep.say(f"{name}: mean true Dice {t:.3f}, mean estimate {e:.3f}; decisions: {verdict}. "
                    f"Why (first slice): {mine[0]['reason']}")
    if len(rows) > 2:
        ev = evaluate_estimates(true_d, est_d, threshold=0.7)
        rep.say(f"Estimate vs true Dice over {len(rows)} slices of the three models: Pearson r "
                f"{ev['pearson_r']:.2f}, MAE {ev['mae']:.3f}, pass/fail accuracy {ev['accuracy']:.2f}. "
                "Figure: quality_scatter.png")
    return rows


def run_demo(data: str | None = None, out: str | Path = "demo_output", seed: int = 0,
             patch_size: int | None = None, quick: bool = False, time_budget: Any = None,
             runs_file: str | Path | None = None) -> dict:
    """Run the whole loop and return a dict of the reported numbers (see the module docstring).

    Parameters
    ----------
    data : str, optional
        A folder holding ``images/*.tif`` and ``masks/*.tif`` z-stacks paired by name; the
        bundled OCT-angiography sample when omitted.
    out : str or Path
        Folder for ``report.md``, the figures, the annotation round trip and the models.
    seed : int
        Seed of every stage.
    patch_size : int, optional
        Side of the square patches (default 64 on the bundled sample, 128 on a folder).
    quick : bool
        Tiny models and few epochs: checks that the loop runs, not what it achieves.
    time_budget : float or str, optional
        Plan every stage with :func:`biodatacentric.plan` to finish in about this time (e.g.
        ``"5min"``); the plan and its reasons are printed and saved as ``plan.json``.
    runs_file : path, optional
        JSON-lines file the run's record (fingerprint, settings, measured seconds, Dice) is
        appended to; by default the user's runs file (``$BIODATACENTRIC_RUNS``, else
        ``~/.local/share/biodatacentric/runs.jsonl``; see :func:`biodatacentric._runs.user_runs_file`),
        which :func:`biodatacentric.plan` reads besides the table shipped with the package.

    Returns
    -------
    dict
        ``n_patches``, ``dice_m0`` and ``dice_m1`` (held-out Dice of the segmenter before and
        after curation), ``monitor`` (one row per scored slice: model, z, true and estimated
        Dice, passed, decision, the signals and the first reason; also under ``rca``),
        ``audit_excluded`` (patches not offered to the selector), ``total_seconds`` and
        ``runs_file`` (where the run's record went; absent when recording is off).

    Examples
    --------
    The full loop takes minutes on a laptop CPU, so this example is not run by the tests
    (``tests/test_demo.py`` runs ``quick=True``):

    >>> from biodatacentric.demo import run_demo
    >>> results = run_demo(out="demo_output")                       # doctest: +SKIP
    >>> results["dice_m0"], results["dice_m1"]                      # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = _Report(out)
    t_start = time.perf_counter()
    train, test_img, test_mask, desc, (test_name, z_offset) = _load(data, patch_size)
    the_plan = None
    if time_budget is not None:                 # the planner chooses; see biodatacentric.plan
        the_plan = plan(train, time_budget=time_budget)
        if patch_size is None and the_plan.patch_size != train.patch_shape[0]:
            train, test_img, test_mask, desc, (test_name, z_offset) = _load(data, the_plan.patch_size)
        the_plan.save(out / "plan.json")
        rep.say(str(the_plan))
    cfg = demo_config(the_plan, quick, seed)
    # a planned run keeps to its budget: each training stage gets its share of the time left
    deadline = Deadline(the_plan, t_start) if the_plan is not None else None
    P = train.patch_shape[0]
    k_core, arch = cfg["k_core"], cfg["arch"]
    rep.say(f"Data: {desc}")
    rep.say(f"{len(train)} training patches of {P}x{P}; held-out stack {test_img.shape} (ZYX).")
    rep.say("SIMULATION: the data's manual masks stand in for the person who annotates the core set "
            "and corrects the critical patches.")
    results: dict[str, Any] = {"n_patches": len(train)}

    with rep.stage("Stage 1 - pretrain (MAE) and embed"):
        if deadline is not None:
            cfg["pretrain"]["max_time"] = round(deadline.seconds("pretrain"), 1)
        mae = MAEPretrainer(**{**cfg["pretrain"], "img_size": P})
        mae.fit(train)
        emb = mae.transform(train)
        mae.save_reconstruction_grid(out / "mae_reconstruction.png", train, n=6)
        rep.say(f"MAE loss {mae.history_['loss'][0]:.4f} -> {mae.history_['loss'][-1]:.4f} over "
                f"{len(mae.history_['loss'])} epochs{_limit_note(cfg['pretrain'])}; embeddings {emb.shape}. "
                "Figure: mae_reconstruction.png")

    with rep.stage("Stage 2 - audit and core set (max K-cover)"):
        # duplicates are reported but not excluded: on a small volume neighbouring slices look alike
        with warnings.catch_warnings():    # the reason, if any, goes into the report below
            warnings.simplefilter("ignore", AuditWarning)
            audit = DatasetAuditor(**(cfg["audit"] or dict(n_clusters=min(20, len(train) // 4), random_state=seed,
                                                           exclude_checks=("blank", "saturated", "blurry")))
                                   ).fit(train, embeddings=emb)
        checks = " and ".join(", ".join(audit.exclude_checks).rsplit(", ", 1))
        rep.say("Audit flags: " + ", ".join(f"{r['check']}={r['flagged']}" for r in audit.summary())
                + f" ({checks} patches are excluded from the core set)")
        exclude = audit.exclude_
        reason = audit.most_excluded_reason()
        if reason is not None:   # nobody here to decide knowingly: never exclude most of the data
            exclude = np.zeros(len(train), dtype=bool)
            rep.say(f"NOT EXCLUDED: {reason} The demo never excludes more than half of the data without a "
                    "person deciding so; the core set is chosen from all patches.")
        results["audit_excluded"] = int(exclude.sum())
        sel = KCoverSelector(n_select=k_core, random_state=seed).fit(emb, exclude=exclude,
                                                                     groups=train.index["source"])
        core_idx = sel.selected_indices_
        core_dir = _fresh_folder(out / "annotation" / "core")
        train[core_idx].export(core_dir)
        _simulate_annotation(core_dir, train[core_idx].masks())
        core = Patches.read_annotations(core_dir, require_all=True)
        plot_montage(train, core_idx, suptitle=f"K-cover core set (K={k_core})").savefig(
            out / "core_set_montage.png", dpi=110)
        stacks = [Path(s).name for s in train.provenance().source]
        plot_embedding_map(emb, {"K-cover core set": core_idx}, flagged=exclude, groups=stacks,
                           title="MAE embeddings (PCA) and the core set", random_state=seed).savefig(
            out / "embedding_map.png", dpi=110)
        rep.say(f"Core set: {k_core} of {len(train)} patches ({100 * k_core / len(train):.1f}%), objective "
                f"{sel.objective_value_:.1f}; exported to {core_dir} and read back with masks. "
                "Figures: core_set_montage.png, embedding_map.png")

    # the segmenter's transformer takes its sizes from the MAE encoder it starts from
    seg_params = {**cfg["segment"], "img_size": P}
    if deadline is not None:
        deadline.done("pretrain", rep.times["Stage 1 - pretrain (MAE) and embed"])
        deadline.observe("pretrain", mae.history_["epoch_time"])
        seg_params["max_time"] = round(deadline.seconds("segment"), 1)
    with rep.stage("Segment - M0 on the core set"):
        seg = TransUNetSegmenter(encoder=mae.encoder_, **seg_params).fit(core)
        seg.save(out / "models" / "M0")      # before fine-tuning turns it into M1
        pred0 = seg.predict_image(test_img, axes="ZYX")
        d0 = dice(pred0, test_mask)
        rep.say(f"Encoder transfer: {len(seg.encoder_transfer_['loaded'])} tensors from the MAE. "
                f"{len(seg.history_['loss'])} epochs{_limit_note(seg_params)}. M0 held-out Dice: {d0:.3f}")
        results["dice_m0"] = d0

    if deadline is not None:
        deadline.done("segment", rep.times["Segment - M0 on the core set"])
        deadline.observe("segment", seg.history_["epoch_time"])
        scale = deadline.scale("hunt")
        cfg["hunt"]["n_samples"] = deadline.hunt_samples()
        cfg["fine_tune"]["max_time"] = round(max(cfg["fine_tune"]["max_time"] * scale, 1.0), 1)
        rep.say(f"Time left for hunting and fine-tuning: {100 * scale:.0f} % of the plan's, at {deadline.slowdown:.1f} x "
                f"the planned seconds per epoch: {cfg['hunt']['n_samples']} MC-dropout samples, fine-tuning within "
                f"{cfg['fine_tune']['max_time']:.0f} s")
    with rep.stage("Stage 3 - hunt, curate 3, fine-tune M1"):
        hunter = MCDropoutHunter(seg, **cfg["hunt"]).fit(train)
        # the most uncertain, at most one per stack and slice neighbourhood (the rule that beat
        # random picks over ten fresh pools in both protocols of the hunting benchmark)
        crit_idx = hunter.select(3, exclude=core_idx, diversity="one_per_slice")
        hunter.plot(train, crit_idx, path=out / "critical_patches.png")
        crit_dir = _fresh_folder(out / "annotation" / "round1")
        critical = train[crit_idx]
        start = seg.predict(critical)
        critical.export(crit_dir, masks=start, mask_origin="prediction M0")
        _simulate_annotation(crit_dir, critical.masks())
        curated = Patches.read_annotations(crit_dir, require_all=True)
        seg.fine_tune(curated, replay=core, **cfg["fine_tune"])
        pred1 = seg.predict_image(test_img, axes="ZYX")
        d1 = dice(pred1, test_mask)
        rep.say(f"Scored {len(train)} patches (T={hunter.n_samples}); critical: "
                + ", ".join(f"z{train[i].z} y{train[i].y} x{train[i].x}" for i in crit_idx)
                + f". M1 held-out Dice: {d1:.3f} (M0 {d0:.3f}). Figure: critical_patches.png")
        results["dice_m1"] = d1

    with rep.stage("Stage 4 - monitor: QualityMonitor (model agreement + RCA + drift)"):
        results["monitor"] = _monitor_stage(rep, out, train, emb, mae, core, core_idx, crit_idx, seg_params,
                                            {"M0": (TransUNetSegmenter.load(out / "models" / "M0"), pred0),
                                             "M1": (seg, pred1)}, test_img, test_mask, quick, seed,
                                            cfg["monitor"])
        results["rca"] = results["monitor"]  # the per-slice rows (kept under the old key too)

    z = len(test_img) // 2
    fig = plot_prediction_overlays(test_img[z], {"M0": pred0[z], "M1": pred1[z]}, test_mask[z],
                                   where=f"{test_name}, held-out slice z = {z + z_offset}",
                                   intensity_label="raw intensity")
    fig.savefig(out / "m0_vs_m1.png", dpi=110)

    with rep.stage("Saved for Fiji, napari and later runs"):
        models = out / "models"
        mae.save(models / "mae")
        seg.save(models / "M1")
        pred_path = write_tiff(out / "heldout_prediction_M1.tif", pred1, axes="ZYX", overwrite=True)
        rep.say(f"Models: {models / 'mae'} (MAE), {models / 'M0'} and {models / 'M1'} (segmenters; load "
                f"with TransUNetSegmenter.load). Held-out prediction of M1: {pred_path} (ImageJ TIFF, "
                "opens in Fiji and napari).")
        results["models"] = str(models)
        results["prediction"] = str(pred_path)

    total = time.perf_counter() - t_start
    rep.say(f"\nTotal {total:.0f} s. Figures and report in {out}/")
    results["total_seconds"] = total
    rep.write()
    runs_path = Path(runs_file) if runs_file is not None else user_runs_file()
    if runs_path is not None:
        results["runs_file"] = str(record_run(runs_path, "demo", train, cfg, rep.times, total, results, the_plan))
        print(f"Run record (fingerprint, settings, measured seconds, Dice) appended to {runs_path}; "
              "biodatacentric.plan reads it (BIODATACENTRIC_RUNS=off records nothing).", flush=True)
    return results
