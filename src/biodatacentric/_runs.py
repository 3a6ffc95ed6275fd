"""The planner's measurements: a timed probe of this machine and the table of earlier runs.

* :func:`probe` times a few training steps (forward, backward, optimizer step) of the MAE and
  the segmenter, and a few forward passes, at the planned patch size and batch, with the
  precision the library would use here (bf16 autocast on CPUs with fast bf16);
* a **run record** (:func:`run_record`) holds what a demo or benchmark run was planned with
  (probe, predicted seconds per stage), what it measured (seconds per stage, quality) and a
  fingerprint summary; :func:`append_run` adds it to a JSON-lines file;
* :func:`read_runs` reads the table shipped with the package (``_tables/runs.jsonl``, made
  from measured runs only), the user's runs file (:func:`user_runs_file`) and any file named;
  :func:`stage_factors` turns them into the correction factor per stage (median of measured /
  predicted seconds) that the planner applies to its probe-based time model, and the measured
  fixed overhead of a run.

**Where a user's runs go.** The demo (``make demo``, ``biodatacentric demo``) and the benchmark
of the whole loop append their records to the user's runs file, never to the shipped table:
``$BIODATACENTRIC_RUNS`` when set (``off`` to record nothing), else
``$XDG_DATA_HOME/biodatacentric/runs.jsonl`` (``~/.local/share/biodatacentric/runs.jsonl``).
The planner reads the shipped table and that file. Runs of your own (another machine, a
cluster) are added by appending their records (:func:`run_record` + :func:`append_run`, or
copying lines of another runs file) to it, or by passing a file as ``plan(..., runs=...)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write_text
from ._utils import autocast, resolve_device, resolve_precision
from ._version import __version__
from .nn.mae import MaskedAutoencoder
from .nn.presets import ENCODER_KEYS, get_preset
from .nn.transunet import TransUNet

__all__ = ["probe", "run_record", "append_run", "read_runs", "stage_factors", "user_runs_file", "SHIPPED_RUNS"]

#: The table of measured runs shipped with the package.
SHIPPED_RUNS = Path(__file__).resolve().parent / "_tables" / "runs.jsonl"
#: Stages of a run the planner predicts ("hunt" includes the fine-tuning round; "other" is the rest).
STAGES = ("pretrain", "segment", "hunt", "other")


def user_runs_file() -> Path | None:
    """The user's runs file: ``$BIODATACENTRIC_RUNS``, else ``$XDG_DATA_HOME/biodatacentric/runs.jsonl``
    (``~/.local/share/...`` without ``XDG_DATA_HOME``); None when ``BIODATACENTRIC_RUNS`` is ``off``
    (or empty), which records nothing.

    Examples
    --------
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"BIODATACENTRIC_RUNS": "/tmp/my_runs.jsonl"}):
    ...     print(user_runs_file())
    /tmp/my_runs.jsonl
    >>> with mock.patch.dict(os.environ, {"BIODATACENTRIC_RUNS": "off"}):
    ...     print(user_runs_file())
    None
    """
    env = os.environ.get("BIODATACENTRIC_RUNS")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "biodatacentric" / "runs.jsonl"


def machine() -> dict:
    """CPU model, cores, torch threads and the 1-minute load average."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = float(os.getloadavg()[0])
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": int(torch.get_num_threads()),
            "load_1min": load, "cuda": torch.cuda.is_available()}


def _time_steps(module: torch.nn.Module, make_loss: Any, device: torch.device, precision: str, n: int,
                train: bool) -> float:
    """Median seconds of ``n`` steps (after one untimed warm-up step)."""
    module.to(device)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4) if train else None
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        if train:
            module.train()
            with autocast(device, precision):
                loss = make_loss(module)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            module.eval()
            with torch.inference_mode(), autocast(device, precision):
                make_loss(module)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def probe(patch_size: int, arch: dict, mae_batch: int, seg_batch: int, device: str = "auto",
          n_steps: int = 3) -> dict:
    """Seconds per MAE step, segmenter step and segmenter forward pass of one patch (and the load).

    The figures are this machine's speed now: on a shared machine they include the other
    jobs' load (``load_1min``, the 1-minute load average when the probe ended).

    Parameters
    ----------
    patch_size : int
    arch : dict
        ``preset`` plus encoder overrides (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``).
    mae_batch, seg_batch : int
    device : str
    n_steps : int
        Timed steps per measurement (the median is kept).

    Examples
    --------
    >>> r = probe(32, {"preset": "tiny"}, mae_batch=4, seg_batch=2, n_steps=1)
    >>> sorted(r)
    ['device', 'load_1min', 'mae_step_s', 'precision', 'probe_seconds', 'seg_forward_s', 'seg_step_s']
    >>> r["mae_step_s"] > 0 and r["seg_step_s"] > 0
    True
    """
    t_all = time.perf_counter()
    dev = resolve_device(device)
    prec = resolve_precision("auto", dev)
    cfg = get_preset(arch.get("preset", "small"), **{k: v for k, v in arch.items() if k != "preset"})
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        mae = MaskedAutoencoder(img_size=patch_size, in_chans=1, **cfg)
        x = torch.rand(mae_batch, 1, patch_size, patch_size, device=dev)

        def mae_loss(m: torch.nn.Module) -> torch.Tensor:
            return m.training_loss(x, 0.75)

        t_mae = _time_steps(mae, mae_loss, dev, prec, n_steps, True)
        del mae
        enc = {k: cfg[k] for k in ENCODER_KEYS}
        seg = TransUNet(n_classes=2, feature_size=16, img_size=patch_size, in_chans=1, **enc)
        xs = torch.rand(seg_batch, 1, patch_size, patch_size, device=dev)
        ys = torch.randint(0, 2, (seg_batch, patch_size, patch_size), device=dev)

        def seg_loss(m: torch.nn.Module) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(m(xs).float(), ys)

        t_seg = _time_steps(seg, seg_loss, dev, prec, n_steps, True)
        t_fwd = _time_steps(seg, lambda m: m(xs), dev, prec, n_steps, False) / seg_batch
    finally:
        torch.random.set_rng_state(state)
    return {"mae_step_s": t_mae, "seg_step_s": t_seg, "seg_forward_s": t_fwd, "device": str(dev),
            "precision": prec, "probe_seconds": time.perf_counter() - t_all, "load_1min": machine()["load_1min"]}


# ---------------------------------------------------------------------- the runs table
def run_record(kind: str, fingerprint: dict, config: dict, measured: dict, quality: dict,
               plan: dict | None = None) -> dict:
    """One row of the runs table (plain JSON)."""
    return {"kind": str(kind), "when": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "version": __version__, "machine": machine(), "fingerprint": fingerprint, "config": config,
            "plan": plan, "measured": measured, "quality": quality}


def append_run(record: dict, path: str | os.PathLike) -> Path:
    """Append ``record`` to the JSON-lines file ``path`` (rewritten atomically)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def read_runs(*paths: str | os.PathLike | None, shipped: bool = True, user: bool = True) -> list[dict]:
    """Records of the shipped table (``shipped=True``), the user's runs file (``user=True``,
    :func:`user_runs_file`) and the given JSON-lines files, each file read once."""
    files = ([SHIPPED_RUNS] if shipped else []) + ([user_runs_file()] if user else []) + [Path(p) for p in paths if p]
    seen: set = set()
    out = []
    for f in files:
        if f is None or f.resolve() in seen:
            continue
        seen.add(f.resolve())
        if not f.is_file():
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{f}, line {i}: not a JSON record ({exc}); fix or remove the line") from None
            if not isinstance(rec, dict) or "measured" not in rec:
                raise ValueError(f"{f}, line {i}: not a run record (no 'measured'); it comes from append_run")
            out.append(rec)
    return out


def stage_factors(records: list[dict]) -> tuple[dict, float | None, int]:
    """(median measured/predicted seconds per stage, median 'other' seconds, records used).

    Only planned runs count (those whose record holds the plan's predicted seconds).
    """
    ratios: dict[str, list[float]] = {s: [] for s in STAGES if s != "other"}
    other, used = [], 0
    for rec in records:
        pred = ((rec.get("plan") or {}).get("predicted_seconds") or {})
        meas = (rec.get("measured") or {}).get("stages") or {}
        if not pred or not meas:
            continue
        used += 1
        for s in ratios:
            if pred.get(s) and meas.get(s):
                ratios[s].append(float(meas[s]) / float(pred[s]))
        if meas.get("other") is not None:
            other.append(float(meas["other"]))
    factors = {s: float(np.median(v)) for s, v in ratios.items() if v}
    return factors, (float(np.median(other)) if other else None), used
