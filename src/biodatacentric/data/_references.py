"""Annotated references of a quality monitor: a Patches with masks or an (images, masks) pair."""

from __future__ import annotations

import numpy as np

from .._validation import check_binary_mask
from .patches import Patches


def _as_references(references: Patches | tuple[np.ndarray, np.ndarray], *, name_by: str = "patch"
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reference images (float32), binary masks (uint8), both ``(n, h, w)``, and a source name each.

    For a Patches the name is the patch's file and ``z, y, x`` (``name_by="patch"``) or its file
    alone (``name_by="file"``, for grouping references by stack); arrays are ``reference:<i>``.
    """
    if isinstance(references, Patches):
        if not references.has_masks:
            raise ValueError("references need masks: build the Patches with masks=... or read an "
                             "annotation folder with Patches.read_annotations")
        if len(references) == 0:
            raise ValueError("references is empty")
        images = references.images()
        masks = references.masks()
        prov = references.provenance()
        sources = ([str(s) for s in prov.source] if name_by == "file"
                   else [f"{s}:{z}:{y}:{x}" for s, z, y, x in zip(prov.source, prov.z, prov.y, prov.x)])
    elif isinstance(references, (tuple, list)) and len(references) == 2:
        images = np.asarray(references[0])
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or not np.issubdtype(images.dtype, np.number):
            raise ValueError(f"reference images must be a numeric (n, h, w) array, got shape {images.shape}")
        masks = np.asarray(references[1])
        if masks.ndim == 2:
            masks = masks[None]
        masks = check_binary_mask(masks, name="reference masks")
        if masks.shape != images.shape:
            raise ValueError(f"reference masks have shape {masks.shape} but the images have {images.shape}")
        sources = [f"reference:{i}" for i in range(len(images))]
    else:
        raise TypeError("references must be a Patches with masks or an (images, masks) pair of (n, h, w) arrays")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if len(images) == 0:
        raise ValueError("references is empty")
    if not np.all(np.isfinite(images)):
        raise ValueError("reference images hold NaN or inf values")
    if min(images.shape[1:]) < 2:
        raise ValueError(f"references of {images.shape[1]}x{images.shape[2]} pixels are too small")
    return images, np.ascontiguousarray(masks, dtype=np.uint8), sources
