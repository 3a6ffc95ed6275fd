"""Small shared helpers: devices, numeric precision, seeding and progress bars."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
import time
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")

__all__ = [
    "resolve_device",
    "resolve_precision",
    "autocast",
    "cpu_supports_fast_bf16",
    "seed_everything",
    "check_random_state_int",
    "progress",
    "format_seconds",
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


def unit_rows(x: np.ndarray, eps: float = 1e-12, *, float64_norm: bool = False) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, float32: the one L2 normalisation of embeddings in
    the library.

    By default the norm is computed in ``x``'s dtype and a row of norm below ``eps`` is divided
    by ``eps`` (an all-zero row stays zero): drift, RCA retrieval, MAE embeddings, the hunter's
    diversity, spherical k-means centres. ``float64_norm=True`` casts ``x`` to float32 first and
    accumulates the norm in float64 (all-zero rows stay zero), for the core-set selectors and
    the public :func:`biodatacentric.assess.l2_normalize`. The two modes differ in the last bit,
    which can change a greedy pick, so each caller keeps the mode it was written with.

    Examples
    --------
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]), float64_norm=True).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    if float64_norm:
        X = np.asarray(x, dtype=np.float32)
        n = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(np.float32)
        n[n == 0] = 1.0
        return np.ascontiguousarray(X / n[:, None])
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU torch Generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None,
             enabled: bool | None = None, leave: bool = False,
             log_every: float | None = None) -> Iterator[T]:
    """Show that long work is alive: a bar on a terminal, log lines elsewhere.

    On a terminal the iterable is wrapped in a tqdm bar. When stderr is not a terminal (a
    cluster job, a notebook's subprocess, output piped to a file) a bar would print nothing
    useful, so a plain line goes to stderr after the first item, then at most every
    ``log_every`` seconds and after the last item, with the count, the elapsed time and an
    ETA::

        [biodatacentric] MAE pretraining: 3/15 (20%), elapsed 1m02s, ETA 4m08s

    Parameters
    ----------
    iterable : iterable
        The work items.
    desc : str
        What is being done, shown before the counts.
    total : int, optional
        Number of items (default ``len(iterable)`` when it has one).
    enabled : bool, optional
        ``False`` shows nothing. ``None`` (default) follows the environment variable
        ``BIODATACENTRIC_PROGRESS``: ``0`` shows nothing; ``bar`` or ``log`` force that form;
        anything else (or unset) chooses by whether stderr is a terminal.
    leave : bool
        Keep the finished bar on screen.
    log_every : float, optional
        Seconds between log lines (default 30, or ``BIODATACENTRIC_LOG_EVERY``).

    Examples
    --------
    >>> import io, sys
    >>> from biodatacentric._utils import progress
    >>> err, sys.stderr = sys.stderr, io.StringIO()
    >>> try:
    ...     done = sum(progress(range(4), desc="demo", enabled=True))
    ...     lines = sys.stderr.getvalue().splitlines()
    ... finally:
    ...     sys.stderr = err
    >>> done, lines[-1].split(",")[0]
    (6, '[biodatacentric] demo: 4/4 (100%)')
    """
    mode = _progress_mode(enabled)
    if mode == "off":
        return iter(iterable)
    if mode == "bar":
        return iter(tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True))
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if log_every is None:
        log_every = float(os.environ.get("BIODATACENTRIC_LOG_EVERY", 30.0))
    return _log_lines(iterable, desc or "working", total, float(log_every))


def _progress_mode(enabled: bool | None) -> str:
    """``"off"``, ``"bar"`` or ``"log"`` for :func:`progress`."""
    if enabled is False:
        return "off"
    env = os.environ.get("BIODATACENTRIC_PROGRESS", "").strip().lower()
    if enabled is None and env == "0":
        return "off"
    if env in ("bar", "log"):
        return env
    return "bar" if _stderr_is_tty() else "log"


def _log_lines(iterable: Iterable[T], desc: str, total: int | None, every: float) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if done == 1 or now - last >= every or done == total:
            last = now
            elapsed = now - start
            if total:
                eta = elapsed / done * (total - done)
                line = (f"[biodatacentric] {desc}: {done}/{total} ({100 * done // total}%), "
                        f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}")
            else:
                line = f"[biodatacentric] {desc}: {done} done, elapsed {format_seconds(elapsed)}"
            print(line, file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``"1m15s"``; ``3725`` -> ``"1h02m"``; under a minute, one decimal.

    Examples
    --------
    >>> from biodatacentric._utils import format_seconds
    >>> format_seconds(4.21), format_seconds(75.3), format_seconds(3725)
    ('4.2s', '1m15s', '1h02m')
    """
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
