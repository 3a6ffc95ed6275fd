"""Write predictions as OME-NGFF images (OME-Zarr) that other NGFF tools open at scale.

With the optional extra ``pip install 'biodatacentric[ome-zarr]'`` (which installs the
``ngff-zarr`` library with its JSON-schema validator) a ``.zarr`` output becomes an NGFF
image: a Zarr group whose array ``0`` holds the data, with ``multiscales`` metadata (one
level), typed axes (``z``/``y``/``x`` as ``space`` in micrometres, ``c`` as ``channel``) and a
``scale`` coordinate transformation carrying the pixel size of the input when it is known
(1.0 otherwise). The layout is NGFF 0.5 (Zarr format 3) with zarr 3 and NGFF 0.4 with zarr 2.
The data is streamed into the array slice by slice as before; the metadata is checked with
``ngff_zarr.validate`` against the NGFF schema before the folder is published, and any
NGFF reader (``ngff_zarr.from_ngff_zarr``, napari-ome-zarr, Fiji's OME-Zarr readers) opens it.

Without the extra, :func:`write_image_zarr` writes what earlier versions wrote: one plain Zarr
array at the path, with the library's own attributes and no NGFF metadata.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

from .data.readers import _import_zarr
from .parallel import _LeadingAxis, write_zarr, zarr_output

__all__ = ["ome_zarr_available", "ngff_axes", "ngff_attrs", "write_image_zarr"]


def ome_zarr_available() -> bool:
    """Whether the ``ome-zarr`` extra (``ngff-zarr``) is installed: then ``.zarr`` outputs are NGFF images."""
    return importlib.util.find_spec("ngff_zarr") is not None and importlib.util.find_spec("jsonschema") is not None


def ngff_axes(axes: str) -> list[dict]:
    """NGFF axis descriptions for a ``"ZCYX"``-style string.

    Examples
    --------
    >>> ngff_axes("CYX")
    [{'name': 'c', 'type': 'channel'}, {'name': 'y', 'type': 'space', 'unit': 'micrometer'}, {'name': 'x', 'type': 'space', 'unit': 'micrometer'}]
    """
    out = []
    for a in axes.upper():
        if a == "C":
            out.append({"name": "c", "type": "channel"})
        elif a == "T":
            out.append({"name": "t", "type": "time"})
        elif a in "ZYX":
            out.append({"name": a.lower(), "type": "space", "unit": "micrometer"})
        else:
            raise ValueError(f"axis {a!r} of axes={axes!r} has no NGFF type; use letters from TCZYX")
    return out


def _scale(axes: str, pixel_size: Any) -> list[float]:
    z, y, x = pixel_size if pixel_size is not None else (None, None, None)
    size = {"Z": z, "Y": y, "X": x}
    return [float(size[a]) if size.get(a) else 1.0 for a in axes.upper()]


def write_image_zarr(out: Any, shape: tuple, chunks: tuple, dtype: Any, fill: Callable[[Any], Any], *,
                     axes: str, pixel_size: Any = None, attrs: dict | None = None, name: str | None = None,
                     overwrite: bool = False, stack_view: bool = False, ngff: bool | None = None) -> Any:
    """Write a result to a ``.zarr`` path chunk by chunk: an NGFF image when ome-zarr is installed.

    Parameters
    ----------
    out : path or zarr array
        A path is written as ``<out>.partial`` and renamed when complete (see
        :func:`~biodatacentric.parallel.zarr_output`); an open Zarr array is filled in place
        (never NGFF: its layout is the caller's).
    shape, chunks, dtype, fill, stack_view :
        As for :func:`~biodatacentric.parallel.write_zarr`.
    axes : str
        One letter per dimension of ``shape`` (``"ZYX"``, ``"ZCYX"``, ``"CYX"``, ``"YX"``).
    pixel_size : (z, y, x) in micrometres, optional
        ``None`` entries (or no pixel size) are written as a scale of 1.0.
    attrs : dict, optional
        The library's own attributes, stored next to the NGFF metadata.
    name : str, optional
        The image name in ``multiscales``.
    ngff : bool, optional
        ``None`` (default): NGFF when ome-zarr is installed, a plain Zarr array otherwise.
        ``True`` requires ome-zarr.

    Returns
    -------
    zarr array
        The written data (for NGFF, the full-resolution array ``0`` of the image), opened
        read-only.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> def fill(arr):
    ...     arr[0] = 1
    >>> z = write_image_zarr(pathlib.Path(tmp.name) / "mask.zarr", (2, 8, 8), (1, 8, 8), "uint8", fill,
    ...                      axes="ZYX", pixel_size=(2.0, 0.5, 0.5))
    >>> z.shape, int(z[...].sum())
    ((2, 8, 8), 64)
    >>> tmp.cleanup()
    """
    if len(axes) != len(shape):
        raise ValueError(f"axes={axes!r} has {len(axes)} letters but the result has {len(shape)} dimensions")
    if ngff is None:
        ngff = ome_zarr_available() and isinstance(out, (str, os.PathLike))
    if not ngff:
        return write_zarr(out, shape, chunks, dtype, fill, attrs=attrs, overwrite=overwrite,
                          stack_view=stack_view)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError("an NGFF image is written to a path; pass out as a path ending in .zarr")
    try:
        from ngff_zarr import validate
    except ImportError as exc:
        raise ImportError("writing OME-NGFF needs the ome-zarr extra: pip install 'biodatacentric[ome-zarr]'") from exc

    zarr = _import_zarr()
    version = "0.5" if int(zarr.__version__.split(".")[0]) >= 3 else "0.4"
    meta = ngff_attrs(axes, pixel_size, name=name or os.path.basename(os.fspath(out)), version=version)
    validate(meta, version=version, model="image", strict=False)  # before any pixel is written
    with zarr_output(out, {"0": (shape, chunks, dtype)}, overwrite=overwrite) as made:
        arr = made["0"]
        fill(_LeadingAxis(arr) if stack_view else arr)
        root = zarr.open_group(store=arr.store, mode="r+")
        root.attrs.update({**meta, **(attrs or {})})
    return zarr.open_group(os.fspath(out), mode="r")["0"]


def ngff_attrs(axes: str, pixel_size: Any = None, *, name: str = "image", version: str = "0.5") -> dict:
    """The NGFF group attributes of a one-level image (``"0.5"``: under ``"ome"``; ``"0.4"``: top level).

    Examples
    --------
    >>> meta = ngff_attrs("ZYX", (2.0, 0.5, 0.5), name="pred")
    >>> ms = meta["ome"]["multiscales"][0]
    >>> ms["datasets"][0]["coordinateTransformations"]
    [{'type': 'scale', 'scale': [2.0, 0.5, 0.5]}]
    >>> [a["name"] for a in ms["axes"]], meta["ome"]["version"]
    (['z', 'y', 'x'], '0.5')
    """
    if version not in ("0.4", "0.5"):
        raise ValueError(f"version={version!r}: NGFF 0.4 (zarr 2) or 0.5 (zarr 3)")
    ms = {"name": name, "axes": ngff_axes(axes),
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                    "scale": _scale(axes, pixel_size)}]}]}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **ms}]}
    return {"ome": {"version": "0.5", "multiscales": [ms]}}
