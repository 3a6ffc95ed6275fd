"""The one training loop shared by every estimator that trains a torch module.

It owns what every trainer needs and what is easy to get subtly wrong:

* AdamW with weight decay on weights only (never on biases, norms, positional tables or
  tokens), optional layer-wise learning-rate decay;
* the learning rate set every iteration from an explicit schedule (linear warmup, then
  cosine or polynomial decay; warmup clipped to at most 10 % of the run);
* bf16 autocast, gradient accumulation, optional gradient clipping;
* checkpoints written atomically every ``checkpoint_every`` epochs holding the module,
  optimizer, all random-number-generator states and the history, so an interrupted ``fit``
  resumes and ends with the same weights as an uninterrupted run with the same seed;
* an optional time limit (``max_time``) under which the run is *budget-aware*: after every
  epoch the number of epochs that still fit in the time left is re-estimated from the
  measured epoch times (never more than ``max_epochs``), and the learning-rate schedule is
  re-stretched so that it still decays to its end at the last epoch that fits (recorded
  after every epoch in ``history["epochs_planned"]``; the
  schedule that does best under a fixed budget, Li, Yumer & Ramanan, ICLR 2020). A
  time-limited run ends on time on a loaded or slow machine, at the price of being
  reproducible only when the limit is not reached.

All randomness of a run flows from one seeded :class:`torch.Generator` (sample order,
augmentation, masking) plus torch's global generator (dropout); both are checkpointed.

Data parallel: launched under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), the loop
joins the process group (NCCL on CUDA, gloo on CPU), wraps the step in
:class:`~torch.nn.parallel.DistributedDataParallel`, gives each rank an equal share of every
global micro-batch (the same seeded permutation on every rank, so the global batch and the
schedule are those of a single-process run), averages the logged losses over ranks, and
writes checkpoints and logs on rank 0 only. User code does not change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._io import torch_load_safe, torch_save_atomic
from ._params import Interval, Options, validate_params
from ._utils import autocast, progress
from .data.patches import Patches

__all__ = ["TrainSettings", "build_optimizer", "lr_at", "train", "TrainingInterrupted", "distributed_context",
           "array_fingerprint", "patches_fingerprint"]


def distributed_context(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group when launched by ``torchrun``."""
    if not dist.is_available():
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _wait_until_released(t: torch.Tensor, timeout: float = 30.0) -> None:
    """Return once no C++ object but ``t``'s own Python wrapper still holds ``t``.

    A gloo collective returns as soon as its result is ready, but a worker thread of the
    process group drops its reference to the tensor a moment later. Dropping that reference
    touches the tensor's Python object and so needs the GIL. If the interpreter is already
    shutting down by then (the last epoch's collective, then a short script's exit), the
    worker cannot take the GIL and the rank aborts ("terminate called without an active
    exception"), so torchrun reports the run as failed after all its work is done: 4 of 150
    runs of the 2-process test without this wait. Tensors made by the loop itself are the
    only Python-owned tensors its collectives see (DDP's buckets live in C++), so waiting
    here is enough. The wait is usually zero and never longer than ``timeout``.
    """
    use_count = getattr(t, "_use_count", None)
    if use_count is None:  # a torch without the counter: nothing to wait for
        return
    deadline = time.monotonic() + timeout
    while use_count() > 1 and time.monotonic() < deadline:
        time.sleep(1e-4)  # lets the worker take the GIL and let go


class _Step(nn.Module):
    """Wraps ``step_fn`` as a module so DistributedDataParallel sees the forward pass."""

    def __init__(self, module: nn.Module, fn: Callable) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        return self.fn(self.module, idx, gen)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train(..., interrupt_after=k)`` to simulate an interruption in tests."""


@dataclass
class TrainSettings:
    """Hyper-parameters of one training run (see the module docstring)."""

    max_epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    schedule: str = "cosine"
    poly_power: float = 0.9
    accum_steps: int = 1
    grad_clip: float | None = None
    layer_decay: float | None = None
    device: str = "cpu"
    precision: str = "fp32"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    seed: int = 0
    progress: bool | None = None
    drop_last: bool = False
    max_time: float | None = None
    extra: dict = field(default_factory=dict)

    _constraints = {
        "max_epochs": [Interval(Integral, 1, None)],
        "batch_size": [Interval(Integral, 1, None)],
        "lr": [Interval(Real, 0.0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0.0, None)],
        "warmup_epochs": [Interval(Real, 0.0, None)],
        "min_lr": [Interval(Real, 0.0, None)],
        "schedule": [Options(("cosine", "poly", "constant"))],
        "accum_steps": [Interval(Integral, 1, None)],
        "grad_clip": [None, Interval(Real, 0.0, None)],
        "layer_decay": [None, Interval(Real, 0.0, 1.0, closed="right")],
        "checkpoint_dir": [None, str, os.PathLike],
        "checkpoint_every": [Interval(Integral, 1, None)],
        "seed": [Interval(Integral, 0, None)],
        "max_time": [None, Interval(Real, 0.0, None, closed="neither")],
    }

    def validate(self) -> None:
        validate_params(asdict(self), self._constraints, "TrainSettings")

    def fingerprint(self, module: nn.Module) -> str:
        d = asdict(self)
        for k in ("checkpoint_dir", "progress", "device", "checkpoint_every"):
            d.pop(k)
        if d.get("max_time") is None:      # fingerprints of runs without a time limit stay as they were
            d.pop("max_time")
        d["module"] = getattr(module, "config", type(module).__name__)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- data fingerprints
# A checkpoint resumes only the run it belongs to: besides the settings it records a
# fingerprint of the training data, and a run on other data refuses it. The fingerprints
# below identify the data without rereading all of it when it is large.
_SAMPLE_PATCHES = 256   # patches whose normalised pixels are hashed when the data is not in memory


def array_fingerprint(*arrays: np.ndarray | None, extra: Any = None) -> str:
    """SHA-256 (16 hex digits) of the dtype, shape and every byte of ``arrays`` plus ``extra``.

    Used for data already in memory (the segmenter's images and masks, MAE patches that fit
    in memory): hashing runs at about 1 GB/s, negligible next to one training epoch.

    Examples
    --------
    >>> a = np.zeros((2, 4, 4), np.float32)
    >>> array_fingerprint(a) == array_fingerprint(a.copy()), array_fingerprint(a) == array_fingerprint(a + 1)
    (True, False)
    """
    h = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            h.update(b"none")
            continue
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def patches_fingerprint(patches: Patches, images: np.ndarray | None = None) -> str:
    """Fingerprint of a :class:`~biodatacentric.Patches` training set.

    With ``images`` (the patches' normalised pixels, already in memory) every byte is hashed.
    Otherwise (a lazy set larger than memory, e.g. the paper's 800 stacks) what is hashed is:

    * the number of patches, their shape and the provenance of every patch (source file or
      array name, ``z, y, x``): which patches, cut where, in which order;
    * for every source its name, shape, dtype and the normalisation actually applied
      (offset, scale, clip), and for a source that is a file on disk its size and
      modification time (a replaced or rewritten file changes them);
    * the normalised pixels of up to 256 patches evenly spaced over the set, first and last
      included.

    That identifies the data: other files, other patches, another normalisation or a
    rewritten file all change the fingerprint, at the cost of a few hundred patch reads and
    one ``stat`` per file rather than rereading the whole set.
    """
    n = len(patches)
    extra: dict[str, Any] = {"n": n, "patch_shape": list(patches.patch_shape)}
    if images is not None:
        prov = patches.provenance()
        return array_fingerprint(images, np.asarray(prov.z), np.asarray(prov.y), np.asarray(prov.x),
                                 extra={**extra, "sources": list(map(str, prov.source))})
    h = hashlib.sha256()
    prov = patches.provenance()
    h.update(json.dumps(list(map(str, prov.source))).encode())
    for col in (prov.z, prov.y, prov.x):
        h.update(np.ascontiguousarray(np.asarray(col, dtype=np.int64)).tobytes())
    sources = []
    for src in getattr(patches, "_sources", []):
        desc: dict[str, Any] = {"name": str(getattr(src, "name", "")), "shape": list(getattr(src, "shape", ())),
                                "dtype": str(getattr(src, "dtype", ""))}
        norm = getattr(src, "norm_params", None)
        if callable(norm):
            desc["norm"] = [float(v) for v in norm()]
        path = getattr(src, "path", None)
        if path is not None and os.path.exists(path):
            st = os.stat(path)
            desc["file"] = [int(st.st_size), int(st.st_mtime_ns)]
        sources.append(desc)
    extra["sources"] = sources
    sample = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE_PATCHES)).round().astype(np.int64)) if n else []
    h.update(array_fingerprint(patches.images(sample) if n else None, extra=extra).encode())
    return h.hexdigest()[:16]


def _check_checkpoint_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and make sure checkpoints can be written there (before training)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"checkpoint_dir={str(folder)!r} is a file, not a folder; pass a folder path "
                                 "(nothing was trained)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:  # same class (PermissionError, NotADirectoryError, ...), clearer message
        kind = type(exc) if type(exc) is not OSError and type(exc).__init__ is OSError.__init__ else OSError
        raise kind(f"checkpoint_dir={str(folder)!r} cannot be written ({exc.strerror or exc}); pass a "
                   "writable folder (nothing was trained)") from None
    return folder


def build_optimizer(module: nn.Module, lr: float, weight_decay: float, betas: Sequence[float],
                    layer_decay: float | None = None,
                    layer_of: Callable[[str], tuple[int, int]] | None = None) -> torch.optim.AdamW:
    """AdamW with no decay on biases, norms and ``module.no_weight_decay()`` names.

    With ``layer_decay`` and ``layer_of(name) -> (layer_id, n_layers)``, the learning rate of
    a parameter is scaled by ``layer_decay ** (n_layers - layer_id)``.
    """
    skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip
        scale = 1.0
        if layer_decay is not None and layer_of is not None:
            lid, n_layers = layer_of(name)
            scale = layer_decay ** (n_layers - lid)
        groups.setdefault((no_decay, scale), []).append(p)
    param_groups = [{"params": ps, "weight_decay": 0.0 if nd else weight_decay, "lr_scale": s}
                    for (nd, s), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))]
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas))


def lr_at(step: float, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0,
          schedule: str = "cosine", poly_power: float = 0.9) -> float:
    """Learning rate at (fractional) ``step``: linear warmup then cosine/poly/constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(total_steps - warmup_steps, 1)
    t = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if schedule == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    return min_lr + (base_lr - min_lr) * (1.0 - t) ** poly_power


def _rng_states(gen: torch.Generator) -> dict:
    return {"generator": gen.get_state(), "torch": torch.get_rng_state()}


def _set_rng_states(gen: torch.Generator, states: dict) -> None:
    gen.set_state(states["generator"])
    torch.set_rng_state(states["torch"])


def train(module: nn.Module, step_fn: Callable[[nn.Module, np.ndarray, torch.Generator], torch.Tensor],
          n_items: int, settings: TrainSettings, *,
          epoch_order: Callable[[int, torch.Generator], np.ndarray] | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None,
          history: dict | None = None, desc: str = "train",
          layer_of: Callable[[str], tuple[int, int]] | None = None,
          interrupt_after: int | None = None,
          log: Callable[[str], None] | None = None,
          data_fingerprint: str | None = None) -> dict:
    """Train ``module`` in place and return the history.

    Parameters
    ----------
    module : nn.Module
        Already on ``settings.device``.
    step_fn : callable(module, indices, generator) -> loss
        Computes the loss of one micro-batch of item indices (under autocast).
    n_items : int
        Number of training items; an epoch visits a permutation of them unless
        ``epoch_order(epoch, generator)`` returns the indices to visit (e.g. a fixed mix of
        new and replayed patches when fine-tuning).
    on_epoch_end : callable(epoch, history), optional
        Called after every epoch (validation, best-model tracking); may add to ``history``.
    interrupt_after : int, optional
        Raise :class:`TrainingInterrupted` after this many epochs (after checkpointing); for
        tests of resuming.
    data_fingerprint : str, optional
        Identifies the training data (:func:`array_fingerprint`, :func:`patches_fingerprint`).
        It is stored in the checkpoint; a checkpoint of a run on other data is refused, as is
        one of a run with other settings or another model. A ``checkpoint_dir`` that is a file
        or cannot be written is refused before anything is trained.
    """
    settings.validate()
    device = torch.device(settings.device)
    rank, world = distributed_context(device)
    runner: nn.Module = _Step(module, step_fn)
    if world > 1:
        runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
        if rank != 0:
            log = None
    history = {"loss": [], "lr": [], "epoch_time": []} if history is None else history
    for key in ("loss", "lr", "epoch_time"):
        history.setdefault(key, [])
    gen = torch.Generator()
    gen.manual_seed(int(settings.seed))
    torch.manual_seed(int(settings.seed))
    optimizer = build_optimizer(module, settings.lr, settings.weight_decay, settings.betas,
                                settings.layer_decay, layer_of)
    ckpt_path = None
    if settings.checkpoint_dir and rank == 0:
        ckpt_path = _check_checkpoint_dir(settings.checkpoint_dir) / "checkpoint.pt"
    elif settings.checkpoint_dir:
        ckpt_path = Path(settings.checkpoint_dir) / "checkpoint.pt"
    fingerprint = settings.fingerprint(module)
    start_epoch = 0
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch_load_safe(ckpt_path)
        if not isinstance(ckpt, dict) or not {"module", "optimizer", "rng", "history", "epoch"} <= set(ckpt):
            raise ValueError(f"{ckpt_path} is not a biodatacentric training checkpoint; remove it (or pass "
                             "another checkpoint_dir) to start afresh")
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(
                f"the checkpoint {ckpt_path} was written by a run with different settings or model; "
                "remove it (or pass another checkpoint_dir) to start afresh")
        if ckpt.get("data_fingerprint", "absent") != data_fingerprint:
            which = ("was written without a record of its training data (an older version), so it cannot be "
                     "matched to this data" if "data_fingerprint" not in ckpt
                     else "was written by a run on different training data (same settings, other patches, "
                     "pixels or normalisation)")
            raise ValueError(
                f"the checkpoint {ckpt_path} {which}; it is not resumed. Remove it (or pass another "
                "checkpoint_dir) to train on this data from the start")
        module.load_state_dict(ckpt["module"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_states(gen, ckpt["rng"])
        history.clear()
        history.update(json.loads(ckpt["history"]))
        start_epoch = int(ckpt["epoch"])
        if log:
            log(f"resuming from {ckpt_path} after epoch {start_epoch}")
    n_batches = (n_items // settings.batch_size if settings.drop_last
                 else math.ceil(n_items / settings.batch_size))
    if epoch_order is not None:
        probe = len(epoch_order(-1, torch.Generator().manual_seed(0)))
        n_batches = probe // settings.batch_size if settings.drop_last else math.ceil(probe / settings.batch_size)
    n_batches = max(n_batches, 1)
    steps_per_epoch = math.ceil(n_batches / settings.accum_steps)

    def schedule(end: int) -> tuple[int, int]:
        """Total and warmup steps of a run that ends after epoch ``end`` (warmup at most 10 %)."""
        total = end * steps_per_epoch
        return total, min(int(round(settings.warmup_epochs * steps_per_epoch)), int(0.1 * total) or 0)

    end_epoch = settings.max_epochs           # lowered (or raised back, up to max_epochs) under max_time
    total_steps, warmup_steps = schedule(end_epoch)
    if log and start_epoch == 0:
        eff = settings.batch_size * settings.accum_steps
        log(f"{desc}: {settings.max_epochs} epochs x {steps_per_epoch} steps, effective batch {eff}, "
            f"peak lr {settings.lr:g} ({settings.schedule}, warmup {warmup_steps} steps), "
            f"precision {settings.precision} on {device}")
    epochs = progress(range(start_epoch, settings.max_epochs), desc=desc, total=settings.max_epochs - start_epoch,
                      enabled=settings.progress if rank == 0 else False)
    t_run = time.perf_counter()
    first_epoch_time = len(history["epoch_time"])     # epochs of this call start here (after a resume)
    for epoch in epochs:
        if epoch >= end_epoch:
            break
        t0 = time.perf_counter()
        order = epoch_order(epoch, gen) if epoch_order is not None else torch.randperm(n_items, generator=gen).numpy()
        order = np.asarray(order)
        batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        if settings.drop_last and batches and len(batches[-1]) < settings.batch_size:
            batches = batches[:-1]
        module.train()
        losses = []
        lr = settings.lr
        for b, idx in enumerate(batches):
            step = epoch * steps_per_epoch + b // settings.accum_steps
            first = b % settings.accum_steps == 0
            if first:
                lr = lr_at(step, total_steps, warmup_steps, settings.lr, settings.min_lr, settings.schedule,
                           settings.poly_power)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
            group_end = min((b // settings.accum_steps + 1) * settings.accum_steps, len(batches))
            n_micro = group_end - (b // settings.accum_steps) * settings.accum_steps
            if world > 1:  # this rank's share of the global micro-batch
                idx = idx[rank::world]
            with autocast(device, settings.precision):
                loss = runner(idx, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {loss.item()} at epoch {epoch}; lower lr "
                                         "or use precision='fp32'")
            (loss / n_micro).backward()
            if b + 1 == group_end:
                if settings.grad_clip:
                    nn.utils.clip_grad_norm_(module.parameters(), settings.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        epoch_loss = float(np.mean(losses)) if losses else float("nan")
        if world > 1:
            t = torch.tensor([epoch_loss], dtype=torch.float64)
            dist.all_reduce(t)
            _wait_until_released(t)
            epoch_loss = float(t.item()) / world
        history["loss"].append(epoch_loss)
        history["lr"].append(float(lr))
        history["epoch_time"].append(time.perf_counter() - t0)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
        done = epoch + 1
        if settings.max_time is not None:
            end_epoch = _epochs_in_time(done, settings.max_epochs, settings.max_time, time.perf_counter() - t_run,
                                        history["epoch_time"][first_epoch_time:], world)
            total_steps, warmup_steps = schedule(end_epoch)
            history.setdefault("epochs_planned", []).append(float(end_epoch))
        if ckpt_path is not None and rank == 0 and (done % settings.checkpoint_every == 0 or done >= end_epoch):
            torch_save_atomic({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": _rng_states(gen), "history": json.dumps(history), "epoch": done,
                               "fingerprint": fingerprint, "data_fingerprint": data_fingerprint}, ckpt_path)
        if world > 1:
            dist.barrier()
        if interrupt_after is not None and done >= interrupt_after and done < end_epoch:
            raise TrainingInterrupted(f"interrupted after epoch {done}")
    if log and settings.max_time is not None and end_epoch < settings.max_epochs:
        log(f"{desc}: {end_epoch} of at most {settings.max_epochs} epochs fitted in max_time={settings.max_time:g} s "
            f"({time.perf_counter() - t_run:.1f} s)")
    module.eval()
    return history


def _epochs_in_time(done: int, max_epochs: int, max_time: float, elapsed: float, epoch_times: list[float],
                    world: int = 1) -> int:
    """The epoch count a time-limited run ends at: ``done`` plus the whole epochs that fit in the
    time left at the recent speed (median of the last three epochs), within ``done..max_epochs``.

    In a data-parallel run every rank must agree, so the count is taken from rank 0.

    Examples
    --------
    >>> _epochs_in_time(2, 100, 60.0, 20.0, [10.0, 10.0])      # 40 s left at 10 s per epoch
    6
    >>> _epochs_in_time(2, 5, 60.0, 20.0, [10.0, 10.0])        # never beyond max_epochs
    5
    >>> _epochs_in_time(3, 100, 60.0, 70.0, [20.0, 25.0, 25.0])  # over time: stop now
    3
    """
    per_epoch = float(np.median(epoch_times[-3:])) if epoch_times else float("inf")
    left = max(float(max_time) - float(elapsed), 0.0)
    fit = int(left // per_epoch) if per_epoch > 0 else max_epochs
    end = int(min(max(done + fit, done), max_epochs))
    if world > 1:
        t = torch.tensor([end], dtype=torch.int64)
        dist.broadcast(t, src=0)
        _wait_until_released(t)
        end = int(t.item())
    return end
