"""Short, human labels for patches: which stack and where, for figure titles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for type hints: patches.py imports this module
    from .patches import Patches

__all__ = ["patch_labels"]


def patch_labels(patches: Patches, indices: Any) -> list[str]:
    """Two-line labels (stack name, then ``z, y, x``) naming where each patch comes from.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Patches
    >>> p = Patches.from_arrays(np.zeros((2, 8, 8), np.float32), axes="ZYX", patch_shape=(4, 4),
    ...                         normalize="none")
    >>> patch_labels(p, [5])[0].splitlines()
    ['array0', 'z 1, y 0, x 4']
    """
    prov = patches.provenance()
    idx = np.asarray(indices, dtype=np.int64).ravel()
    out = []
    for i in idx:
        stem = Path(str(prov.source[i])).name
        for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if len(stem) > 22:
            stem = stem[:10] + "…" + stem[-11:]
        out.append(f"{stem}\nz {int(prov.z[i])}, y {int(prov.y[i])}, x {int(prov.x[i])}")
    return out
