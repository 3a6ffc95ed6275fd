"""MAE pretraining: training throughput vs MONAI, and whether pretraining learns something real.

Part 1 (``--part throughput``): one training step (forward, masked-patch MSE, backward,
AdamW) at 224x224, 1 channel, ViT patch 16, width 256, 6 blocks, decoder 192 wide and 2
deep, mask 0.75, batch 32 -- ours (``MaskedAutoencoder.training_loss``, the step
``MAEPretrainer.fit`` runs) in bf16 and fp32 and MONAI's ``MaskedAutoEncoderViT`` in
fp32 (its bf16 autocast path fails on CPU) -- measured side by side in one process, rounds
interleaved, medians reported. FLOPs per step are counted with
``torch.utils.flop_counter.FlopCounterMode``; the bf16 matrix-product peak is the median
of 4096^3 bf16 ``torch.mm`` timings taken between the rounds.

Part 2 (``--part pretrain``): pretrain the ``small`` preset on 128x128 patches of the
burgess2014 + santos2015 stacks of vesselnn_2pm for a fixed number of epochs (40: 6.3 min of CPU
time at 1 torch thread, measured 2026-12-03; that run took 76 min of wall time on a 2-core machine
loaded 3-13 by other jobs, which left it 8 % of a core), then ridge
regression (5-fold CV R^2) from 256-d embeddings to each patch's vessel fraction, for the
pretrained encoder and for a randomly initialised encoder of the same shape (same PCA and
normalisation), on the training-group patches and on the held-out poon2015 patches. The
pretraining is ``_common.vesselnn_mae`` (the MAE the other benchmarks train for themselves).
Writes the reconstruction grid to ``benchmarks/_out/mae_reconstructions.png`` and the
estimator to ``benchmarks/_out/mae_vesselnn/`` for inspection.

    python benchmarks/bench_mae.py                 # both parts, ~15 min on 2 idle cores
    python benchmarks/bench_mae.py --part throughput
    python benchmarks/bench_mae.py --part pretrain --epochs 40

Writes benchmarks/results/mae.md from the parts measured in this run (``--part all`` for the whole
report; a single part writes its own section only); nothing is read from earlier runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from _common import OUT, vesselnn_mae
from _sections import stamp, write_sections

ARCH = dict(img=224, patch=16, width=256, depth=6, heads=8, dec_width=192, dec_depth=2, dec_heads=6, batch=32,
            mask=0.75)


# ---------------------------------------------------------------------- part 1
def _ours():
    from biodatacentric.nn.mae import MaskedAutoencoder

    torch.manual_seed(0)
    return MaskedAutoencoder(img_size=ARCH["img"], patch_size=ARCH["patch"], in_chans=1, embed_dim=ARCH["width"],
                             depth=ARCH["depth"], num_heads=ARCH["heads"], mlp_ratio=4.0,
                             decoder_embed_dim=ARCH["dec_width"], decoder_depth=ARCH["dec_depth"],
                             decoder_num_heads=ARCH["dec_heads"])


def _monai():
    from monai.networks.nets import MaskedAutoEncoderViT

    torch.manual_seed(0)
    return MaskedAutoEncoderViT(in_channels=1, img_size=ARCH["img"], patch_size=ARCH["patch"],
                                hidden_size=ARCH["width"], mlp_dim=4 * ARCH["width"], num_layers=ARCH["depth"],
                                num_heads=ARCH["heads"], masking_ratio=ARCH["mask"],
                                decoder_hidden_size=ARCH["dec_width"], decoder_mlp_dim=4 * ARCH["dec_width"],
                                decoder_num_layers=ARCH["dec_depth"], decoder_num_heads=ARCH["dec_heads"],
                                spatial_dims=2, qkv_bias=True)


def _make_step(kind: str):
    """A closure running one full training step of ``kind`` on a fixed batch."""
    from biodatacentric.nn.mae import patchify

    x = torch.rand(ARCH["batch"], 1, ARCH["img"], ARCH["img"], generator=torch.Generator().manual_seed(0))
    if kind.startswith("ours"):
        model = _ours()
        precision = "bf16" if kind == "ours_bf16" else "fp32"
        gen = torch.Generator().manual_seed(0)

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                return model.training_loss(x, ARCH["mask"], generator=gen)
    else:
        model = _monai()
        target = patchify(x, ARCH["patch"])

        def forward():
            pred, mask = model(x)
            mask = mask.float()
            return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step():
        loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, forward, step


def _count_flops(forward, model) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        loss = forward()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def _peak_bf16(n: int = 4096, reps: int = 3) -> float:
    a = torch.randn(n, n).bfloat16()
    b = torch.randn(n, n).bfloat16()
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def _monai_bf16_check() -> str:
    """Try MONAI's MAE under CPU bf16 autocast (tiny sizes); return what happened."""
    from monai.networks.nets import MaskedAutoEncoderViT

    m = MaskedAutoEncoderViT(in_channels=1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=1,
                             num_heads=2, decoder_hidden_size=32, decoder_mlp_dim=64, decoder_num_layers=1,
                             decoder_num_heads=2, spatial_dims=2)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred, _ = m(torch.rand(2, 1, 32, 32))
        pred.float().mean().backward()
    except Exception as exc:  # noqa: BLE001 - we report whatever fails
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return "works"


def _profile_shares(step) -> dict:
    """Share of one step's self CPU time in attention, matrix products and everything else."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    total, attn, mm = 0.0, 0.0, 0.0
    # our CPU bf16 attention (nn.vit._CpuBf16Attention) runs as batched products and a softmax
    attention_ops = ("aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data")
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total
        total += t
        if "scaled_dot_product" in ev.key or "Attention" in ev.key or ev.key in attention_ops:
            attn += t
        elif ev.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution",
                        "aten::mkldnn_convolution"):
            mm += t
    return {"attention": attn / total, "matmul": mm / total, "other": (total - attn - mm) / total}


def part_throughput(rounds: int, steps: int) -> dict:
    kinds = ["ours_bf16", "ours_fp32", "monai_fp32"]
    built = {k: _make_step(k) for k in kinds}
    # the same architecture does the same work in bf16 and fp32: count ours once (fp32 run)
    flops = {k: _count_flops(built[k][1], built[k][0]) for k in ("ours_fp32", "monai_fp32")}
    flops["ours_bf16"] = flops["ours_fp32"]
    for k in kinds:  # warm-up (oneDNN primitive creation, allocator)
        for _ in range(2):
            built[k][2]()
    times = {k: [] for k in kinds}
    peaks = [_peak_bf16()]
    for r in range(rounds):
        for k in kinds:
            t = time.perf_counter()
            for _ in range(steps):
                built[k][2]()
            times[k].append((time.perf_counter() - t) / steps)
        peaks.append(_peak_bf16())
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in kinds), flush=True)
    peak = statistics.median(peaks)
    shares = _profile_shares(built["ours_bf16"][2])
    res = {"ours_bf16_time_shares": shares, "monai_bf16_autocast": _monai_bf16_check(), "arch": ARCH, "rounds": rounds, "steps_per_round": steps, "bf16_peak_flops": peak,
           "bf16_peak_all": peaks, "kinds": {}}
    for k in kinds:
        med = statistics.median(times[k])
        res["kinds"][k] = {"step_s_median": med, "step_s_all": times[k],
                           "images_per_s": ARCH["batch"] / med, "flops_per_step": flops[k],
                           "achieved_flops": flops[k] / med, "fraction_of_bf16_peak": flops[k] / med / peak}
    return res


# ---------------------------------------------------------------------- part 2
def part_pretrain(epochs: int, preset: str) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cpu0 = time.process_time()
    est, train_p, test_p, fit_s = vesselnn_mae(epochs, preset)
    fit_cpu_s = time.process_time() - cpu0     # patch loading + pretraining, all threads of this process
    y_train = train_p.masks().reshape(len(train_p), -1).mean(1)
    y_test = test_p.masks().reshape(len(test_p), -1).mean(1)
    est.save(OUT / "mae_vesselnn")               # for inspection; no benchmark reads it back
    est.save_reconstruction_grid(OUT / "mae_reconstructions.png", test_p, n=8)
    est.save_reconstruction_grid(OUT / "mae_reconstructions_train.png", train_p, n=8)

    # randomly initialised encoder of the same shape, through the same estimator code path
    # (centre crop, pooling, PCA fitted on its own training embeddings, L2 normalisation)
    from biodatacentric.nn.mae import MaskedAutoencoder

    rand = copy.deepcopy(est)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        rand.module_ = MaskedAutoencoder(**est.module_.config).eval()
    rand._fit_pca(rand._embed(train_p))
    train_files = sorted({str(s).rsplit("/", 1)[-1] for s in train_p.sources})
    test_files = sorted({str(s).rsplit("/", 1)[-1] for s in test_p.sources})

    def r2(X, y):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
        cv = KFold(5, shuffle=True, random_state=0)
        return float(np.mean(cross_val_score(model, X, y, cv=cv, scoring="r2")))

    out = {"preset": preset, "epochs": epochs, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "n_train": len(train_p), "n_test": len(test_p),
           "train_files": train_files, "test_files": test_files,
           "lr": est.lr_, "loss_first": est.history_["loss"][0], "loss_last": est.history_["loss"][-1],
           "precision": est.precision_, "img_size": est.img_size_}
    for name, e in (("pretrained", est), ("random", rand)):
        out[f"r2_train_group_{name}"] = r2(e.transform(train_p), y_train)
        out[f"r2_poon2015_{name}"] = r2(e.transform(test_p), y_test)
    # a pixel baseline for scale: ridge on 8x8 average-pooled intensities
    def pooled(p):
        return p.images().reshape(len(p), 16, 8, 16, 8).mean(axis=(2, 4)).reshape(len(p), -1)

    out["r2_train_group_pixels8x8"] = r2(pooled(train_p), y_train)
    out["r2_poon2015_pixels8x8"] = r2(pooled(test_p), y_test)
    return out


# ---------------------------------------------------------------------- report
def _fmt(n: float) -> str:
    return f"{n:,.1f}" if n < 100 else f"{n:,.0f}"


def _shares(r: dict) -> str:
    sh = r.get("ours_bf16_time_shares")
    if not sh:
        return ""
    return (f"Where one bf16 step of ours spends its time (torch.profiler, self CPU time): attention "
            f"{100 * sh['attention']:.0f} %, matrix products {100 * sh['matmul']:.0f} %, everything else "
            f"{100 * sh['other']:.0f} %. On CPUs without AMX, torch's fused attention kernel is slow in "
            "bf16 (and only moderately fast in fp32); ours runs attention as bf16 batched products with a "
            "float32 softmax, a chunk of images at a time so the scores stay in cache "
            "(`nn.vit._CpuBf16Attention`). The training step (`MaskedAutoencoder.training_loss`) runs the "
            "prediction head, the loss and the last decoder block's per-token layers on the masked "
            "patches only (the loss ignores the rest; same value and gradients as the full forward).\n\n")


def _stamp(r: dict) -> str:
    return (stamp(r.get("command", "?"), tuple(r["load_average"]) if "load_average" in r else None)
            + f" {r.get('torch_threads', '?')} torch thread(s) in the measuring process; on a shared machine "
            "absolute times are inflated by other jobs, ratios measured side by side less so.")


def write_report(command: str, throughput: dict | None, pretrain: dict | None) -> None:
    """results/mae.md: the parts measured in this run and the committed sections of the others
    (``_sections.write_sections``)."""
    parts = {}
    if throughput is not None:
        r = throughput
        k = r["kinds"]
        a = r["arch"]
        ratio = k["ours_bf16"]["images_per_s"] / k["monai_fp32"]["images_per_s"]
        ratio32 = k["ours_fp32"]["images_per_s"] / k["monai_fp32"]["images_per_s"]
        frac = k["ours_bf16"]["fraction_of_bf16_peak"]
        rows = "\n".join(
            f"| {name} | {_fmt(v['images_per_s'])} | {v['step_s_median'] * 1e3:.0f} | "
            f"{v['flops_per_step'] / 1e9:.1f} | {v['achieved_flops'] / 1e9:.0f} | {100 * v['fraction_of_bf16_peak']:.0f}% |"
            for name, v in (("biodatacentric, bf16 autocast", k["ours_bf16"]),
                            ("biodatacentric, fp32", k["ours_fp32"]),
                            ("MONAI MaskedAutoEncoderViT, fp32", k["monai_fp32"])))
        met = "met" if ratio >= 3 and frac >= 0.35 else "NOT met"
        parts["throughput"] = (f"""{_stamp(r)}

### Training throughput vs MONAI (one process, rounds interleaved)

One training step = forward, masked-patch MSE, backward, AdamW. {a['img']}x{a['img']}, 1 channel,
ViT patch {a['patch']}, width {a['width']}, {a['depth']} blocks ({a['heads']} heads), decoder
{a['dec_width']} wide and {a['dec_depth']} deep, mask {a['mask']}, batch {a['batch']}.
Median over {r['rounds']} interleaved rounds of {r['steps_per_round']} steps each. FLOPs per step
counted with `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions,
attention); MONAI embeds all 196 patches and so does a little more work per step.

| model | images/s | ms/step | GFLOP/step | achieved GFLOP/s | of bf16 peak |
|---|---|---|---|---|---|
{rows}

bf16 matrix-product peak measured in the same run (4096^3 `torch.mm`, median of {len(r['bf16_peak_all'])}):
{r['bf16_peak_flops'] / 1e9:.0f} GFLOP/s.

Ours (bf16) / MONAI (fp32): **{ratio:.2f}x** images/s; ours (fp32) / MONAI (fp32): {ratio32:.2f}x.
{_shares(r)}MONAI under CPU bf16 autocast (checked in the same run): {r['monai_bf16_autocast']}

Goal (>= 3x MONAI and >= 35 % of the bf16 peak): **{met}** ({ratio:.2f}x, {100 * frac:.0f} %).
""")
    if pretrain is not None:
        r = pretrain
        gain = r["r2_train_group_pretrained"] - r["r2_train_group_random"]
        parts["pretrain"] = (f"""{_stamp(r)}

### Pretraining learns something real (vesselnn_2pm, 128x128 patches)

`MAEPretrainer(preset="{r['preset']}", batch_size=32, lr=1.5e-4, mask_ratio=0.75)` trained on the
{r['n_train']} patches of {', '.join(r['train_files'])} for {r['epochs']} epochs
({r['fit_s'] / 60:.1f} min wall{f", {r['fit_cpu_s'] / 60:.1f} min CPU" if 'fit_cpu_s' in r else ''}, {r['precision']}, peak lr {r['lr']:.3g}); loss {r['loss_first']:.4f} (epoch 1)
-> {r['loss_last']:.4f} (last epoch). Embeddings: unmasked encoder, mean-pooled, PCA to 256
(fitted on the training patches), L2-normalised. Target: each patch's vessel fraction (from the
masks). Ridge regression (standardised features, alpha by inner CV), 5-fold CV R^2:

| embedding | R^2 training group ({r['n_train']} patches) | R^2 poon2015, held out ({r['n_test']} patches) |
|---|---|---|
| pretrained encoder | {r['r2_train_group_pretrained']:.3f} | {r['r2_poon2015_pretrained']:.3f} |
| random encoder, same shape | {r['r2_train_group_random']:.3f} | {r['r2_poon2015_random']:.3f} |
| (for scale) 8x8-pooled pixels, 256 values | {r['r2_train_group_pixels8x8']:.3f} | {r['r2_poon2015_pixels8x8']:.3f} |

Pretrained minus random on the training group: {gain:+.3f} R^2.
Reconstructions (rows: original, masked input, reconstruction, reconstruction + visible; the
decoder is trained on hidden patches only, so row 3 at visible positions is not meaningful --
judge row 4):
`benchmarks/_out/mae_reconstructions.png` (poon2015) and `mae_reconstructions_train.png`.
The fitted estimator is saved at `benchmarks/_out/mae_vesselnn/` for inspection (the other benchmarks
train their own copy with the same settings, `_common.vesselnn_mae`).
""")
    if parts:
        path = write_sections("mae", "MAEPretrainer", INTRO, ["throughput", "pretrain"], parts, command)
        print(f"wrote {path}")


INTRO = ("Each section says when, on what machine and with which command it was measured (`--part "
         "pretrain` or `--part throughput` replaces that section and keeps the other as committed).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["throughput", "pretrain", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice); 1 helps on a shared, oversubscribed CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    command = "python benchmarks/bench_mae.py " + " ".join(sys.argv[1:])
    throughput = pretrain = None
    if args.part in ("throughput", "all"):
        load0 = os.getloadavg()[0]
        throughput = part_throughput(args.rounds, args.steps)
        throughput.update(torch_threads=torch.get_num_threads(), command=command,
                          load_average=[load0, os.getloadavg()[0]])
        (OUT / "mae_throughput.json").write_text(json.dumps(throughput, indent=1))   # raw record, not read back
    if args.part in ("pretrain", "all"):
        load0 = os.getloadavg()[0]
        pretrain = part_pretrain(args.epochs, args.preset)
        pretrain.update(torch_threads=torch.get_num_threads(), command=command,
                        load_average=[load0, os.getloadavg()[0]])
        (OUT / "mae_pretrain.json").write_text(json.dumps(pretrain, indent=1))       # raw record, not read back
        print(json.dumps({k: v for k, v in pretrain.items() if k.startswith("r2")}, indent=1))
    write_report(command, throughput, pretrain)


if __name__ == "__main__":
    main()
