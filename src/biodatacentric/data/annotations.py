"""Annotation round trip: export patches for a person to paint, read the masks back.

Folder layout written by :func:`export_patches`::

    <dir>/manifest.json        provenance, normalisation and a content hash of every patch,
                               with a checksum of its own (hand edits are detected)
    <dir>/images/<id>.tif      the patch in its raw dtype (uint8/uint16/float32)
    <dir>/masks/<id>.tif       a mask per patch: written only when a starting mask is given
                               (for example the model's prediction), otherwise painted by a person
    <dir>/README.txt           these instructions

To annotate, open ``images/<id>.tif`` in napari or Fiji, paint the vessels (or correct the
starting mask) as a binary mask (0 = background, 1 or 255 = foreground) of the same size,
and save it as ``masks/<id>.tif`` -- the same file name as the image. Then
``Patches.read_annotations(<dir>)`` returns the patches with their masks. Existing masks are
never overwritten by a later export, an image that has a mask is never replaced, and every
file is written atomically.

A patch id reads ``<n>_<file stem>-<tag>_z<z>_y<y>_x<x>``: its position in the export, the
name of its source file, an 8-hex tag of the source's full path (so ``day1/stack.tif`` and
``day2/stack.tif`` get different ids), and the corner of the patch in the source.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
import tifffile

from .._io import atomic_write_text
from .._validation import check_binary_mask
from ._manifest import FORMAT, ManifestEditedError, verify, write_manifest
from .normalize import Normalization
from .readers import ArraySource, TiffSource

if TYPE_CHECKING:  # only for type hints: patches.py imports this module
    from .patches import Patches

__all__ = ["export_patches", "annotation_status", "ManifestEditedError",
           "AnnotationFolderWarning"]

_README = __doc__.split("To annotate,", 1)[1] if __doc__ else ""


def _sha256(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _write_new_tiff(path: Path, arr: np.ndarray) -> bool:
    """Write ``arr`` to ``path`` atomically unless ``path`` exists; False when it did.

    The finished temporary file is hard-linked into place, which fails instead of replacing
    a file someone saved there in the meantime (a mask painted while the export runs).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, arr, photometric="minisblack", metadata={"axes": "YX"})
        os.chmod(tmp, 0o666 & ~_UMASK)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: check, then rename
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()




class AnnotationFolderWarning(UserWarning):
    """Something in an annotation folder was skipped: a mask file no patch owns, or a patch
    without a mask."""


def _source_key(src: str) -> str:
    """What identifies a source across exports: its resolved path, or its name for an array."""
    try:
        if os.path.exists(src):
            return str(Path(src).resolve())
    except (OSError, ValueError):
        pass
    return src


def _patch_id(i: int, src: str, z: int, y: int, x: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(src).stem).strip("_") or "source"
    tag = hashlib.sha256(_source_key(src).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{i:05d}_{stem}-{tag}_z{z:03d}_y{y:05d}_x{x:05d}"


def _check_folder(directory: Path, what: str) -> None:
    """A clear error when ``directory`` or one of its sub-folders is a file."""
    for d in (directory, directory / "images", directory / "masks"):
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(
                f"{d} is a file, not a folder; {what} needs a folder there -- pass another path "
                "(nothing was written)")


def _check_writable(directory: Path) -> None:
    """Create ``directory/images`` and probe it with a temporary file before writing anything."""
    try:
        (directory / "images").mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=directory / "images")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"cannot write into {directory} ({exc.strerror or exc}); export to a folder you can write to "
            "(nothing was written)") from exc


def export_patches(patches: Patches, directory: str | os.PathLike, masks: Any = None, *,
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

    Raises
    ------
    FileExistsError
        When ``directory/masks`` holds masks and ``on_existing="error"``, or when a patch
        would replace an existing image with other pixels or from another source (nothing
        is written then). A patch exported again with the same pixels reuses its entry.
    NotADirectoryError, PermissionError
        When ``directory`` is a file or cannot be written.

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
    >>> sorted(p.name for p in (folder / "images").iterdir())[1][:15]
    '00001_array0-97'
    >>> tmp.cleanup()
    """
    directory = Path(directory)
    if on_existing not in ("error", "keep"):
        raise ValueError(f"on_existing={on_existing!r} must be 'error' or 'keep'")
    _check_folder(directory, "export")
    n = len(patches)
    if n == 0:
        raise ValueError(f"nothing to export to {directory}: the patches are empty (0 patches selected); "
                         "check the selection")
    mask_dir = directory / "masks"
    existing = sorted(p.name for p in mask_dir.glob("*.tif*")) if mask_dir.is_dir() else []
    if existing and on_existing == "error":
        raise FileExistsError(
            f"{mask_dir} already holds {len(existing)} mask(s) (e.g. {existing[0]}); exporting here "
            "could mix with or replace a person's work. Export to a new folder, or pass "
            "on_existing='keep' to keep every existing mask and add only missing files. Nothing was written.")
    if masks is True:
        masks = patches.masks()
        mask_origin = mask_origin or "patches"
    elif masks is not None:
        masks = check_binary_mask(np.asarray(masks), name="masks")
        if masks.shape != (n, *patches.patch_shape):
            raise ValueError(f"masks must have shape {(n, *patches.patch_shape)}, got {masks.shape}")
        mask_origin = mask_origin or "given"
    manifest_path = directory / "manifest.json"
    old = _read_manifest(directory) if manifest_path.exists() else None
    if old is not None and [int(v) for v in old.get("patch_shape", [])] != list(patches.patch_shape):
        raise ValueError(f"{manifest_path} lists patches of shape {tuple(old.get('patch_shape', ()))} but these "
                         f"are {patches.patch_shape}; export to a new folder")
    old_entries: dict[str, dict] = {e["id"]: e for e in (old or {}).get("patches", [])}
    plan = _plan_export(patches, directory, old_entries)
    _check_writable(directory)

    norms = patches.normalization()
    src_idx = patches.index["source"]
    prov = patches.provenance()
    entries: list[dict] = []
    seen: set[str] = set()
    for i, (pid, reuse) in enumerate(plan):
        if pid in seen:  # the same patch twice in one export: one entry
            continue
        seen.add(pid)
        raw = patches.raw([i])[0]
        img_path = directory / "images" / f"{pid}.tif"
        if reuse is not None:
            entry = {k: v for k, v in reuse.items() if k != "check"}
        else:
            src, z, y, x = str(prov.source[i]), int(prov.z[i]), int(prov.y[i]), int(prov.x[i])
            norm = norms[int(src_idx[i])]
            entry = {"id": pid, "image": f"images/{pid}.tif", "mask": f"masks/{pid}.tif", "source": src,
                     "z": z, "y": y, "x": x, "height": raw.shape[0], "width": raw.shape[1],
                     "raw_dtype": str(raw.dtype), "sha256": _sha256(raw),
                     "normalization": {"offset": norm["offset"], "scale": norm["scale"], "clip": norm["clip"],
                                       "method": norm["method"]}}
        if not _write_new_tiff(img_path, raw) and _sha256(tifffile.imread(img_path)) != _sha256(raw):
            raise FileExistsError(f"{img_path} appeared during the export with other pixels than the patch "
                                  f"{pid}; it was left as it is -- export to a new folder")
        if masks is not None:
            if _find_mask(directory, entry) is None and \
                    _write_new_tiff(directory / entry["mask"], masks[i].astype(np.uint8)):
                entry["start_mask"] = mask_origin
                entry["start_mask_sha256"] = _sha256(masks[i].astype(np.uint8))
            else:
                entry.setdefault("start_mask", "kept existing")
        entries.append(entry)
    kept = [{k: v for k, v in e.items() if k != "check"} for k, e in old_entries.items() if k not in seen]
    entries = kept + entries
    manifest = {"format": FORMAT, "version": 2, "patch_shape": list(patches.patch_shape),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "n_patches": len(entries), "patches": entries}
    write_manifest(manifest_path, manifest)
    atomic_write_text(directory / "README.txt", "To annotate," + _README)
    return directory


def _plan_export(patches: Patches, directory: Path, old_entries: dict[str, dict]) -> list[tuple[str, dict | None]]:
    """Per patch: its id and the existing entry it reuses (same source, place and pixels), or None.

    Raises before anything is written when a patch would replace an existing image with other
    pixels or one from another source: that image may have a mask, painted on it.
    """
    prov = patches.provenance()
    by_place: dict[tuple, dict] = {}
    for e in old_entries.values():
        by_place.setdefault((_source_key(str(e.get("source"))), e.get("z"), e.get("y"), e.get("x"),
                             e.get("sha256")), e)
    plan: list[tuple[str, dict | None]] = []
    conflicts: list[str] = []
    for i in range(len(patches)):
        src, z, y, x = str(prov.source[i]), int(prov.z[i]), int(prov.y[i]), int(prov.x[i])
        digest = _sha256(patches.raw([i])[0])
        reuse = by_place.get((_source_key(src), z, y, x, digest))
        if reuse is not None:
            path = directory / str(reuse.get("image"))
            if path.is_file() and _file_digest(path) != digest:
                conflicts.append(f"{reuse['id']} ({path.name} was changed after export and is left as it is)")
            plan.append((reuse["id"], reuse))
            continue
        pid = _patch_id(i, src, z, y, x)
        img_path = directory / "images" / f"{pid}.tif"
        old = old_entries.get(pid)
        has_mask = _find_mask(directory, {"id": pid, "mask": f"masks/{pid}.tif"}) is not None
        if old is not None:
            if old.get("sha256") != digest or _source_key(str(old.get("source"))) != _source_key(src):
                conflicts.append(f"{pid} (exported from {old.get('source')} z={old.get('z')}, now from {src} "
                                 f"z={z}{', and it has a mask' if has_mask else ''})")
        elif img_path.exists():
            if _file_digest(img_path) != digest:
                conflicts.append(f"{pid} (images/{pid}.tif is not listed in the manifest and holds other "
                                 f"pixels than the patch from {src} z={z}"
                                 f"{', and it has a mask' if has_mask else ''})")
        plan.append((pid, None))
    if conflicts:
        shown = "; ".join(conflicts[:5]) + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        raise FileExistsError(
            f"exporting into {directory} would replace existing images with different ones, which could "
            f"pair a painted mask with the wrong image: {shown}. Export to a new folder. Nothing was written.")
    return plan


def _file_digest(path: Path) -> str | None:
    """The content hash of a TIFF's pixels, or None when it cannot be read."""
    try:
        return _sha256(tifffile.imread(path))
    except Exception:
        return None


def _read_manifest(directory: Path) -> dict:
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not an annotation folder; pass the folder that "
                                 "Patches.export wrote (it holds manifest.json, images/ and masks/)")
    path = directory / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no manifest.json; it was not written by Patches.export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it from a backup or re-export") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a biodatacentric annotation manifest")
    verify(manifest, path)
    return manifest


def _find_mask(directory: Path, entry: dict) -> Path | None:
    cands = [c for c in (directory / entry["mask"], directory / "masks" / f"{entry['id']}.tiff") if c.is_file()]
    if len(cands) > 1:
        raise ValueError(f"patch {entry['id']} has two masks, {cands[0]} and {cands[1]}; keep one and "
                         "delete (or move away) the other")
    return cands[0] if cands else None


_IGNORED = {"thumbs.db", "desktop.ini"}


def _warn_unknown_masks(directory: Path, entries: list[dict]) -> None:
    """Warn about files in ``masks/`` that belong to no patch, with the name each should have."""
    mask_dir = directory / "masks"
    if not mask_dir.is_dir():
        return
    ids = [e["id"] for e in entries]
    known = {Path(e["mask"]).name for e in entries} | {f"{i}.tiff" for i in ids}
    unknown = sorted(p for p in mask_dir.iterdir()
                     if p.name not in known and not p.name.startswith(".") and p.name.lower() not in _IGNORED)
    for p in unknown:
        warnings.warn(f"{p} belongs to no exported patch and is ignored; {_suggest_name(p, ids)}",
                      AnnotationFolderWarning, stacklevel=3)


def _suggest_name(path: Path, ids: list[str]) -> str:
    stem = path.stem if path.suffix.lower() in (".tif", ".tiff") else path.name
    hits = [i for i in ids if i in path.name]
    if not hits:
        lead = re.search(r"\d+", stem)
        if lead:
            hits = [i for i in ids if i.split("_", 1)[0] == lead.group(0).zfill(5)[-5:]]
    fmt = "" if path.suffix.lower() in (".tif", ".tiff") else " (as a TIFF)"
    if len(hits) == 1:
        return f"if it is the mask of images/{hits[0]}.tif, save it{fmt} as masks/{hits[0]}.tif"
    return (f"save each mask{fmt} as masks/<id>.tif, with the file name of its image in images/ "
            f"(for example masks/{ids[0]}.tif)")


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
            m = _read_mask(mp, (int(e["height"]), int(e["width"])))
            edited = _sha256(m) != e["start_mask_sha256"]
        out.append({"id": e["id"], "has_mask": mp is not None, "edited": edited})
    return out


def _read_mask(mp: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        mask = np.squeeze(tifffile.imread(mp))
    except Exception as exc:
        raise ValueError(f"cannot read mask {mp} ({exc}); save it again as a TIFF") from exc
    if mask.size == 0:
        raise ValueError(f"cannot read mask {mp}: it holds no pixels (the file is empty, corrupt or "
                         "truncated); save it again as a TIFF")
    if mask.shape != tuple(shape):
        raise ValueError(f"mask {mp} has shape {mask.shape} but its image is {tuple(shape)}; "
                         "paint the mask on the exported image without resizing or cropping it")
    return check_binary_mask(mask, name=f"mask {mp}").astype(np.uint8, copy=False)


def _read_image(img_path: Path) -> np.ndarray:
    if not img_path.is_file():
        raise FileNotFoundError(f"{img_path} listed in the manifest is missing; restore it or re-export the patch")
    try:
        return tifffile.imread(img_path)
    except Exception as exc:
        raise ValueError(f"cannot read {img_path} ({exc}); the exported image is corrupt or truncated -- "
                         "restore it or re-export the patch") from exc


def _read_annotated(directory: str | os.PathLike, require_all: bool = False) -> tuple[list, list, tuple[int, int]]:
    """The checked image and mask sources of an annotation folder and its patch shape.

    :func:`biodatacentric.data.read_annotations` turns them into :class:`~biodatacentric.Patches`
    (this module sits below ``patches.py`` and never imports it).
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    entries = manifest["patches"]
    if not entries:
        raise ValueError(f"{directory / 'manifest.json'} lists no patches; export patches into the folder first")
    _warn_unknown_masks(directory, entries)
    sources, mask_sources, missing = [], [], []
    for e in entries:
        mp = _find_mask(directory, e)
        if mp is None:
            missing.append(e["id"])
            continue
        img_path = directory / e["image"]
        raw = _read_image(img_path)
        if _sha256(raw) != e["sha256"]:
            raise ValueError(f"{img_path} was changed after export (its content hash no longer matches the "
                             "manifest, which is intact); masks must be painted on unchanged images -- "
                             "restore the file, or re-export the patch")
        mask = _read_mask(mp, raw.shape)
        norm = e["normalization"]
        src = TiffSource(img_path, "YX", normalization=Normalization("none"),
                         origin=(e["source"], int(e["z"]), int(e["y"]), int(e["x"])))
        src.set_norm_params((norm["offset"], norm["scale"], norm["clip"]))
        sources.append(src)
        mask_sources.append(ArraySource(mask, "YX", name=str(mp), normalization=Normalization("none")))
    if not sources:
        raise FileNotFoundError(f"no masks found in {directory / 'masks'} for the {len(entries)} exported "
                                "patches; paint masks and save each as masks/<id>.tif (same name as its image)")
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        if require_all:
            raise FileNotFoundError(f"{len(missing)} of {len(entries)} patches have no mask yet: {shown}; "
                                    "paint them (masks/<id>.tif) or pass require_all=False")
        warnings.warn(f"{len(missing)} of {len(entries)} exported patches have no mask yet and were skipped: "
                      f"{shown}", AnnotationFolderWarning, stacklevel=3)
    return sources, mask_sources, tuple(manifest["patch_shape"])
