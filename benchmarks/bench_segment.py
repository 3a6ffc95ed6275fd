"""TransUNetSegmenter benchmarks: whole-stack inference speed vs MONAI, quality on vesselNN
(ours from scratch, ours with the MAE encoder, MONAI UNETR), and forgetting with replay.

    python benchmarks/bench_segment.py                       # all parts
    python benchmarks/bench_segment.py --part speed          # one part (speed|quality|forgetting)
    python benchmarks/bench_segment.py --steps 300 --seeds 0 1 2

The markdown report benchmarks/results/segment.md (``_common.write_result``) is built from the
parts measured in this run (``--part all``: speed, quality and forgetting; a single part writes
its own section only). Every model is trained in the run: the seed-0 from-scratch model of the
quality part is M0 of the speed and forgetting parts (trained on demand when the quality part
does not run), and the MAE encoder is the benchmark MAE pretrained in the run
(``_common.vesselnn_mae``, bench_mae.py's settings, about 5 minutes). Raw JSON under
``benchmarks/_out/segment/`` is a record no run reads back.

Data: ``BIODATACENTRIC_DATA`` (vesselnn_2pm), split by acquisition group (README): burgess2014 +
santos2015 stacks for training, poon2015 stacks for testing; 128x128 patches, stride 128,
per-stack percentile normalisation (Patches default).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, machine, require_vesselnn, vesselnn_mae, write_result  # noqa: E402

from biodatacentric import Patches  # noqa: E402
from biodatacentric._train import TrainSettings, train  # noqa: E402
from biodatacentric.metrics import dice_per_sample  # noqa: E402
from biodatacentric.segment import TransUNetSegmenter, segmentation_loss  # noqa: E402
from biodatacentric.segment.segmenter import augment_batch  # noqa: E402

SEG_OUT = OUT / "segment"
PATCH = 128
BATCH = 8
EPOCHS = 5
LR = 5e-4
COMMON = dict(preset="small", img_size=PATCH, batch_size=BATCH, lr=LR, warmup_epochs=0.5, weight_decay=0.01,
              device="cpu", precision="auto", progress=False)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------- data
def load_split(root: Path) -> tuple[Patches, Patches, dict]:
    imgs = root / "images"
    train_files = sorted(str(p) for p in imgs.glob("*.tif") if p.name.startswith(("burgess2014", "santos2015")))
    test_files = sorted(str(p) for p in imgs.glob("*.tif") if p.name.startswith("poon2015"))
    tr = Patches.from_tiff(train_files, axes="ZYX", patch_shape=(PATCH, PATCH), masks=str(root / "masks"))
    te = Patches.from_tiff(test_files, axes="ZYX", patch_shape=(PATCH, PATCH), masks=str(root / "masks"))
    return tr, te, {"train_files": [Path(f).stem for f in train_files], "test_files": [Path(f).stem for f in test_files]}


def patches_per_seed(steps: int) -> int:
    """Training patches drawn per seed so that ``EPOCHS`` epochs of batch ``BATCH`` make ``steps`` steps."""
    return int(math.ceil(steps / EPOCHS)) * BATCH


def train_subset(n_patches: int, seed: int, steps: int) -> np.ndarray:
    """The sorted training-patch positions of one seed (the same in every part of this benchmark)."""
    n = min(patches_per_seed(steps), n_patches)
    return np.sort(np.random.default_rng(seed).choice(n_patches, size=n, replace=False))


def pooled_dice(pred: np.ndarray, true: np.ndarray) -> float:
    p, t = pred.astype(bool), true.astype(bool)
    return float(2 * np.count_nonzero(p & t) / max(np.count_nonzero(p) + np.count_nonzero(t), 1))


def evaluate(predict_labels, X: np.ndarray, Y: np.ndarray) -> dict:
    pred = predict_labels(X)
    return {"pooled_dice": pooled_dice(pred, Y), "mean_patch_dice": float(dice_per_sample(pred, Y).mean())}


# ---------------------------------------------------------------------- MONAI UNETR on the same loop
def train_unetr(X: np.ndarray, Y: np.ndarray, seed: int, epochs: int, feature_size: int):
    from monai.networks.nets import UNETR

    from biodatacentric._utils import resolve_precision

    torch.manual_seed(seed)
    net = UNETR(in_channels=1, out_channels=2, img_size=(PATCH, PATCH), feature_size=feature_size, hidden_size=256,
                mlp_dim=1024, num_heads=8, spatial_dims=2, dropout_rate=0.1, qkv_bias=True, norm_name="instance")
    prec = resolve_precision("auto", "cpu")
    settings = TrainSettings(max_epochs=epochs, batch_size=BATCH, lr=LR, weight_decay=0.01, betas=(0.9, 0.999),
                             warmup_epochs=0.5, schedule="cosine", device="cpu", precision=prec, seed=seed,
                             progress=False, grad_clip=1.0)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y.astype(np.int64))

    def step(m, idx, gen):
        sel = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        x, y = augment_batch(Xt[sel][:, None], Yt[sel], gen)
        return segmentation_loss(m(x), y, "ce+dice", "foreground")

    hist = train(net, step, len(X), settings, desc="unetr")
    net.eval()

    def predict(Xe: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(Xe), 32):
            xb = torch.from_numpy(Xe[s:s + 32])[:, None]
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=prec == "bf16"):
                out.append(net(xb).float().argmax(1).numpy().astype(np.uint8))
        return np.concatenate(out)

    predict.n_params = sum(p.numel() for p in net.parameters())
    return predict, hist


# ---------------------------------------------------------------------- parts
def quality_data(args) -> tuple:
    """The split shared by the quality and dropout parts: training and test groups, their
    files, patches per seed, and every ``test_every``-th poon2015 patch (all three stacks)."""
    tr, te, files = load_split(require_vesselnn())
    test_idx = np.arange(0, len(te), args.test_every)
    return tr, te, files, patches_per_seed(args.steps), test_idx, te.images(test_idx), te.masks(test_idx)


def part_quality(args) -> dict:
    tr, te, files, n_sub, test_idx, Xte, Yte = quality_data(args)
    log(f"quality: {len(tr)} train-group patches, {n_sub} per seed, {EPOCHS} epochs of {n_sub // BATCH} steps; "
        f"{len(test_idx)} of {len(te)} test patches")
    rows: dict = {"scratch": [], "mae": [], "unetr": []}
    params: dict = {}
    transfer = None
    probe = TransUNetSegmenter()
    key = {"steps": args.steps, "test_every": args.test_every, "feature_size": args.feature_size,
           "ours": f"decoder_dropout={probe.decoder_dropout} at {probe.decoder_dropout_at}, "
                   f"mlp_dropout={probe.mlp_dropout}, norm={probe.norm}"}
    jobs = [(k, sd) for sd in args.seeds for k in ("scratch", "unetr", "mae")]
    mae = None
    subsets = {seed: train_subset(len(tr), seed, args.steps) for seed in args.seeds}
    for kind, seed in jobs:  # seed-major: a complete comparison per seed first
        if kind == "mae" and mae is None:
            mae = vesselnn_mae()[0]            # bench_mae.py's settings, pretrained in this run
        sub = subsets[seed]
        Xtr, Ytr = tr.images(sub), tr.masks(sub)
        Ptr = Patches.from_arrays(Xtr, axes="ZYX", masks=Ytr, normalize="none")
        t0 = time.perf_counter()
        if kind == "unetr":
            predict, _ = train_unetr(Xtr, Ytr, seed, EPOCHS, args.feature_size)
            params[kind] = f"{predict.n_params / 1e6:.1f} M"
        else:
            seg = TransUNetSegmenter(encoder=mae.module_ if kind == "mae" else None, max_epochs=EPOCHS,
                                     random_state=seed, feature_size=args.feature_size, **COMMON).fit(Ptr)
            params[kind] = f"{sum(p.numel() for p in seg.module_.parameters()) / 1e6:.1f} M"
            if kind == "mae":
                transfer = {"source": seg.encoder_transfer_["source"],
                            "n_loaded": len(seg.encoder_transfer_["loaded"]),
                            "n_initialised": len(seg.encoder_transfer_["initialised"])}
            if kind == "scratch" and seed == 0:
                _M0[(args.steps, args.feature_size)] = (seg, sub)   # M0 of the speed and forgetting parts

            def predict(Xe, seg=seg):
                return seg.predict(Xe)
        t_train = time.perf_counter() - t0
        res = evaluate(predict, Xte, Yte)
        res.update(seed=seed, train_s=t_train)
        rows[kind].append(res)
        log(f"  seed {seed} {kind}: pooled Dice {res['pooled_dice']:.3f}, mean patch Dice "
            f"{res['mean_patch_dice']:.3f}, {t_train:.0f} s")
    return {"rows": rows, "files": files, "n_train_per_seed": int(min(n_sub, len(tr))),
            "steps": EPOCHS * (n_sub // BATCH), "epochs": EPOCHS, "n_test": int(len(test_idx)),
            "n_test_total": len(te), "mae": None if mae is None else f"{mae.preset}, {mae.max_epochs} epochs",
            "transfer": transfer, "seeds": list(args.seeds), "params": params, "feature_size": args.feature_size,
            "ours": key["ours"]}


DROPOUT_VARIANTS = {"none": dict(decoder_dropout=0.0), "head": dict(decoder_dropout=0.1, decoder_dropout_at="head"),
                    "last": dict(decoder_dropout=0.1, decoder_dropout_at="last"),
                    "blocks": dict(decoder_dropout=0.1, decoder_dropout_at="blocks")}


def part_dropout(args) -> dict:
    """Where decoder dropout sits vs test Dice: our from-scratch model, same data and steps."""
    tr, te, _, n_sub, test_idx, Xte, Yte = quality_data(args)
    rows: dict = {}
    for seed in args.seeds:
        sub = train_subset(len(tr), seed, args.steps)
        Ptr = Patches.from_arrays(tr.images(sub), axes="ZYX", masks=tr.masks(sub), normalize="none")
        for name, kw in DROPOUT_VARIANTS.items():
            seg = TransUNetSegmenter(max_epochs=EPOCHS, random_state=seed, feature_size=args.feature_size,
                                     mlp_dropout=0.1, **kw, **COMMON).fit(Ptr)
            res = evaluate(seg.predict, Xte, Yte)
            res["seed"] = seed
            rows.setdefault(name, []).append(res)
            log(f"  dropout {name} seed {seed}: pooled Dice {res['pooled_dice']:.3f}")
    return {"steps": args.steps, "test_every": args.test_every, "rows": rows, "n_test": int(len(test_idx)),
            "n_train": int(min(n_sub, len(tr))), "feature_size": args.feature_size}


#: the seed-0 from-scratch model of this run and its training subset, by (steps, feature_size)
_M0: dict = {}


def scratch_seed0(args, tr: Patches) -> tuple[TransUNetSegmenter, np.ndarray]:
    """M0: the quality part's seed-0 from-scratch model of this run (trained here if that part did not run)."""
    key = (args.steps, args.feature_size)
    if key not in _M0:
        sub = train_subset(len(tr), 0, args.steps)
        log(f"M0: training the seed-0 from-scratch model ({len(sub)} patches, {args.steps} steps)")
        Ptr = Patches.from_arrays(tr.images(sub), axes="ZYX", masks=tr.masks(sub), normalize="none")
        _M0[key] = (TransUNetSegmenter(max_epochs=EPOCHS, random_state=0, feature_size=args.feature_size,
                                       **COMMON).fit(Ptr), sub)
    return _M0[key]


def _stack_7x1024(root: Path) -> np.ndarray:
    import tifffile

    s = tifffile.imread(root / "images" / "poon2015_BBB_noLeakage.tif")[:7]
    return np.ascontiguousarray(np.block([[s, s[:, :, ::-1]], [s[:, ::-1], s[:, ::-1, ::-1]]]))


def part_speed(args) -> dict:
    from monai.inferers import sliding_window_inference

    from biodatacentric.data import Normalization
    from biodatacentric.data.readers import ArraySource

    root = require_vesselnn()
    stack = _stack_7x1024(root)
    tr, _, _ = load_split(root)
    seg, sub = scratch_seed0(args, tr)
    seg = copy.deepcopy(seg)
    model_note = (f"the from-scratch segmenter (preset small, feature_size {seg.feature_size}) trained on "
                  f"{len(sub)} vesselNN patches for {len(seg.history_['loss'])} epochs")
    seg.set_params(device="cpu", precision="auto")
    module = seg.module_.eval()
    prec = seg._runtime()[1]
    bs = args.window_batch
    win = tuple(seg.patch_shape_)
    # MONAI gets the stack already normalised exactly as ours normalises it internally
    off, scale, clip = ArraySource(stack, "ZYX", name="s", normalization=Normalization()).norm_params()
    normed = np.clip((stack.astype(np.float32) - np.float32(off)) * np.float32(scale), 0, 1)

    def monai_predictor(bf16: bool):
        def f(x):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return torch.softmax(module(x).float(), 1)
        return f

    def run_monai(bf16: bool) -> np.ndarray:
        out = np.empty((stack.shape[0], 2, *stack.shape[1:]), np.float32)
        with torch.inference_mode():
            for z in range(stack.shape[0]):
                x = torch.from_numpy(normed[z])[None, None]
                out[z] = sliding_window_inference(x, win, bs, monai_predictor(bf16), overlap=0.5, mode="gaussian",
                                                  sigma_scale=0.125)[0].numpy()
        return out

    def run_ours() -> np.ndarray:
        return seg.predict_image(stack, axes="ZYX", overlap=0.5, blend="gaussian", batch_size=bs, return_proba=True)

    runs = {"ours": run_ours, "monai_fp32": lambda: run_monai(False), "monai_bf16": lambda: run_monai(True)}
    times: dict = {k: [] for k in runs}
    outs: dict = {}
    for rep in range(args.speed_repeats):
        for name, fn in runs.items():  # interleaved, side by side in one process
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
            log(f"speed rep {rep}: {name} {times[name][-1]:.1f} s")
    ours = outs["ours"]
    agree = {}
    for name in ("monai_fp32", "monai_bf16"):
        d = np.abs(ours - outs[name])
        agree[name] = {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
                       "label_agreement": float((ours.argmax(1) == outs[name].argmax(1)).mean())}
    n_windows = stack.shape[0] * len(range(0, 1024 - win[0] + 1, int(win[0] * 0.5))) ** 2
    return {"times": times, "agree": agree, "precision_ours": prec, "window": list(win), "window_batch": bs,
            "shape": list(stack.shape), "n_windows": int(n_windows), "model": model_note,
            "threads": torch.get_num_threads()}


def part_forgetting(args) -> dict:
    root = require_vesselnn()
    tr, te, _ = load_split(root)
    m0, old_idx = scratch_seed0(args, tr)       # the quality part's seed-0 scratch model of this run
    Xold, Yold = tr.images(old_idx), tr.masks(old_idx)
    Pold = Patches.from_arrays(Xold, axes="ZYX", masks=Yold, normalize="none")
    eval_old = np.random.default_rng(0).choice(len(old_idx), size=min(args.n_old_eval, len(old_idx)), replace=False)
    # new annotations: the 3 patches of poon2015_plaqueVessels with >= 5 % vessel where M0 is worst
    src_names = np.asarray(te.provenance().source, dtype=str)
    plaque = np.flatnonzero(np.char.find(src_names, "plaque") >= 0)
    Yp = te.masks(plaque)
    cand = plaque[Yp.reshape(len(plaque), -1).mean(1) >= 0.05]
    d0 = dice_per_sample(m0.predict(te[cand]), te.masks(cand))
    new_idx = cand[np.argsort(d0, kind="stable")[:3]]
    Pnew = Patches.from_arrays(te.images(new_idx), axes="ZYX", masks=te.masks(new_idx), normalize="none")
    other = np.flatnonzero(np.char.find(src_names, "plaque") < 0)
    test_idx = other[:: args.test_every]
    Xt, Yt = te.images(test_idx), te.masks(test_idx)

    def measure(seg) -> dict:
        return {"old_dice": evaluate(seg.predict, Xold[eval_old], Yold[eval_old])["pooled_dice"],
                "new_dice": evaluate(seg.predict, Pnew.images(), Pnew.masks())["pooled_dice"],
                "test_dice": evaluate(seg.predict, Xt, Yt)["pooled_dice"]}

    before = measure(m0)
    log(f"forgetting: M0 {before}")
    out = {"ours": f"decoder_dropout={m0.decoder_dropout}, mlp_dropout={m0.mlp_dropout}",
           "m0_epochs": len(m0.history_["loss"]), "m0_n_train": int(len(old_idx)),
           "m0_steps": len(m0.history_["loss"]) * int(math.ceil(len(old_idx) / m0.batch_size)),
           "before": before, "new_patches": [tuple(map(str, te.provenance()[i])) for i in new_idx],
           "epochs": args.ft_epochs, "n_old_eval": int(len(eval_old)), "n_test": int(len(test_idx))}
    for kind in ("replay", "naive"):
        seg = copy.deepcopy(m0)
        seg.set_params(device="cpu", precision="auto", progress=False)
        t0 = time.perf_counter()
        if kind == "replay":
            seg.fine_tune(Pnew, replay=Pold, n_replay=7, max_epochs=args.ft_epochs, batch_size=10)
        else:
            seg.fine_tune(Pnew, max_epochs=args.ft_epochs, batch_size=3)
        res = measure(seg)
        res["train_s"] = time.perf_counter() - t0
        res["steps"] = args.ft_epochs
        out[kind] = res
        log(f"forgetting: {kind} {res}")
    return out


# ---------------------------------------------------------------------- report
def _ms(vals) -> str:
    v = np.asarray(vals, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f} (one seed)"


def report(command: str, parts: dict) -> None:
    """results/segment.md from the parts measured in this run."""
    body = []
    if "speed" in parts:
        s = parts["speed"]
        med = {k: float(np.median(v)) for k, v in s["times"].items()}
        body.append("### Whole-stack inference: `predict_image` vs MONAI `sliding_window_inference`\n")
        body.append(f"Stack {s['shape'][0]}×{s['shape'][1]}×{s['shape'][2]} (7 slices of poon2015_BBB_noLeakage "
                    f"mirrored to 1024², uint8), network = {s['model']}, window {s['window'][0]}², overlap 0.5, "
                    f"Gaussian blending (sigma = window/8), {s['window_batch']} windows per batch, "
                    f"{s['n_windows']} windows, softmax probabilities blended. MONAI runs slice by slice on the "
                    f"stack already normalised the same way (its normalisation time is not counted); ours "
                    f"includes normalisation. Median of {len(s['times']['ours'])} interleaved run(s); "
                    f"{s['threads']} torch threads. Our precision: {s['precision_ours']}.\n")
        body.append("| run | seconds per stack | ours faster by | max abs prob. diff vs ours | mean abs diff | argmax agreement |")
        body.append("|---|---|---|---|---|---|")
        body.append(f"| ours (`predict_image`, precision=auto) | {med['ours']:.1f} | — | — | — | — |")
        for k, label in (("monai_fp32", "MONAI, network in fp32 (as given)"),
                         ("monai_bf16", "MONAI, same network under bf16 autocast")):
            a = s["agree"][k]
            body.append(f"| {label} | {med[k]:.1f} | {med[k] / med['ours']:.2f}× | {a['max_abs_diff']:.4f} | "
                        f"{a['mean_abs_diff']:.2e} | {a['label_agreement']:.5f} |")
        body.append("")
    qfiles = {k: v for k, v in parts.items() if k.startswith("quality")}
    for q in sorted(qfiles.values(), key=lambda q: (-q["steps"], -q.get("feature_size", 16))):
        body.append(f"### Quality on vesselNN (train burgess2014 + santos2015, test poon2015), 128×128 patches, "
                    f"{q['steps']} training steps, feature_size {q.get('feature_size', 16)}\n")
        body.append(f"Each seed draws {q['n_train_per_seed']} training patches from the training group and "
                    f"trains every model for {q['steps']} steps ({q['epochs']} epochs, batch {BATCH}, AdamW, "
                    f"peak lr {LR:g}, warmup then cosine, bf16, same augmentation and 0.5 CE + 0.5 foreground "
                    f"soft-Dice loss through the same training loop). Test: {q['n_test']} of the "
                    f"{q['n_test_total']} poon2015 patches (every {q['n_test_total'] // max(q['n_test'], 1)}th). "
                    f"Pooled Dice = Dice over all test pixels; mean patch Dice counts empty-and-empty as 1. "
                    f"Mean ± sd over the seeds listed, all measured in this run.\n")
        body.append("| model | params | seeds run | test pooled Dice | test mean patch Dice |")
        body.append("|---|---|---|---|---|")
        fs = q.get("feature_size", 16)
        ours = f"; {q['ours']}" if q.get("ours") else ""
        names = {"scratch": f"ours from scratch (preset small: ViT 256-d, 6 blocks, patch 16; feature_size {fs}{ours})",
                 "mae": "ours with the MAE-pretrained encoder (same architecture)",
                 "unetr": f"MONAI UNETR (256-d, 12 blocks -- fixed in MONAI --, feature_size {fs})"}
        for k, label in names.items():
            rows = q["rows"].get(k, [])
            if not rows:
                body.append(f"| {label} | | none | not measured | |")
                continue
            body.append(f"| {label} | {q.get('params', {}).get(k, '')} | {[r['seed'] for r in rows]} | "
                        f"{_ms([r['pooled_dice'] for r in rows])} | "
                        f"{_ms([r['mean_patch_dice'] for r in rows])} |")
        if q.get("transfer"):
            t = q["transfer"]
            body.append(f"\nMAE transfer: {t['n_loaded']} encoder tensors loaded from `{t['source']}`, "
                        f"{t['n_initialised']} decoder/stem tensors newly initialised.")
        times = {k: np.median([r["train_s"] for r in q["rows"].get(k, [])]) for k in names if q["rows"].get(k)}
        if times:
            body.append("\nMedian training time per run: " + ", ".join(
                f"{k} {v:.0f} s" for k, v in times.items()) + " (runs of several processes may overlap).")
        body.append("")
    if "dropout" in parts:
        d = parts["dropout"]
        body.append(f"### Where the decoder dropout sits (ours from scratch, feature_size {d.get('feature_size', 8)})\n")
        body.append(f"Same data, schedule and test set as the quality table ({d['n_train']} training patches, "
                    f"{d['steps']} steps, {d['n_test']} test patches); transformer MLP dropout 0.1 in every "
                    f"run; decoder `Dropout2d` rate 0.1 where present.\n")
        body.append("| decoder dropout | seeds | test pooled Dice | test mean patch Dice |")
        body.append("|---|---|---|---|")
        labels = {"none": "none (library default)", "head": "before the 1x1 head only",
                  "last": "before the full-resolution block and the head",
                  "blocks": "before every decoder block and the head"}
        for k, label in labels.items():
            rs = d["rows"].get(k, [])
            if rs:
                body.append(f"| {label} | {[r['seed'] for r in rs]} | {_ms([r['pooled_dice'] for r in rs])} | "
                            f"{_ms([r['mean_patch_dice'] for r in rs])} |")
        body.append("")
    if "forgetting" in parts:
        f = parts["forgetting"]
        body.append("### Forgetting: `fine_tune` with replay vs naive fine-tuning on 3 new patches\n")
        body.append(f"M0 = a from-scratch model (preset small, seed 0) trained on {f['m0_n_train']} training-group "
                    f"patches for {f['m0_steps']} steps. New annotations: the 3 poon2015_plaqueVessels "
                    f"patches with ≥ 5 % vessel on which M0 is worst. Both runs: {f['epochs']} epochs of one step "
                    f"each (replay: 3 new + 7 old patches drawn afresh per epoch, batch 10; naive: the 3 new "
                    f"patches, batch 3), peak lr = lr/5, warmup + cosine. Old Dice = pooled Dice on "
                    f"{f['n_old_eval']} of M0's training patches; test = {f['n_test']} poon2015 BBB patches.\n")
        if "ours" not in f:
            body.append("This part was measured before the segmenter's default decoder dropout changed (it was "
                        "then 0.1 before every decoder block; now 0); it has not been re-run since.\n")
        body.append("| model | Dice on old training patches | change | Dice on the 3 new patches | poon2015 BBB test Dice |")
        body.append("|---|---|---|---|---|")
        b = f["before"]
        body.append(f"| M0 (before) | {b['old_dice']:.3f} | — | {b['new_dice']:.3f} | {b['test_dice']:.3f} |")
        for k, label in (("replay", "M1 = fine_tune(new, replay=old)"), ("naive", "naive fine-tune on the 3 only")):
            r = f[k]
            body.append(f"| {label} | {r['old_dice']:.3f} | {r['old_dice'] - b['old_dice']:+.3f} | "
                        f"{r['new_dice']:.3f} | {r['test_dice']:.3f} |")
        body.append("")
    body.append("Commands and wall times of the parts (each part stores its numbers in "
                "`benchmarks/_out/segment/<part>.json`):\n")
    for name, part in parts.items():
        if "command" in part:  # an interrupted part has rows but no command yet
            body.append(f"- {name}: `{part['command']}` ({part['wall_s'] / 60:.1f} min)")
    body.append("\nThe machine may be shared with other jobs, so absolute seconds can be pessimistic; ratios come "
                "from interleaved runs in one process.")
    write_result("segment", "TransUNetSegmenter", "\n".join(body), command)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", choices=["all", "speed", "quality", "forgetting", "dropout"], default="all")
    ap.add_argument("--steps", type=int, default=300, help="training steps per model and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-every", type=int, default=4, help="use every k-th test patch")
    ap.add_argument("--window-batch", type=int, default=32)
    ap.add_argument("--feature-size", type=int, default=16,
                    help="decoder width (ours and UNETR); 16 is the library's default")
    ap.add_argument("--speed-repeats", type=int, default=1)
    ap.add_argument("--ft-epochs", type=int, default=30)
    ap.add_argument("--n-old-eval", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    SEG_OUT.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_segment.py " + " ".join(sys.argv[1:])
    order = ["quality", "speed", "forgetting"] if args.part == "all" else [args.part]
    measured: dict = {}
    for part in order:
        t0 = time.perf_counter()
        res = {"quality": part_quality, "speed": part_speed, "forgetting": part_forgetting,
               "dropout": part_dropout}[part](args)
        res["wall_s"] = time.perf_counter() - t0
        res["command"] = command
        res["machine"] = machine()
        name = f"quality_{res['steps']}steps_fs{args.feature_size}" if part == "quality" else part
        (SEG_OUT / f"{name}.json").write_text(json.dumps(res, indent=1))   # raw record, never read back
        measured[name] = res
        log(f"{part} done in {res['wall_s']:.0f} s")
    report(command, measured)


if __name__ == "__main__":
    main()
