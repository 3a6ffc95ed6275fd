"""The one training loop shared by every estimator that trains a torch module.

It owns what every trainer needs and what is easy to get subtly wrong:

* AdamW with weight decay on weights only (never on biases, norms, positional tables or
  tokens), optional layer-wise learning-rate decay;
* the learning rate set every iteration from an explicit schedule (linear warmup, then
  cosine or polynomial decay; warmup clipped to at most 10 % of the run);
* bf16 autocast, gradient accumulation, optional gradient clipping;
* checkpoints written atomically every ``checkpoint_every`` epochs holding the module,
  optimizer, all random-number-generator states and the history, so an interrupted ``fit``
  resumes and ends with the same weights as an uninterrupted run with the same seed.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ._io import torch_load_safe, torch_save_atomic
from ._utils import autocast, progress

__all__ = ["TrainSettings", "build_optimizer", "lr_at", "train", "TrainingInterrupted", "distributed_context"]


def distributed_context(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group when launched by ``torchrun``."""
    import torch.distributed as dist

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
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("max_epochs", "batch_size", "accum_steps", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.schedule not in ("cosine", "poly", "constant"):
            raise ValueError(f"schedule={self.schedule!r} must be 'cosine', 'poly' or 'constant'")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def fingerprint(self, module: nn.Module) -> str:
        d = asdict(self)
        for k in ("checkpoint_dir", "progress", "device", "checkpoint_every"):
            d.pop(k)
        d["module"] = getattr(module, "config", type(module).__name__)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
          log: Callable[[str], None] | None = None) -> dict:
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
    """
    settings.validate()
    device = torch.device(settings.device)
    rank, world = distributed_context(device)
    runner: nn.Module = _Step(module, step_fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

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
    ckpt_path = Path(settings.checkpoint_dir) / "checkpoint.pt" if settings.checkpoint_dir else None
    fingerprint = settings.fingerprint(module)
    start_epoch = 0
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch_load_safe(ckpt_path)
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(
                f"the checkpoint {ckpt_path} was written by a run with different settings or model; "
                "remove it (or pass another checkpoint_dir) to start afresh")
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
    total_steps = settings.max_epochs * steps_per_epoch
    warmup_steps = min(int(round(settings.warmup_epochs * steps_per_epoch)), int(0.1 * total_steps) or 0)
    if log and start_epoch == 0:
        eff = settings.batch_size * settings.accum_steps
        log(f"{desc}: {settings.max_epochs} epochs x {steps_per_epoch} steps, effective batch {eff}, "
            f"peak lr {settings.lr:g} ({settings.schedule}, warmup {warmup_steps} steps), "
            f"precision {settings.precision} on {device}")
    epochs = progress(range(start_epoch, settings.max_epochs), desc=desc, total=settings.max_epochs - start_epoch,
                      enabled=settings.progress if rank == 0 else False)
    for epoch in epochs:
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
            import torch.distributed as dist

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
        if ckpt_path is not None and rank == 0 and (done % settings.checkpoint_every == 0
                                                    or done == settings.max_epochs):
            torch_save_atomic({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": _rng_states(gen), "history": json.dumps(history), "epoch": done,
                               "fingerprint": fingerprint}, ckpt_path)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if interrupt_after is not None and done >= interrupt_after and done < settings.max_epochs:
            raise TrainingInterrupted(f"interrupted after epoch {done}")
    module.eval()
    return history
