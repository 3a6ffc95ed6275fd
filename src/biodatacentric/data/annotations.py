"""Annotation round trip: export patches for a person to paint, read the masks back.

Folder layout written by :func:`export_patches`::

    <dir>/manifest.json        provenance, normalisation and a content hash of every patch
    <dir>/images/<id>.tif      the patch in its raw dtype (uint8/uint16/float32)
    <dir>/masks/<id>.tif       a mask per patch: written only when a starting mask is given
                               (for example the model's prediction), otherwise painted by a person
    <dir>/README.txt           these instructions

To annotate, open ``images/<id>.tif`` in napari or Fiji, paint the vessels (or correct the
starting mask) as a binary mask (0 = background, 1 or 255 = foreground) of the same size,
and save it as ``masks/<id>.tif`` -- the same file name as the image. Then
``Patches.read_annotations(<dir>)`` returns the patches with their masks. Existing masks are
never overwritten by a later export, and every file is written atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .._io import atomic_write, atomic_write_text
from .._validation import check_binary_mask
from .normalize import Normalization
from .readers import ArraySource, Source, TiffSource

__all__ = ["export_patches", "read_annotations", "annotation_status"]

FORMAT = "biodatacentric-annotations"

_README = __doc__.split("To annotate,", 1)[1] if __doc__ else ""


class _PatchArraySource(Source):
    """One patch of another source, read lazily (used by ``Patches.with_masks``)."""

    def __init__(self, parent: Source, z: int, y: int, x: int, patch_shape: tuple[int, int]) -> None:
        super().__init__(parent.normalization)
        self.parent, self.z, self.y, self.x = parent, z, y, x
        self.shape = (1, patch_shape[0], patch_shape[1])
        self.dtype = parent.dtype
        self.name = parent.name
        o = parent.origin
        self.origin = (o[0], o[1] + z, o[2] + y, o[3] + x)

    def _read_raw_slice(self, z: int) -> np.ndarray:
        h, w = self.shape[1:]
        return self.parent.read_slice(self.z)[self.y:self.y + h, self.x:self.x + w]

    def norm_params(self) -> tuple[float, float, bool]:
        return self.parent.norm_params()


def _sha256(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda p: tifffile.imwrite(p, arr, photometric="minisblack", metadata={"axes": "YX"}))


def export_patches(patches: Any, directory: str | os.PathLike, masks: Any = None, *,
                   on_existing: str = "error", mask_origin: str | None = None) -> Path:
    """Write ``patches`` to ``directory`` for annotation (see the module docstring).

    Parameters
    ----------
    patches : Patches
    directory : path
        Created if needed.
    masks : None, True or array of shape (n, h, w)
        Starting masks: ``True`` writes the patches' own masks; an array (e.g. a model's
        prediction) is written so a person corrects it instead of painting from nothing.
    on_existing : {"error", "keep"}
        What to do when ``directory/masks`` already holds masks: ``"error"`` (default) stops
        without touching anything; ``"keep"`` leaves every existing mask as it is and writes
        only the missing ones.
    mask_origin : str, optional
        A word recorded in the manifest for the starting masks (e.g. ``"prediction M0"``).

    Returns
    -------
    Path
        ``directory``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.data import export_patches
    >>> image, mask = make_vessels((64, 64), dtype="uint8", random_state=0)
    >>> patches = Patches.from_arrays(image, masks=mask, patch_shape=(32, 32))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = export_patches(patches, pathlib.Path(tmp.name) / "round1", masks=True)
    >>> len(list((folder / "images").glob("*.tif"))), len(list((folder / "masks").glob("*.tif")))
    (4, 4)
    >>> tmp.cleanup()
    """
    directory = Path(directory)
    if on_existing not in ("error", "keep"):
        raise ValueError(f"on_existing={on_existing!r} must be 'error' or 'keep'")
    mask_dir = directory / "masks"
    existing = sorted(p.name for p in mask_dir.glob("*.tif*")) if mask_dir.is_dir() else []
    if existing and on_existing == "error":
        raise FileExistsError(
            f"{mask_dir} already holds {len(existing)} mask(s) (e.g. {existing[0]}); exporting here "
            "could mix with or replace a person's work. Export to a new folder, or pass "
            "on_existing='keep' to keep every existing mask and add only missing files. Nothing was written.")
    n = len(patches)
    if masks is True:
        masks = patches.masks()
        mask_origin = mask_origin or "patches"
    elif masks is not None:
        masks = check_binary_mask(np.asarray(masks), name="masks")
        if masks.shape != (n, *patches.patch_shape):
            raise ValueError(f"masks must have shape {(n, *patches.patch_shape)}, got {masks.shape}")
        mask_origin = mask_origin or "given"
    prov = patches.provenance()
    norms = patches.normalization()
    src_idx = patches.index["source"]
    (directory / "images").mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    old_entries: dict[str, dict] = {}
    if manifest_path.exists() and on_existing == "keep":
        old_entries = {e["id"]: e for e in _read_manifest(directory).get("patches", [])}
    entries = []
    for i in range(n):
        src = str(prov.source[i])
        z, y, x = int(prov.z[i]), int(prov.y[i]), int(prov.x[i])
        pid = f"{i:05d}_{Path(src).stem}_z{z:03d}_y{y:05d}_x{x:05d}"
        raw = patches.raw([i])[0]
        digest = _sha256(raw)
        img_path = directory / "images" / f"{pid}.tif"
        _write_tiff(img_path, raw)
        norm = norms[int(src_idx[i])]
        entry = {"id": pid, "image": f"images/{pid}.tif", "mask": f"masks/{pid}.tif", "source": src,
                 "z": z, "y": y, "x": x, "height": raw.shape[0], "width": raw.shape[1],
                 "raw_dtype": str(raw.dtype), "sha256": digest,
                 "normalization": {"offset": norm["offset"], "scale": norm["scale"], "clip": norm["clip"],
                                   "method": norm["method"]}}
        if masks is not None:
            mpath = directory / "masks" / f"{pid}.tif"
            if mpath.exists():
                old = old_entries.get(pid, {})
                entry["start_mask"] = old.get("start_mask", "kept existing")
                if "start_mask_sha256" in old:
                    entry["start_mask_sha256"] = old["start_mask_sha256"]
            else:
                _write_tiff(mpath, masks[i].astype(np.uint8))
                entry["start_mask"] = mask_origin
                entry["start_mask_sha256"] = _sha256(masks[i].astype(np.uint8))
        entries.append(entry)
    new_ids = {e["id"] for e in entries}
    entries = [e for k, e in old_entries.items() if k not in new_ids] + entries
    manifest = {"format": FORMAT, "version": 1, "patch_shape": list(patches.patch_shape),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "n_patches": len(entries), "patches": entries}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    atomic_write_text(directory / "README.txt", "To annotate," + _README)
    return directory


def _read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no manifest.json; it was not written by Patches.export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it from a backup or re-export") from exc
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a biodatacentric annotation manifest")
    return manifest


def _find_mask(directory: Path, entry: dict) -> Path | None:
    for cand in (directory / entry["mask"], directory / "masks" / f"{entry['id']}.tiff"):
        if cand.is_file():
            return cand
    return None


def annotation_status(directory: str | os.PathLike) -> list[dict]:
    """Per exported patch: whether a mask exists and whether it differs from the starting mask.

    Returns a list of dicts ``{"id", "has_mask", "edited"}``; ``edited`` is None when the
    patch has no mask or was exported without a starting mask.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np, tifffile
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.data import annotation_status, export_patches
    >>> image, mask = make_vessels((64, 64), dtype="uint8", random_state=0)
    >>> patches = Patches.from_arrays(image, patch_shape=(32, 32))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = export_patches(patches, tmp.name, masks=np.zeros((4, 32, 32), dtype=np.uint8))
    >>> first = annotation_status(folder)[0]["id"]
    >>> tifffile.imwrite(folder / "masks" / f"{first}.tif", mask[:32, :32])  # a person paints
    >>> [s["edited"] for s in annotation_status(folder)]
    [True, False, False, False]
    >>> tmp.cleanup()
    """
    directory = Path(directory)
    out = []
    for e in _read_manifest(directory)["patches"]:
        mp = _find_mask(directory, e)
        edited = None
        if mp is not None and "start_mask_sha256" in e:
            m = check_binary_mask(np.squeeze(tifffile.imread(mp)), name=str(mp))
            edited = _sha256(m.astype(np.uint8)) != e["start_mask_sha256"]
        out.append({"id": e["id"], "has_mask": mp is not None, "edited": edited})
    return out


def read_annotations(directory: str | os.PathLike, require_all: bool = False):
    """Return the annotated patches of an export folder as :class:`~biodatacentric.Patches`.

    Images are checked against the content hash in the manifest (an image changed after
    export is an error), masks for shape and binary values. Patches without a mask are
    skipped with a warning, or raise when ``require_all=True``. Each returned patch keeps
    the provenance (original file, z, y, x) and the normalisation of the export, so its
    pixels are identical to those of the exported patch.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.data import export_patches, read_annotations
    >>> image, mask = make_vessels((64, 64), dtype="uint8", random_state=0)
    >>> patches = Patches.from_arrays(image, masks=mask, patch_shape=(32, 32))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> annotated = read_annotations(export_patches(patches, tmp.name, masks=True))
    >>> len(annotated), annotated.has_masks, int(annotated.provenance().x[1])
    (4, True, 32)
    >>> bool(np.array_equal(annotated.images(), patches.images()))
    True
    >>> tmp.cleanup()
    """
    from .patches import _INDEX_DTYPE, Patches

    directory = Path(directory)
    manifest = _read_manifest(directory)
    entries = manifest["patches"]
    sources, mask_sources, missing = [], [], []
    for e in entries:
        mp = _find_mask(directory, e)
        if mp is None:
            missing.append(e["id"])
            continue
        img_path = directory / e["image"]
        if not img_path.is_file():
            raise FileNotFoundError(f"{img_path} listed in the manifest is missing; re-export the patch")
        raw = tifffile.imread(img_path)
        if _sha256(raw) != e["sha256"]:
            raise ValueError(f"{img_path} differs from the exported patch (content hash mismatch); masks "
                             "must be painted on unchanged images -- re-export it, or restore the file")
        try:
            mask = np.squeeze(tifffile.imread(mp))
        except Exception as exc:
            raise ValueError(f"cannot read mask {mp} ({exc}); save it again as a TIFF") from exc
        if mask.shape != raw.shape:
            raise ValueError(f"mask {mp} has shape {mask.shape} but its image is {raw.shape}; "
                             "paint the mask on the exported image without resizing it")
        mask = check_binary_mask(mask, name=f"mask {mp}")
        norm = e["normalization"]
        src = TiffSource(img_path, "YX", normalization=Normalization("none"),
                         origin=(e["source"], int(e["z"]), int(e["y"]), int(e["x"])))
        src.set_norm_params((norm["offset"], norm["scale"], norm["clip"]))
        sources.append(src)
        mask_sources.append(ArraySource(mask, "YX", name=str(mp), normalization=Normalization("none")))
    if not sources:
        raise FileNotFoundError(f"no masks found in {directory / 'masks'}; paint masks and save each as "
                                "masks/<id>.tif (same name as its image)")
    if missing:
        if require_all:
            raise FileNotFoundError(f"{len(missing)} of {len(entries)} patches have no mask yet "
                                    f"(e.g. {missing[0]}); finish them or pass require_all=False")
        warnings.warn(f"{len(missing)} of {len(entries)} exported patches have no mask yet and were skipped",
                      stacklevel=2)
    index = np.zeros(len(sources), dtype=_INDEX_DTYPE)
    index["source"] = np.arange(len(sources))
    return Patches(sources, mask_sources, index, tuple(manifest["patch_shape"]))
