"""Per-source intensity normalisation.

Every source (a TIFF file or an array) is normalised with its own parameters, computed
once (lazily, on the first read) and stored with the :class:`~biodatacentric.Patches`, so
every stage of the pipeline sees the same float32 intensities::

    out = (raw - offset) * scale          # then clipped to [0, 1] for "percentile"/"minmax"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Normalization", "as_normalization"]

_MAX_STAT_VALUES = 2_000_000


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become float32.

    Parameters
    ----------
    method : {"percentile", "minmax", "none", "meanstd"}
        ``"percentile"`` (default) maps the ``low`` and ``high`` percentiles of each source
        to 0 and 1 and clips; ``"minmax"`` does the same with the minimum and maximum;
        ``"none"`` only casts to float32; ``"meanstd"`` subtracts the fixed ``mean`` and
        divides by the fixed ``std`` (same constants for every source).
    low, high : float
        Percentiles for ``"percentile"`` (robust to hot pixels).
    mean, std : float
        Constants for ``"meanstd"``.
    clip : bool
        Clip to [0, 1] after scaling (``"percentile"`` and ``"minmax"`` only).

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Normalization
    >>> norm = Normalization("minmax")
    >>> offset, scale, clip = norm.compute(np.array([10.0, 20.0, 30.0]), source="demo")
    >>> offset, round(scale, 3), clip
    (10.0, 0.05, True)
    >>> Normalization("meanstd", mean=100.0, std=20.0).compute(np.zeros(1), source="demo")
    (100.0, 0.05, False)
    """

    method: str = "percentile"
    low: float = 0.5
    high: float = 99.8
    mean: float | None = None
    std: float | None = None
    clip: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "minmax", "none", "meanstd"):
            raise ValueError(
                f"normalize={self.method!r} is not one of 'percentile', 'minmax', 'none', "
                "or a (mean, std) pair")
        if self.method == "percentile" and not (0 <= self.low < self.high <= 100):
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if self.method == "meanstd":
            if self.mean is None or self.std is None or not np.isfinite([self.mean, self.std]).all():
                raise ValueError("normalize='meanstd' needs finite mean and std values")
            if self.std <= 0:
                raise ValueError(f"normalize std must be positive, got {self.std}")

    def to_dict(self) -> dict:
        return {"method": self.method, "low": self.low, "high": self.high,
                "mean": self.mean, "std": self.std, "clip": self.clip}

    def compute(self, sample: np.ndarray, *, source: str) -> tuple[float, float, bool]:
        """Return ``(offset, scale, clip)`` for a source from a sample of its raw values."""
        if self.method == "none":
            return 0.0, 1.0, False
        if self.method == "meanstd":
            return float(self.mean), 1.0 / float(self.std), False
        values = np.asarray(sample).ravel()
        if values.size > _MAX_STAT_VALUES:
            step = int(np.ceil(values.size / _MAX_STAT_VALUES))
            values = values[::step]
        if self.method == "percentile":
            lo, hi = np.percentile(values, [self.low, self.high])
        else:
            lo, hi = values.min(), values.max()
        lo, hi = float(lo), float(hi)
        if not hi > lo:
            if float(values.max()) > float(values.min()):
                # percentiles collapse on sparse images: fall back to the full range
                lo, hi = float(values.min()), float(values.max())
            else:
                raise ValueError(
                    f"{source} is constant (every sampled pixel is {lo:g}); '{self.method}' "
                    "normalisation would divide by zero. Remove the file, or pass "
                    "normalize='none' or fixed (mean, std) values")
        return lo, 1.0 / (hi - lo), self.clip


def as_normalization(spec: Any) -> Normalization:
    """Accept a :class:`Normalization`, a method name, a ``(mean, std)`` pair or a dict.

    ``None`` means ``"none"`` (cast to float32 only).

    Examples
    --------
    >>> from biodatacentric.data.normalize import as_normalization
    >>> as_normalization("minmax").method
    'minmax'
    >>> norm = as_normalization((0.5, 0.25))
    >>> norm.method, norm.mean, norm.std
    ('meanstd', 0.5, 0.25)
    >>> as_normalization(None).method
    'none'
    """
    if isinstance(spec, Normalization):
        return spec
    if spec is None:
        return Normalization("none")
    if isinstance(spec, str):
        return Normalization(spec)
    if isinstance(spec, dict):
        if set(spec) <= {"mean", "std"} and spec:
            return Normalization("meanstd", mean=spec.get("mean"), std=spec.get("std"))
        return Normalization(**spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return Normalization("meanstd", mean=float(spec[0]), std=float(spec[1]))
    raise ValueError(
        f"normalize={spec!r} is not understood; use 'percentile', 'minmax', 'none', a (mean, std) "
        "pair or a Normalization")
