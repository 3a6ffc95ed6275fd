"""Paper-scale dry run on one machine: 800 synthetic stacks of 7x1024x1024 uint16 as Zarr.

Stages, each timed: (1) write 800 stacks (~11.7 GB) to Zarr, one store per stack, stack by
stack so memory stays flat; (2) index them as 224x224 patches with Patches.from_zarr;
(3) pretrain a small MAE briefly on a random subset; (4) embed every patch (unmasked encoder,
bf16 on this CPU); (5) select a K=25 core set with KCoverSelector. Peak RSS is read from the
kernel for the whole run. Writes benchmarks/results/scale.md.

    python benchmarks/bench_scale.py [--stacks 800] [--out /path/with/12GB/free] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from _common import OUT, peak_rss_mb, write_result


def make_bases(n_bases: int, shape: tuple[int, int, int]) -> list[np.ndarray]:
    from biodatacentric import make_vessels

    return [make_vessels(shape, dtype="float32", noise=0.0, random_state=100 + i)[0] for i in range(n_bases)]


def write_stacks(folder: Path, n_stacks: int, shape: tuple[int, int, int], bases: list[np.ndarray]) -> float:
    """Stack i = a base volume under a square symmetry, a gain, and fresh noise, as uint16."""
    import zarr

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n_stacks):
        base = bases[i % len(bases)]
        k, flip = (i // len(bases)) % 4, (i // (4 * len(bases))) % 2 == 1
        vol = np.rot90(base, k, axes=(1, 2))
        if flip:
            vol = vol[:, :, ::-1]
        gain = rng.uniform(0.6, 1.4)
        noise = rng.standard_normal(vol.shape, dtype=np.float32) * 0.04
        img = np.clip((vol * gain + 0.08 + noise) * 20000, 0, 65535).astype(np.uint16)
        arr = zarr.create_array(str(folder / f"stack{i:04d}.zarr"), shape=img.shape, chunks=(1, 512, 512),
                                dtype="uint16", compressors=None, overwrite=True)
        arr[:] = img
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stacks", type=int, default=800)
    ap.add_argument("--out", default=str(OUT / "scale_zarr"))
    ap.add_argument("--keep", action="store_true", help="keep the written stacks")
    ap.add_argument("--pretrain-patches", type=int, default=2048)
    args = ap.parse_args()
    import torch

    from biodatacentric import KCoverSelector, MAEPretrainer, Patches

    shape = (7, 1024, 1024)
    folder = Path(args.out)
    if folder.exists():
        shutil.rmtree(folder)
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    bases = make_bases(8, shape)
    t_bases = time.perf_counter() - t0
    t_write = write_stacks(folder, args.stacks, shape, bases)
    del bases
    gb = args.stacks * np.prod(shape) * 2 / 1e9
    t0 = time.perf_counter()
    patches = Patches.from_zarr(str(folder / "stack*.zarr"), axes="ZYX", patch_shape=(224, 224))
    t_index = time.perf_counter() - t0
    n = len(patches)
    rng = np.random.default_rng(0)
    subset = patches[np.sort(rng.choice(n, size=min(args.pretrain_patches, n), replace=False))]
    mae = MAEPretrainer(preset="small", embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=64,
                        decoder_depth=1, decoder_num_heads=4, max_epochs=1, batch_size=64,
                        n_components=64, random_state=0, progress=False)
    t0 = time.perf_counter()
    mae.fit(subset)
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = mae.transform(patches)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = KCoverSelector(n_select=25, random_state=0).fit(emb)
    t_select = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    rss = peak_rss_mb()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        ("generate 8 base volumes (make_vessels 3-D)", t_bases, None),
        (f"write {args.stacks} stacks to Zarr ({gb:.1f} GB uint16, uncompressed)", t_write,
         args.stacks * shape[0] * 25 / t_write),
        (f"index {n:,} patches of 224x224 (Patches.from_zarr, no pixels read)", t_index, n / t_index),
        (f"pretrain small MAE: 1 epoch on {len(subset):,} patches", t_pre, len(subset) / t_pre),
        (f"embed all {n:,} patches (read + normalise + encoder, {emb.shape[1]}-d)", t_embed, n / t_embed),
        (f"KCoverSelector K=25 on {n:,} x {emb.shape[1]}", t_select, n / t_select),
    ]
    table = "\n".join(f"| {name} | {t:.1f} | {'' if r is None else f'{r:,.0f}'} |" for name, t, r in rows)
    ok = rss < 4096
    body = f"""
{args.stacks} synthetic stacks of {shape[0]}x{shape[1]}x{shape[2]} uint16 (branching tubes, each a
square symmetry + gain + fresh noise of one of 8 base volumes), one Zarr store per stack
(chunks 1x512x512). Encoder: ViT patch 16, width 128, depth 4 (torch threads:
{torch.get_num_threads()}, precision {mae.precision_ if hasattr(mae, 'precision_') else 'auto'}).

| stage | seconds | patches/s |
|---|---|---|
{table}
| **total** | **{total:.1f}** | |

Peak RSS of the whole run: **{rss:,.0f} MB** (goal < 4,096 MB: {'met' if ok else 'NOT met'}).
Core set picked from {len(np.unique(patches.index['source'][sel.selected_indices_]))} different stacks.
"""
    path = write_result("scale", f"Paper-scale dry run ({args.stacks} stacks)", body,
                        f"python benchmarks/bench_scale.py --stacks {args.stacks}")
    print(path.read_text())


if __name__ == "__main__":
    main()
