"""napari plugin (npe2 manifest ``napari.yaml``): paint the patches of an annotation round.

``pip install 'biodatacentric[napari]'``, then in napari:

* **File > Open Folder** on a folder written by :meth:`Patches.export
  <biodatacentric.Patches.export>` gives two layers: ``patches`` (the exported images as a
  stack, one patch per slice, with each patch's id and provenance -- source file, z, y, x --
  in the layer's ``metadata``) and ``masks`` (a labels layer holding the masks already in
  ``masks/``, zeros elsewhere).
* Paint on ``masks``; **File > Save Selected Layers** onto the same folder (writer
  "biodatacentric masks") saves every painted slice as ``masks/<id>.tif``, the file that
  :func:`~biodatacentric.data.read_annotations` reads back.
* The **Annotation round** widget (Plugins menu) walks the patches: previous / next, and save
  the current patch's mask (also when it is empty: "no vessel here").

The writer follows the library's rules for painted masks: files are written atomically and
placed with a hard link that never replaces a file, a mask already on disk is never
overwritten (a slice that differs from it is refused, naming the file, before anything is
written; an identical one is skipped), and a slice with nothing painted is not saved.
Nothing here imports napari or Qt at module level; ``import biodatacentric`` never imports
this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.annotations import (_find_mask, _read_image, _read_manifest, _read_mask, _sha256, _write_new_tiff,
                                annotation_status)

__all__ = ["get_reader", "read_folder", "write_masks", "RoundWalker", "round_walker_widget"]


def _is_annotation_folder(path: Any) -> bool:
    if isinstance(path, (list, tuple)):
        return len(path) == 1 and _is_annotation_folder(path[0])
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    return p.is_dir() and (p / "manifest.json").is_file() and (p / "images").is_dir()


def get_reader(path: Any) -> Callable[[Any], list] | None:
    """napari reader hook: a reader for an annotation folder, ``None`` for anything else."""
    return read_folder if _is_annotation_folder(path) else None


def _entries(folder: Path) -> list[dict]:
    entries = _read_manifest(folder)["patches"]
    if not entries:
        raise ValueError(f"{folder / 'manifest.json'} lists no patches")
    return entries


def read_folder(path: Any) -> list[tuple]:
    """The layers of an annotation folder: ``[(images, meta, "image"), (masks, meta, "labels")]``.

    Examples
    --------
    >>> import tempfile
    >>> from biodatacentric import Patches, make_vessels
    >>> image, _ = make_vessels((64, 64), dtype="uint8", random_state=0)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = Patches.from_arrays(image, patch_shape=(32, 32)).export(tmp.name)
    >>> (img, img_meta, kind), (lab, _, kind2) = read_folder(folder)
    >>> img.shape, kind, kind2, int(lab.max())
    ((4, 32, 32), 'image', 'labels', 0)
    >>> img_meta["metadata"]["patches"][1]["x"]
    32
    >>> tmp.cleanup()
    """
    folder = Path(path[0] if isinstance(path, (list, tuple)) else path)
    entries = _entries(folder)
    images, masks, prov = [], [], []
    for e in entries:
        img_path = folder / e["image"]
        raw = _read_image(img_path)
        if _sha256(raw) != e["sha256"]:
            raise ValueError(f"{img_path} was changed after export; restore it or re-export the patch")
        images.append(raw)
        mp = _find_mask(folder, e)
        masks.append(_read_mask(mp, raw.shape) if mp is not None else np.zeros(raw.shape, np.uint8))
        prov.append({"id": e["id"], "source": e["source"], "z": int(e["z"]), "y": int(e["y"]), "x": int(e["x"]),
                     "has_mask": mp is not None})
    meta = {"folder": str(folder), "patches": prov}
    return [(np.stack(images), {"name": "patches", "metadata": meta}, "image"),
            (np.stack(masks).astype(np.uint8), {"name": "masks", "metadata": meta, "opacity": 0.5}, "labels")]


def _plan(folder: Path, data: np.ndarray, indices: list[int], save_empty: bool) -> list[tuple[Path, np.ndarray]]:
    entries = _entries(folder)
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if data.shape[0] != len(entries):
        raise ValueError(f"the labels layer has {data.shape[0]} slices but {folder} holds {len(entries)} patches; "
                         "save the 'masks' layer that was opened from this folder")
    todo, refused = [], []
    for i in indices:
        e = entries[i]
        shape = (int(e["height"]), int(e["width"]))
        if tuple(data[i].shape) != shape:
            raise ValueError(f"slice {i} of the labels layer has shape {data[i].shape}; patch {e['id']} is {shape}")
        mask = (data[i] > 0).astype(np.uint8)
        existing = _find_mask(folder, e)
        if existing is not None:
            if not np.array_equal(_read_mask(existing, shape), mask):
                refused.append(str(existing))
            continue
        if mask.any() or save_empty:
            todo.append((folder / e["mask"], mask))
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise FileExistsError(f"{len(refused)} mask(s) already on disk differ from the painted labels and are never "
                              f"overwritten: {shown}; move those files away first to save the new masks "
                              "(nothing was written)")
    return todo


def write_masks(path: str, data: Any, meta: dict | None = None, *, indices: list[int] | None = None,
                save_empty: bool = False) -> list[str]:
    """napari writer hook: save a labels layer (one slice per patch) as ``masks/<id>.tif``.

    ``path`` is the annotation folder (or ``meta["metadata"]["folder"]`` when ``path`` is not
    one). Painted slices without a mask on disk are written (values > 0 become 1); slices
    equal to the mask on disk are skipped; a slice that differs from a mask on disk stops the
    whole save before anything is written. Returns the paths written.

    Examples
    --------
    >>> import tempfile
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.data import read_annotations
    >>> image, mask = make_vessels((64, 64), dtype="uint8", random_state=0)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = Patches.from_arrays(image, patch_shape=(32, 32)).export(tmp.name)
    >>> _, (labels, meta, _) = read_folder(folder)
    >>> labels[0] = mask[:32, :32]                     # a person paints the first patch
    >>> [p.split("/")[-2] for p in write_masks(str(folder), labels, meta)]
    ['masks']
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")            # the three unpainted patches are skipped
    ...     len(read_annotations(folder))
    1
    >>> tmp.cleanup()
    """
    folder = Path(path)
    if not _is_annotation_folder(folder):
        alt = ((meta or {}).get("metadata") or {}).get("folder")
        if alt and _is_annotation_folder(alt):
            folder = Path(alt)
        else:
            raise ValueError(f"{path} is not an annotation folder (no manifest.json and images/); save the "
                             "masks layer onto the folder it was opened from")
    n = len(_entries(folder))
    todo = _plan(folder, data, list(range(n)) if indices is None else list(indices), save_empty)
    written = []
    for target, mask in todo:
        if _write_new_tiff(target, mask):
            written.append(str(target))
    return written


class RoundWalker:
    """The state behind the "Annotation round" widget, usable without Qt.

    ``viewer`` is anything with ``dims.current_step`` / ``dims.set_current_step`` and
    ``layers[name].data`` (a napari ``Viewer``).
    """

    def __init__(self, viewer: Any, folder: str | os.PathLike) -> None:
        self.viewer = viewer
        self.folder = Path(folder)
        self.n = len(_entries(self.folder))
        self.index = 0

    def go(self, index: int) -> int:
        """Show patch ``index`` (clamped to the round); returns the index shown."""
        self.index = int(min(max(index, 0), self.n - 1))
        self.viewer.dims.set_current_step(0, self.index)
        return self.index

    def next(self) -> int:
        return self.go(self.index + 1)

    def previous(self) -> int:
        return self.go(self.index - 1)

    def save(self, layer: str = "masks") -> list[str]:
        """Save the current patch's mask (even an empty one: "no vessel here")."""
        return write_masks(str(self.folder), self.viewer.layers[layer].data, indices=[self.index],
                           save_empty=True)

    def status(self) -> str:
        done = sum(s["has_mask"] for s in annotation_status(self.folder))
        return f"patch {self.index + 1} of {self.n}; {done} masks saved"


def round_walker_widget(napari_viewer: Any) -> Any:
    """napari widget contribution: previous / next / save for the folder opened in the viewer."""
    from magicgui.widgets import Container, Label, PushButton

    folder = None
    for layer in napari_viewer.layers:
        folder = (getattr(layer, "metadata", {}) or {}).get("folder") or folder
    if folder is None:
        raise ValueError("open an annotation folder (File > Open Folder) before starting the round widget")
    walker = RoundWalker(napari_viewer, folder)
    label = Label(value=walker.status())
    prev_b, next_b, save_b = PushButton(text="previous"), PushButton(text="next"), PushButton(text="save mask")

    def refresh(*_: Any) -> None:
        label.value = walker.status()

    prev_b.changed.connect(lambda *_: (walker.previous(), refresh()))
    next_b.changed.connect(lambda *_: (walker.next(), refresh()))
    save_b.changed.connect(lambda *_: (walker.save(), refresh()))
    return Container(widgets=[label, prev_b, next_b, save_b])
