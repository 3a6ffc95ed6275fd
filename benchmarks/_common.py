"""Helpers shared by the benchmark scripts: machine description, peak memory, result files."""

from __future__ import annotations

import datetime as _dt
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


def write_result(name: str, title: str, body: str, command: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"## {title}\n\n*Measured {stamp} on {machine()}.*  \n*Command:* `{command}`\n\n"
            f"{body.strip()}\n")
    path = RESULTS / f"{name}.md"
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
