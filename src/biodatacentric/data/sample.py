"""The bundled sample and a loader for ``images/`` + ``masks/`` folders."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from sklearn.utils import Bunch

from .patches import Patches

__all__ = ["load_sample", "load_folder", "sample_folder", "SAMPLE_CITATION"]

SAMPLE_CITATION = (
    "Holroyd, N. A. et al. tUbeNet: a generalisable deep learning tool for 3D vessel segmentation. "
    "Biology Methods and Protocols (2025), doi:10.1093/biomethods/bpaf087. Data from "
    "https://github.com/natalie11/tUbeNet (MIT License, (c) 2025 Natalie Holroyd).")


def sample_folder() -> Path:
    """Folder of the bundled sample (``images/octa_01.tif`` and ``masks/octa_01.tif``).

    Examples
    --------
    >>> from biodatacentric.data import sample_folder
    >>> folder = sample_folder()
    >>> (folder / "images" / "octa_01.tif").is_file(), (folder / "masks" / "octa_01.tif").is_file()
    (True, True)
    """
    return Path(str(resources.files("biodatacentric.data") / "_sample"))


def load_sample(patch_shape: tuple[int, int] | None = None, stride: Any = None,
                normalize: Any = "percentile") -> Bunch:
    """The bundled real OCT-angiography volume with its manual vessel mask.

    One retinal OCT-A volume of shape (64, 128, 128) (Z, Y, X), uint8, with a binary vessel
    mask (vessel fraction 0.159), from the tUbeNet repository (MIT licence). Cite
    :data:`SAMPLE_CITATION` when you use it.

    Parameters
    ----------
    patch_shape : (int, int), optional
        When given, the result also holds ``patches``: a :class:`~biodatacentric.Patches`
        of every z-slice cut into patches of this shape, with masks.
    stride, normalize
        Passed to :meth:`Patches.from_tiff`.

    Returns
    -------
    Bunch with ``image``, ``mask`` (ndarrays), ``image_path``, ``mask_path``, ``folder``,
    ``citation`` and optionally ``patches``.

    Examples
    --------
    >>> s = load_sample()
    >>> s.image.shape, s.mask.dtype
    ((64, 128, 128), dtype('uint8'))
    """
    folder = sample_folder()
    image_path = folder / "images" / "octa_01.tif"
    mask_path = folder / "masks" / "octa_01.tif"
    out = Bunch(image=tifffile.imread(image_path), mask=tifffile.imread(mask_path),
                image_path=str(image_path), mask_path=str(mask_path), folder=str(folder),
                axes="ZYX", citation=SAMPLE_CITATION)
    if patch_shape is not None:
        out.patches = Patches.from_tiff(str(image_path), axes="ZYX", patch_shape=patch_shape,
                                        stride=stride, masks=str(folder / "masks"), normalize=normalize)
    return out


def load_folder(folder: str | os.PathLike, axes: str = "ZYX", patch_shape: tuple[int, int] = (128, 128),
                stride: Any = None, normalize: Any = "percentile", names: list[str] | None = None,
                require_masks: bool = True, **kwargs: Any):
    """Patches from a folder holding ``images/*.tif`` and ``masks/*.tif`` paired by name.

    ``names`` restricts to the files whose stem is listed (or starts with a listed prefix,
    e.g. ``["burgess2014", "santos2015"]``) -- handy to split by acquisition group.

    Examples
    --------
    >>> import tempfile, pathlib, tifffile
    >>> from biodatacentric import load_folder, make_vessels
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = pathlib.Path(tmp.name)
    >>> (root / "images").mkdir(); (root / "masks").mkdir()
    >>> image, mask = make_vessels((2, 64, 64), dtype="uint8", random_state=0)
    >>> tifffile.imwrite(root / "images" / "stack.tif", image)
    >>> tifffile.imwrite(root / "masks" / "stack.tif", mask)
    >>> patches = load_folder(root, axes="ZYX", patch_shape=(32, 32))
    >>> len(patches), patches.patch_shape, patches.has_masks
    (8, (32, 32), True)
    >>> tmp.cleanup()
    """
    folder = Path(folder)
    img_dir = folder / "images"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{folder} has no images/ folder; expected images/*.tif and masks/*.tif")
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if names is not None:
        files = [p for p in files if any(p.stem == n or p.stem.startswith(n) for n in names)]
    if not files:
        raise FileNotFoundError(f"no .tif images in {img_dir}" + (f" matching {names}" if names else ""))
    mask_dir = folder / "masks"
    masks = str(mask_dir) if mask_dir.is_dir() else None
    if masks is None and require_masks:
        raise FileNotFoundError(f"{folder} has no masks/ folder; pass require_masks=False for images only")
    return Patches.from_tiff([str(p) for p in files], axes=axes, patch_shape=patch_shape, stride=stride,
                             masks=masks, normalize=normalize, **kwargs)


def read_stack(path: str | os.PathLike) -> np.ndarray:
    return tifffile.imread(path)
