"""Atomic file writes and estimator save folders.

A saved estimator is a folder::

    config.json        class, parameters, library and torch versions, fitted scalars
    arrays.npz         fitted NumPy arrays (loaded with allow_pickle=False)
    weights/<name>.pt  torch state dicts (loaded with weights_only=True)

Nothing in a save folder is ever unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

MARKER = "biodatacentric-save"

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_replace_dir", "move_dir_into_place",
           "torch_save_atomic", "torch_load_safe", "MARKER"]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe to probe


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the same folder, so the rename is atomic: readers see
    either the old file or the complete new one, never a half-written file. The result gets
    the permissions of a normally created file (``0o666`` minus the umask), not the
    owner-only mode of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` a state dict (tensors, numbers, strings, lists, dicts) atomically."""
    return atomic_write(path, lambda p: torch.save(obj, p))


def torch_load_safe(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file with ``weights_only=True``: tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # an object other than tensors and plain containers
        lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln]
        reason = lines[0].split(". Please use")[0] if lines else str(exc).splitlines()[0]
        raise ValueError(
            f"{path} holds pickled Python objects, not only tensors ({reason}); biodatacentric refuses to "
            "load it for safety (weights_only=True). Use a file holding a plain state dict, such as "
            "torch.save(module.state_dict(), path) writes") from None
    except Exception as exc:  # truncated or corrupt files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"could not read {path} as a weights-only torch file ({type(exc).__name__}: {first}); it is "
            "corrupt or truncated (biodatacentric also refuses to load pickled objects)") from None


def move_dir_into_place(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename the finished folder ``src`` onto ``dest``; an existing ``dest`` is moved aside first
    and deleted afterwards, so ``dest`` is always either the old or the new complete folder."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


def atomic_replace_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp_dir)`` and move it onto ``path`` atomically.

    An existing ``path`` is replaced only when it is a biodatacentric save folder (it
    holds a ``config.json`` with our marker); any other existing folder is left untouched
    and an error is raised.
    """
    path = Path(path)
    if path.exists():
        cfg = path / "config.json"
        ok = False
        if path.is_dir() and cfg.is_file():
            try:
                ok = json.loads(cfg.read_text(encoding="utf-8")).get("format") == MARKER
            except (OSError, ValueError):
                ok = False
        if not ok:
            raise FileExistsError(
                f"{path} exists and is not a biodatacentric save folder; choose a new path "
                "(nothing was written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        move_dir_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def to_jsonable(value: Any) -> Any:
    """Convert NumPy scalars/tuples to plain JSON types; raise TypeError otherwise."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
