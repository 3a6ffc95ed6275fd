"""Small shared helpers: devices, numeric precision, seeding and progress bars."""

from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "resolve_device",
    "resolve_precision",
    "autocast",
    "cpu_supports_fast_bf16",
    "seed_everything",
    "check_random_state_int",
    "progress",
]


@functools.lru_cache(maxsize=None)
def cpu_supports_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16).

    Reads ``/proc/cpuinfo`` (Linux); on other systems returns ``False`` so that the
    safe fp32 path is used.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:1"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when a GPU is visible, else the CPU.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a valid torch device; use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return dev


def resolve_precision(precision: str = "auto", device: torch.device | str = "cpu") -> str:
    """Return ``"bf16"`` or ``"fp32"``.

    ``"auto"`` chooses bf16 autocast where the hardware runs it fast: CUDA GPUs of compute
    capability 8.0 or newer, and CPUs with AMX or AVX512-BF16; fp32 elsewhere.
    """
    device = resolve_device(device)
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision={precision!r} is not one of 'auto', 'bf16', 'fp32'")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp32"
    return "bf16" if cpu_supports_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (``"bf16"`` or ``"fp32"``) on ``device``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_random_state_int(random_state: int | None | np.random.Generator) -> int:
    """Turn ``random_state`` into a fixed integer seed (``None`` draws one)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}")
        return int(random_state)
    raise TypeError(f"random_state must be None or an int, got {random_state!r}")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU torch Generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None,
             enabled: bool | None = None, leave: bool = False) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm progress bar.

    Bars are hidden when ``enabled`` is False, or when it is None and either the
    environment variable ``BIODATACENTRIC_PROGRESS=0`` is set or stderr is not a terminal.
    """
    if enabled is None:
        env = os.environ.get("BIODATACENTRIC_PROGRESS")
        enabled = (env != "0") if env is not None else _stderr_is_tty()
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True))


def _stderr_is_tty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
