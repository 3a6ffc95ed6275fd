"""Shared helpers of the reliability suite: bad or hostile input must get a clear error, and
nothing a user wrote may change.

``untouched(folder)`` hashes every file under ``folder`` before the block and checks afterwards
that no file was changed, removed or added (files the block is allowed to create are named in
``allow_new``).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest


def tree_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def untouched(folder: Path, allow_new: tuple[str, ...] = ()):
    """Assert that no file under ``folder`` changes, disappears or (unless allowed) appears."""
    before = tree_digest(folder)
    yield
    after = tree_digest(folder)
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    removed = sorted(k for k in before if k not in after)
    added = sorted(k for k in after if k not in before
                   and not any(Path(k).match(pat) for pat in allow_new))
    assert not (changed or removed or added), (
        f"user files touched: changed {changed}, removed {removed}, added {added}")


@pytest.fixture
def no_user_file_changes():
    """The :func:`untouched` context manager, as a fixture."""
    return untouched
