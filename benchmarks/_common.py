"""Helpers shared by the benchmark scripts: where the data is, machine description, peak memory,
the result writer and the benchmark MAE.

One way to find the data: ``BIODATACENTRIC_DATA`` (the folder holding ``vesselnn_2pm`` and
``tubenet_octa``), defaulting to ``../shared/data`` beside the checkout. Every script writes its
markdown through :func:`write_result`; files under ``_out/`` (git-ignored) are written for
inspection and never read back by a later run, so a fresh clone reproduces every result.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE / "_out"
DATA = Path(os.environ.get("BIODATACENTRIC_DATA", HERE.parent.parent / "shared" / "data"))
VESSELNN = DATA / "vesselnn_2pm"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, title: str, body: str, command: str, *, folder: Path | None = None) -> Path:
    """Write ``results/<name>.md`` (or ``<folder>/<name>.md``, e.g. ``OUT`` for a smoke test): a
    ``## title`` heading, when and on what machine it was measured, the command, then ``body``."""
    folder = RESULTS if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"## {title}\n\n*Measured {stamp} on {machine()}.*  \n*Command:* `{command}`\n\n"
            f"{body.strip()}\n")
    path = folder / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    return path


def run_isolated(code: str) -> str:
    """Run ``code`` in a fresh Python process (for clean peak-memory figures); return stdout."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout


def require_vesselnn() -> Path:
    if not (VESSELNN / "images").is_dir():
        sys.exit(f"vesselnn_2pm not found at {VESSELNN}; set BIODATACENTRIC_DATA to the shared data folder")
    return VESSELNN


def block_embeddings(images, block: int = 8):
    """Cheap patch embeddings: ``block`` x ``block`` means of the (N, H, W) patch images, centred
    per feature (H and W must be multiples of ``block``)."""
    n, h, w = images.shape
    e = images.reshape(n, h // block, block, w // block, block).mean(axis=(2, 4)).reshape(n, -1)
    return e - e.mean(axis=0, keepdims=True)


#: the training and held-out acquisition groups of the benchmark MAE
MAE_TRAIN_GROUPS, MAE_TEST_GROUP = ("burgess2014", "santos2015"), "poon2015"


@functools.lru_cache(maxsize=2)
def vesselnn_mae(epochs: int = 40, preset: str = "small"):
    """The benchmark MAE, trained in this process (once per process and settings): ``preset``
    pretrained for ``epochs`` on the 128x128 patches of the burgess2014 + santos2015 stacks of
    vesselnn_2pm (``bench_mae.py --part pretrain``; 40 epochs of ``small``: about 5 minutes on
    an idle 2-core CPU). Returns ``(estimator, training patches, poon2015 patches, fit seconds)``."""
    import time

    from biodatacentric import Patches
    from biodatacentric.pretrain import MAEPretrainer

    folder = require_vesselnn()
    imgs = sorted((folder / "images").glob("*.tif"))
    train_files = [p for p in imgs if p.name.startswith(MAE_TRAIN_GROUPS)]
    test_files = [p for p in imgs if p.name.startswith(MAE_TEST_GROUP)]
    kw = dict(axes="ZYX", patch_shape=(128, 128), masks=str(folder / "masks"))
    train_p = Patches.from_tiff([str(p) for p in train_files], **kw)
    test_p = Patches.from_tiff([str(p) for p in test_files], **kw)
    # lr: the authors' absolute 1.5e-4 (the linear rule would give 1.9e-5 at batch 32, too small
    # for a short run; pitfall M2)
    base = dict(preset=preset, mask_ratio=0.75, batch_size=32, lr=1.5e-4, n_components=256, random_state=0)
    print(f"benchmark MAE: {len(train_p)} training patches, {epochs} epochs", flush=True)
    est = MAEPretrainer(max_epochs=epochs, warmup_epochs=max(1.0, round(0.05 * epochs)), progress=True, **base)
    t0 = time.perf_counter()
    est.fit(train_p)
    return est, train_p, test_p, time.perf_counter() - t0
