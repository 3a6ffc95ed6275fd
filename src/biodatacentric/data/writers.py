"""Write results where a person looks at them: ImageJ/Fiji TIFF, with the pixel size kept.

:func:`write_tiff` writes a label, probability or uncertainty map as an ImageJ hyperstack
(axes, pixel size in µm, z step) that Fiji and napari open at the right scale;
:func:`read_pixel_size` reads the pixel size of an input TIFF (ImageJ, OME-XML or the plain
resolution tags) so that a prediction carries the scale of the stack it came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .._io import atomic_write

__all__ = ["PixelSize", "read_pixel_size", "write_tiff", "check_output_suffix"]

#: ``(z, y, x)`` spacing in micrometres; ``None`` where the file does not say.
PixelSize = tuple[float | None, float | None, float | None]

_UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
               "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
               "m": 1e6}
_TIFF_SUFFIXES = (".tif", ".tiff")


def check_output_suffix(path: str | os.PathLike, allowed: tuple[str, ...] = (".tif", ".tiff", ".zarr"),
                        name: str = "out") -> str:
    """Return the lower-case suffix of ``path`` (``.ome.tif`` counts as ``.tif``) or raise.

    Examples
    --------
    >>> from biodatacentric.data.writers import check_output_suffix
    >>> check_output_suffix("pred.TIF"), check_output_suffix("run/pred.ome.zarr")
    ('.tif', '.zarr')
    >>> check_output_suffix("pred.png")
    Traceback (most recent call last):
    ...
    ValueError: out='pred.png' must end in .tif, .tiff or .zarr (TIFF for Fiji and napari, Zarr for large stacks)
    """
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in allowed:
        listed = ", ".join(allowed[:-1]) + (" or " if len(allowed) > 1 else "") + allowed[-1]
        raise ValueError(f"{name}={os.fspath(path)!r} must end in {listed} "
                         "(TIFF for Fiji and napari, Zarr for large stacks)")
    return suffix


def read_pixel_size(path: str | os.PathLike) -> PixelSize:
    """The ``(z, y, x)`` voxel size of a TIFF in micrometres (``None`` where unknown).

    Reads, in order: ImageJ metadata (``spacing`` and ``unit``) with the resolution tags, the
    OME-XML ``PhysicalSizeX/Y/Z``, then the plain ``XResolution``/``YResolution`` tags with
    their ``ResolutionUnit`` (inch or centimetre). A file without any of these (or with the
    default 1 pixel per unit that writers put when they know nothing) gives ``(None, None,
    None)``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from biodatacentric.data.writers import read_pixel_size, write_tiff
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = write_tiff(pathlib.Path(tmp.name) / "pred.tif", np.zeros((2, 8, 8), np.uint8),
    ...                   axes="ZYX", pixel_size=(5.0, 0.994, 0.994))
    >>> [round(v, 3) for v in read_pixel_size(path)]
    [5.0, 0.994, 0.994]
    >>> tmp.cleanup()
    """
    with tifffile.TiffFile(os.fspath(path)) as tf:
        page = tf.pages[0]
        tags = page.tags
        if tf.is_ome and tf.ome_metadata:
            found = _ome_pixel_size(tf.ome_metadata)
            if any(v is not None for v in found):
                return found
        ij = tf.imagej_metadata or {}
        scale = _UNIT_TO_UM.get(str(ij.get("unit", "")).strip().lower()) if ij else None
        y, x = _resolution_um(tags, scale)
        z = None
        if ij and "spacing" in ij and scale is not None:
            z = float(ij["spacing"]) * scale
        return (z, y, x)


def _ome_pixel_size(xml: str) -> PixelSize:
    out = []
    for ax in ("Z", "Y", "X"):
        m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', xml)
        unit = re.search(rf'PhysicalSize{ax}Unit="([^"]+)"', xml)
        scale = _UNIT_TO_UM.get(unit.group(1).strip().lower(), None) if unit else 1.0
        out.append(float(m.group(1)) * scale if m and scale is not None else None)
    return tuple(out)


def _resolution_um(tags: Any, imagej_scale: float | None) -> tuple[float | None, float | None]:
    """(y, x) pixel size in µm from the resolution tags; ``None`` when absent or 1/1."""
    res = []
    for key in ("YResolution", "XResolution"):
        tag = tags.get(key)
        if tag is None:
            return (None, None)
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        res.append(float(num) / float(den) if den else 0.0)
    if any(r <= 0 for r in res):
        return (None, None)
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2
    if imagej_scale is not None:             # ImageJ: pixels per `unit`, ResolutionUnit = none
        per_um = imagej_scale
    elif unit == 2:                          # inch
        per_um = 25400.0
    elif unit == 3:                          # centimetre
        per_um = 10000.0
    else:
        return (None, None)
    if res == [1.0, 1.0] and imagej_scale is None:
        return (None, None)                  # the "unknown" default of most writers
    return (per_um / res[0], per_um / res[1])


def write_tiff(path: str | os.PathLike, array: Any, axes: str = "ZYX", *,
               pixel_size: PixelSize | None = None, overwrite: bool = False) -> Path:
    """Write ``array`` as an ImageJ-compatible TIFF that Fiji and napari open at scale.

    Parameters
    ----------
    path : path
        Ends in ``.tif`` or ``.tiff``. Written atomically (a reader never sees half a file).
    array : array-like
        uint8 / uint16 / float32 data; bool is written as uint8 {0, 1}.
    axes : {"YX", "ZYX", "CYX", "ZCYX"}
        Axis order of ``array`` (C: classes or channels, e.g. probabilities).
    pixel_size : (z, y, x) in µm, optional
        Stored as the resolution tags and ImageJ ``spacing`` with unit µm (``None`` entries
        are left out); pass :func:`read_pixel_size` of the input to keep its scale.
    overwrite : bool
        Replace an existing file (otherwise ``FileExistsError``).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, tifffile
    >>> from biodatacentric.data.writers import write_tiff
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = write_tiff(pathlib.Path(tmp.name) / "labels.tif", np.ones((3, 16, 16), bool), axes="ZYX")
    >>> with tifffile.TiffFile(path) as tf:
    ...     tf.imagej_metadata["images"], tf.series[0].axes, tf.asarray().dtype.name
    (3, 'ZYX', 'uint8')
    >>> tmp.cleanup()
    """
    path = Path(path)
    check_output_suffix(path, _TIFF_SUFFIXES, name="path")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass a file name ending in .tif")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it or choose another name")
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype not in (np.uint8, np.uint16, np.float32, np.int32, np.uint32):
        raise TypeError(f"cannot write dtype {arr.dtype} to {path.name}; use uint8, uint16 or float32")
    axes = axes.upper()
    if axes not in ("YX", "ZYX", "CYX", "ZCYX") or arr.ndim != len(axes):
        raise ValueError(f"axes={axes!r} does not describe an array of shape {arr.shape}; "
                         "use 'YX', 'ZYX', 'CYX' or 'ZCYX'")
    metadata: dict[str, Any] = {"axes": axes}
    kwargs: dict[str, Any] = {}
    if pixel_size is not None:
        z, y, x = pixel_size
        if y and x:
            kwargs["resolution"] = (1.0 / float(x), 1.0 / float(y))
            metadata["unit"] = "um"
        if z:
            metadata["spacing"] = float(z)
            metadata.setdefault("unit", "um")
    if arr.dtype in (np.int32, np.uint32):
        arr = arr.astype(np.float32)         # ImageJ hyperstacks hold 8, 16 or 32-bit float
    atomic_write(path, lambda p: tifffile.imwrite(p, arr, imagej=True, metadata=metadata,
                                                  photometric="minisblack", **kwargs))
    return path
