"""Paths and patterns of image and mask files, and the pairing of masks with images by name.

An existing path is always taken literally (``sample [1].tif`` is a file, not a pattern);
only a path that does not exist is expanded as a glob pattern. Images that share a file name
in different folders are paired with masks by their relative path, or the pairing is refused.
"""

from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Any

def _literal_or_glob(item: str, what: str) -> list[str] | None:
    """``[item]`` when it names an existing path (even with ``*?[`` in its name), the sorted
    matches when it is a glob pattern, None when it is neither."""
    if os.path.exists(item):
        return None
    if any(ch in item for ch in "*?["):
        hits = sorted(_glob.glob(item))
        if not hits:
            raise FileNotFoundError(f"the pattern {item!r} matches no files (and no file has this exact "
                                    f"name); check the folder and the extension (.tif / .tiff) of the {what}")
        return hits
    raise FileNotFoundError(f"{item} does not exist; check the path")


def _expand_paths(paths_or_glob: Any, what: str = "images") -> list[str]:
    """Files, folders (their .tif/.tiff files) and glob patterns; an existing path is taken
    literally, so ``sample [1].tif`` is a file, not a pattern."""
    if isinstance(paths_or_glob, (str, os.PathLike)):
        items = [os.fspath(paths_or_glob)]
    else:
        items = [os.fspath(p) for p in paths_or_glob]
        if not items:
            raise ValueError(f"no {what} given: the list of paths is empty")
    out: list[str] = []
    for item in items:
        hits = _literal_or_glob(item, what)
        if hits is not None:
            out.extend(hits)
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith((".tif", ".tiff")) and not name.startswith(".")
                           and os.path.isfile(os.path.join(item, name)))
            if not found:
                raise FileNotFoundError(f"the folder {item} holds no .tif/.tiff files")
            out.extend(found)
        else:
            out.append(item)
    return out


def _mask_axes(axes: Any) -> Any:
    """The axes of a mask of an image with ``axes``: without the channel (``C`` or RGB ``S``)."""
    return axes.upper().replace("C", "").replace("S", "") if isinstance(axes, str) else axes


def _relative_keys(paths: list[str]) -> list[str]:
    """Each path relative to the deepest folder the paths share, without its extension."""
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath(dirs) if dirs else ""
    return [os.path.splitext(os.path.relpath(os.path.abspath(p), root))[0] for p in paths]


def _same_name_groups(paths: list[str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(Path(p).stem, []).append(p)
    return [g for g in groups.values() if len(g) > 1]


def _match_masks(images: list[str], masks: Any) -> list[str]:
    """Pair each image file with the mask file of the same name.

    Images that share a name (``day1/stack.tif`` and ``day2/stack.tif``) are paired by their
    path relative to the folder they share (``masks/day1/stack.tif``, ``masks/day2/stack.tif``);
    when that is not possible the pairing is refused, since one mask would serve two images.
    """
    clashes = _same_name_groups(images)
    if isinstance(masks, (str, os.PathLike)) and os.path.isdir(os.fspath(masks)):
        folder = os.fspath(masks)
        clashing = {p for g in clashes for p in g}
        rel = {img: key for img, key in zip(images, _relative_keys(images)) if img in clashing}
        out = []
        for img in images:
            key = rel.get(img, Path(img).stem)
            cands = ([os.path.join(folder, Path(img).name)] if img not in rel else []) + \
                [os.path.join(folder, key + ext) for ext in (".tif", ".tiff")]
            found = next((c for c in cands if os.path.isfile(c)), None)
            if found is None:
                if img in rel:
                    group = next(g for g in clashes if img in g)
                    flat = os.path.join(folder, Path(img).name)
                    raise ValueError(
                        f"the images {', '.join(group)} share the file name {Path(img).name}, so a mask in "
                        f"{folder} cannot be paired by name" + (f" ({flat} would serve all of them)"
                                                                if os.path.isfile(flat) else "") +
                        f"; put each mask in a sub-folder that mirrors its image (expected {key}.tif in "
                        f"{folder}) or rename the files")
                raise FileNotFoundError(f"no mask for {img} in {folder}: expected a file named {Path(img).name}")
            out.append(found)
        return out
    mask_paths = _expand_paths(masks, what="masks")
    mask_clashes = _same_name_groups(mask_paths)
    if clashes or mask_clashes:
        img_keys = dict(zip(_relative_keys(images), images))
        by_key = dict(zip(_relative_keys(mask_paths), mask_paths))
        if len(by_key) == len(mask_paths) and all(k in by_key for k in img_keys) and len(img_keys) == len(images):
            return [by_key[k] for k in _relative_keys(images)]
        group = (clashes or mask_clashes)[0]
        what = "images" if clashes else "mask files"
        raise ValueError(
            f"the {what} {', '.join(group)} share the file name {Path(group[0]).name}, so masks cannot be "
            "paired with images by name; give images and masks the same sub-folder layout (for example "
            "images/day1/stack.tif with masks/day1/stack.tif) or rename the files")
    by_name = {Path(m).stem: m for m in mask_paths}
    out = []
    for img in images:
        m = by_name.get(Path(img).stem)
        if m is None:
            raise FileNotFoundError(f"no mask named like {Path(img).name} among the {len(mask_paths)} mask files")
        out.append(m)
    return out
