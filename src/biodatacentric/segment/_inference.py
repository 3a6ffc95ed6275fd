"""Whole-stack inference of :class:`~biodatacentric.TransUNetSegmenter`: blended sliding
windows over slices or stacks (in memory, TIFF or Zarr output), and many stacks at once
(optionally on a Dask cluster). The segmenter's public methods delegate here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_axes
from ..data.normalize import as_normalization
from ..data.readers import ArraySource
from ..ngff import write_image_zarr
from ..data.writers import check_output_suffix, read_pixel_size, write_tiff
from ..parallel import map_items, open_source, output_name, resolve_client, worker_copy
from .sliding import sliding_window_predict

__all__: list[str] = []


def predict_image(seg: Any, image: Any, axes: str = "YX", overlap: float = 0.5, blend: str = "gaussian",
                  batch_size: int | None = None, return_proba: bool = False, normalize: Any = "percentile",
                  progress: bool | None = None, out: Any = None, overwrite: bool = False) -> Any:
    """The work of :meth:`TransUNetSegmenter.predict_image` (see there)."""
    seg._check_is_fitted()
    suffix = None
    if isinstance(out, (str, os.PathLike)):
        suffix = check_output_suffix(out)
        if Path(out).exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it or choose another name")
    if isinstance(image, (str, os.PathLike)):  # a file, read lazily slice by slice

        axes = check_axes(axes, source=str(image))
        if axes not in ("YX", "ZYX"):
            raise ValueError(f"axes={axes!r}: predict_image takes a single-channel image ('YX') or stack ('ZYX')")
        src = open_source(image, axes, as_normalization(normalize))
    else:
        arr = np.asarray(image) if not isinstance(image, np.ndarray) else image
        axes = check_axes(axes, arr.ndim, source="image")
        if axes not in ("YX", "ZYX"):
            raise ValueError(f"axes={axes!r}: predict_image takes a single-channel image ('YX') or stack ('ZYX')")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"image must be numeric, got dtype {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"image is empty (shape {arr.shape})")
        src = ArraySource(arr, axes, name="image", normalization=as_normalization(normalize))
    off, scale, clip = src.norm_params()
    Z, H, W = src.shape

    def read(z: int) -> np.ndarray:
        sl = np.asarray(src.array[z] if isinstance(src, ArraySource) else src.read_slice(z), dtype=np.float32)
        if not np.all(np.isfinite(sl)):
            raise ValueError(f"image slice {z} holds NaN or inf; repair or mask those pixels first")
        sl = (sl - np.float32(off)) * np.float32(scale)
        return np.clip(sl, 0.0, 1.0, out=sl) if clip else sl

    n_classes = seg._n_classes_out()

    def run(target: Any = None) -> Any:
        return sliding_window_predict(read, Z, (H, W), seg._window_proba, n_classes,
                                      tuple(seg.patch_shape_), overlap=overlap, blend=blend,
                                      batch_size=int(batch_size or max(seg.batch_size, 16)),
                                      return_proba=return_proba, progress=progress, out=target)

    if out is None or suffix in (".tif", ".tiff"):
        res = run()
        res = res[0] if axes == "YX" else res
        if out is not None:
            pixel_size = None
            if isinstance(image, (str, os.PathLike)) and Path(image).suffix.lower() in (".tif", ".tiff"):
                pixel_size = read_pixel_size(image)
            write_tiff(out, res, axes=("C" if return_proba else "") + "YX" if axes == "YX"
                       else ("ZCYX" if return_proba else "ZYX"), pixel_size=pixel_size, overwrite=True)
        return res

    per_slice = (n_classes, H, W) if return_proba else (H, W)
    shape = per_slice if axes == "YX" else (Z, *per_slice)
    chunks = per_slice if axes == "YX" else (1, *per_slice)
    attrs = {"biodatacentric": {"content": "probabilities" if return_proba else "labels",
                                "axes": ("C" if return_proba else "") + "YX" if axes == "YX"
                                else ("ZCYX" if return_proba else "ZYX"),
                                "source": str(src.name)}}
    tif_in = isinstance(image, (str, os.PathLike)) and Path(image).suffix.lower() in (".tif", ".tiff")
    return write_image_zarr(out, shape, chunks, np.float32 if return_proba else np.uint8, run, attrs=attrs,
                            axes=attrs["biodatacentric"]["axes"], overwrite=overwrite, stack_view=axes == "YX",
                            pixel_size=read_pixel_size(image) if tif_in else None)


def predict_files(seg: Any, images: Any, axes: str = "ZYX", out: Any = None, *, client: Any = None,
                  return_proba: bool = False, overwrite: bool = False, **kwargs: Any) -> list:
    """The work of :meth:`TransUNetSegmenter.predict_files` (see there)."""
    seg._check_is_fitted()
    items = [images] if isinstance(images, (str, os.PathLike, np.ndarray)) else list(images)
    if not items:
        raise ValueError("images is empty; pass at least one path or array")
    unknown = sorted(set(kwargs) - {"overlap", "blend", "batch_size", "normalize", "progress"})
    if unknown:
        raise TypeError(f"predict_files got unexpected keyword arguments {unknown}")
    targets: list[str | None] = [None] * len(items)
    if out is not None:
        names = [output_name(item, i) for i, item in enumerate(items)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"inputs {dup} would write to the same output name; rename the files")
        targets = [os.path.join(os.fspath(out), f"{n}.zarr") for n in names]
        os.makedirs(os.fspath(out), exist_ok=True)
    todo = [i for i, t in enumerate(targets) if t is None or overwrite or not os.path.exists(t)]
    dask_client = resolve_client(client)
    est = worker_copy(seg, precision=seg._runtime()[1]) if dask_client is not None else seg
    results = map_items(est._predict_one, [(items[i], targets[i]) for i in todo], client=dask_client or False,
                        axes=axes, return_proba=return_proba, overwrite=overwrite, **kwargs)
    done = list(targets)
    for i, res in zip(todo, results):
        done[i] = res
    return done
