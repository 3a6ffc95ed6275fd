"""The :class:`Patches` abstraction: a lazy index of 2-D patches with provenance."""

from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from .._params import as_shape2d
from .._validation import check_binary_mask
from ._paths import _expand_paths, _mask_axes, _match_masks, _same_name_groups
from .annotations import _read_annotated, export_patches
from .dataset import PatchDataset
from .normalize import Normalization, as_normalization
from .readers import ArraySource, Source, TiffSource, ZarrSource, _PatchArraySource

__all__ = ["Patches", "Patch", "as_patches", "read_annotations"]

_INDEX_DTYPE = np.dtype([("source", np.int32), ("z", np.int32), ("y", np.int32), ("x", np.int32)])


class Patch(NamedTuple):
    """One patch: normalised image, mask (or None) and where it came from.

    ``source`` is the file path (or array name) and ``z, y, x`` the corner of the patch in it.
    Indexing :class:`Patches` with an int returns a ``Patch``.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Patches
    >>> image = np.arange(64, dtype=np.float32).reshape(8, 8)
    >>> patch = Patches.from_arrays(image, patch_shape=(4, 4), normalize="none")[3]
    >>> patch.image.shape, patch.mask, patch.source, (patch.z, patch.y, patch.x)
    ((4, 4), None, 'array0', (0, 4, 4))
    >>> float(patch.image[0, 0])
    36.0
    """

    image: np.ndarray
    mask: np.ndarray | None
    source: str
    z: int
    y: int
    x: int


def _positions(length: int, size: int, stride: int) -> np.ndarray:
    """Window starts covering ``[0, length)``; the last window is shifted to end at the edge."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return np.asarray(starts, dtype=np.int32)


class Patches:
    """A lazy collection of 2-D patches cut from images and z-stacks, with optional masks.

    Patches hold an index ``(source, z, y, x)`` per patch and read pixels on demand, so
    memory does not grow with the number of stacks. Intensities come out as float32 after a
    per-source normalisation (robust percentiles by default) that is computed once and
    stored. Build them with :meth:`from_tiff`, :meth:`from_arrays` or
    :meth:`read_annotations`; never call the constructor directly.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Patches
    >>> stack = np.random.default_rng(0).random((3, 100, 100)).astype(np.float32)
    >>> p = Patches.from_arrays(stack, axes="ZYX", patch_shape=(64, 64))
    >>> len(p), p.patch_shape
    (12, (64, 64))
    >>> p.images([0, 1]).shape
    (2, 64, 64)
    >>> p[0].source, p[0].z, p[0].y, p[0].x
    ('array0', 0, 0, 0)
    """

    def __init__(self, sources: list[Source], masks: list[Source | None] | None,
                 index: np.ndarray, patch_shape: tuple[int, int]) -> None:
        self._sources = sources
        self._masks = masks if masks is not None and all(m is not None for m in masks) else None
        self._index = index
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tiff(cls, paths_or_glob: Any, axes: str = "ZYX", patch_shape: tuple[int, int] = (224, 224),
                  stride: int | tuple[int, int] | None = None, masks: Any = None,
                  normalize: Any = "percentile", channel: int | None = None,
                  empty_threshold: float | None = None) -> "Patches":
        """Index the patches of TIFF images or stacks without reading their pixels.

        Parameters
        ----------
        paths_or_glob : str, path or list
            A file, a glob pattern such as ``"stacks/*.tif"``, a folder, or a list of these.
        axes : {"YX", "ZYX", "CYX", "CZYX", "ZCYX", "YXS", "YXC", "ZYXS", "ZYXC"}
            Axis order of every file; it must match the files (never guessed). An RGB TIFF
            is ``"YXS"`` (channels last): pick one colour with ``channel``.
        patch_shape : (int, int)
            Patch height and width in pixels.
        stride : int or (int, int), optional
            Step between patches; defaults to ``patch_shape`` (no overlap). The last patch
            of a row or column is shifted to end at the image edge, so every pixel is covered.
        masks : str, path or list, optional
            Mask files paired with the images by file name: a folder, a glob or a list.
        normalize : str, (mean, std) or Normalization
            Per-file intensity normalisation (see :class:`Normalization`).
        channel : int, optional
            Channel to use when ``axes`` contains ``C``.
        empty_threshold : float, optional
            Drop patches whose largest normalised value is at most this (blank patches).
            Reads every patch once at construction.
        """
        norm = as_normalization(normalize)
        paths = _expand_paths(paths_or_glob)
        sources: list[Source] = [TiffSource(p, axes, normalization=norm, channel=channel) for p in paths]
        mask_sources: list[Source | None] | None = None
        if masks is not None:
            mask_paths = _match_masks(paths, masks)
            mask_axes = _mask_axes(axes)
            mask_sources = []
            for src, mp in zip(sources, mask_paths):
                ms = TiffSource(mp, mask_axes, normalization=Normalization("none"))
                if ms.shape != src.shape:
                    raise ValueError(f"mask {mp} has shape {ms.shape} (ZYX) but image {src.name} has "
                                     f"{src.shape}; masks must match their image pixel for pixel")
                mask_sources.append(ms)
        return cls._build(sources, mask_sources, patch_shape, stride, empty_threshold)

    @classmethod
    def from_zarr(cls, paths: Any, axes: str = "ZYX", patch_shape: tuple[int, int] = (224, 224),
                  stride: int | tuple[int, int] | None = None, masks: Any = None,
                  normalize: Any = "percentile", channel: int | None = None, level: int = 0,
                  component: str | None = None, empty_threshold: float | None = None) -> "Patches":
        """Index the patches of Zarr arrays or OME-Zarr images (needs the ``zarr`` extra).

        ``paths`` is a store path, a glob (e.g. ``"plates/*.zarr"``) or a list. For OME-Zarr
        multiscale images ``level`` picks the resolution (0 = full). ``masks`` are Zarr stores
        paired with the images by name (a folder, glob or list). Other parameters as in
        :meth:`from_tiff`.
        """
        norm = as_normalization(normalize)
        items = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
        expanded: list[str] = []
        for item in items:
            if not os.path.exists(item) and any(ch in item for ch in "*?["):
                hits = sorted(_glob.glob(item))
                if not hits:
                    raise FileNotFoundError(f"the pattern {item!r} matches no Zarr stores (and no store has "
                                            "this exact name)")
                expanded.extend(hits)
            else:
                expanded.append(item)
        if not expanded:
            raise ValueError("no Zarr stores given")
        if masks is not None and _same_name_groups(expanded):
            group = _same_name_groups(expanded)[0]
            raise ValueError(f"the Zarr stores {', '.join(group)} share the name {Path(group[0]).name}, so "
                             "masks cannot be paired with them by name; rename the stores")
        sources: list[Source] = [ZarrSource(p, axes, normalization=norm, channel=channel, level=level,
                                            component=component) for p in expanded]
        mask_sources = None
        if masks is not None:
            if isinstance(masks, (str, os.PathLike)) and os.path.isdir(os.fspath(masks)) and \
                    not os.fspath(masks).endswith(".zarr"):
                mask_paths = [os.path.join(os.fspath(masks), Path(p).name) for p in expanded]
            else:
                given = [os.fspath(masks)] if isinstance(masks, (str, os.PathLike)) else [os.fspath(m) for m in masks]
                found = [m for g in given for m in ([g] if os.path.exists(g) else (sorted(_glob.glob(g)) or [g]))]
                if _same_name_groups(found):
                    group = _same_name_groups(found)[0]
                    raise ValueError(f"the mask stores {', '.join(group)} share the name {Path(group[0]).name}; "
                                     "each mask store must be named after its image")
                by_name = {Path(m).name: m for m in found}
                mask_paths = [by_name.get(Path(p).name, "") for p in expanded]
            mask_sources = []
            for src, mp in zip(sources, mask_paths):
                if not mp or not os.path.exists(mp):
                    raise FileNotFoundError(f"no mask store named like {Path(src.path).name}")
                ms = ZarrSource(mp, _mask_axes(axes), normalization=Normalization("none"), level=level,
                                component=component)
                if ms.shape != src.shape:
                    raise ValueError(f"mask {mp} has shape {ms.shape} (ZYX) but image {src.name} has {src.shape}")
                mask_sources.append(ms)
        return cls._build(sources, mask_sources, patch_shape, stride, empty_threshold)

    @classmethod
    def from_arrays(cls, images: Any, axes: str = "YX", patch_shape: tuple[int, int] | None = None,
                    stride: int | tuple[int, int] | None = None, masks: Any = None,
                    normalize: Any = "percentile", channel: int | None = None,
                    names: Sequence[str] | None = None,
                    empty_threshold: float | None = None) -> "Patches":
        """Index the patches of in-memory arrays.

        ``images`` is one array or a list of arrays with the given ``axes``. With
        ``patch_shape=None`` each 2-D slice is one patch (so an ``(n, h, w)`` array of
        patches with ``axes="ZYX"`` gives ``n`` patches). ``masks`` matches ``images``.
        Other parameters are as in :meth:`from_tiff`.
        """
        norm = as_normalization(normalize)
        arrays = [images] if isinstance(images, np.ndarray) else list(images)
        if not arrays:
            raise ValueError("images is empty; pass at least one array")
        if names is None:
            names = [f"array{i}" for i in range(len(arrays))]
        if len(names) != len(arrays):
            raise ValueError(f"{len(names)} names given for {len(arrays)} arrays")
        sources: list[Source] = [ArraySource(a, axes, name=n, normalization=norm, channel=channel)
                                 for a, n in zip(arrays, names)]
        mask_sources = None
        if masks is not None:
            mask_list = [masks] if isinstance(masks, np.ndarray) else list(masks)
            if len(mask_list) != len(arrays):
                raise ValueError(f"{len(mask_list)} masks given for {len(arrays)} images")
            mask_axes = _mask_axes(axes)
            mask_sources = []
            for src, m, n in zip(sources, mask_list, names):
                ms = ArraySource(check_binary_mask(np.asarray(m), name=f"mask of {n}"), mask_axes,
                                 name=f"mask of {n}", normalization=Normalization("none"))
                if ms.shape != src.shape:
                    raise ValueError(f"mask of {n} has shape {np.shape(m)} but the image has "
                                     f"{src.shape} (ZYX); masks must match their image")
                mask_sources.append(ms)
        if patch_shape is None:
            ys = {s.shape[1] for s in sources}
            xs = {s.shape[2] for s in sources}
            if len(ys) != 1 or len(xs) != 1:
                raise ValueError("images differ in size; pass patch_shape")
            patch_shape = (ys.pop(), xs.pop())
        return cls._build(sources, mask_sources, patch_shape, stride, empty_threshold)

    @classmethod
    def _build(cls, sources: list[Source], masks: list[Source | None] | None, patch_shape: Any,
               stride: Any, empty_threshold: float | None) -> "Patches":
        ph, pw = _check_pair(patch_shape, "patch_shape")
        sh, sw = _check_pair(stride if stride is not None else (ph, pw), "stride")
        rows = []
        for i, src in enumerate(sources):
            z, h, w = src.shape
            if ph > h or pw > w:
                raise ValueError(f"patch_shape=({ph}, {pw}) is larger than the image {src.name} "
                                 f"({h}x{w} pixels); use a smaller patch_shape")
            ys, xs = _positions(h, ph, sh), _positions(w, pw, sw)
            zz, yy, xx = np.meshgrid(np.arange(z, dtype=np.int32), ys, xs, indexing="ij")
            block = np.empty(zz.size, dtype=_INDEX_DTYPE)
            block["source"], block["z"], block["y"], block["x"] = i, zz.ravel(), yy.ravel(), xx.ravel()
            rows.append(block)
        index = np.concatenate(rows)
        patches = cls(sources, masks, index, (ph, pw))
        if empty_threshold is not None:
            keep = np.zeros(len(patches), dtype=bool)
            for start, batch in patches._iter_chunks(256):
                keep[start:start + len(batch)] = batch.reshape(len(batch), -1).max(axis=1) > empty_threshold
            if not keep.any():
                raise ValueError(f"every patch is empty under empty_threshold={empty_threshold}; lower it")
            patches = patches[keep]
        return patches

    # ------------------------------------------------------------------ basic protocol
    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (f"Patches(n={len(self)}, patch_shape={self.patch_shape}, sources={self.n_sources}, "
                f"masks={'yes' if self.has_masks else 'no'})")

    def __getitem__(self, key: Any) -> "Patch | Patches":
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"patch index {key} out of range for {n} patches")
            key = int(key) % n
            img = self.images([key])[0]
            mask = self.masks([key])[0] if self.has_masks else None
            src, z, y, x = self.provenance()[key]
            return Patch(img, mask, str(src), int(z), int(y), int(x))
        if isinstance(key, slice):
            sel = self._index[key]
        else:
            arr = np.asarray(key)
            if arr.dtype == bool:
                if arr.shape != (len(self),):
                    raise IndexError(f"boolean index of length {arr.shape} for {len(self)} patches")
            elif arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise IndexError("index Patches with ints, slices, integer arrays or boolean masks")
            sel = self._index[arr.astype(np.int64) if arr.dtype != bool else arr]
        return Patches(self._sources, self._masks, np.ascontiguousarray(sel), self.patch_shape)

    def __iter__(self) -> Iterator[Patch]:
        for i in range(len(self)):
            yield self[i]  # type: ignore[misc]

    @property
    def has_masks(self) -> bool:
        """Whether every patch has a mask."""
        return self._masks is not None

    @property
    def n_sources(self) -> int:
        return len(self._sources)

    @property
    def index(self) -> np.ndarray:
        """The structured index array ``(source, z, y, x)`` (source = position in :attr:`sources`)."""
        return self._index.copy()

    @property
    def sources(self) -> list[str]:
        """Names (file paths) of the sources."""
        return [s.name for s in self._sources]

    def provenance(self) -> np.recarray:
        """Per patch: the original file (or array name) and the ``z, y, x`` of its corner.

        For patches read back from an annotation folder this is the location in the file
        they were exported from, not in the exported patch file.
        """
        origins = [s.origin for s in self._sources]
        src = self._index["source"]
        names = np.array([o[0] for o in origins], dtype=object)[src].astype(str)
        off = np.array([o[1:] for o in origins], dtype=np.int64).reshape(-1, 3)[src]
        return np.rec.fromarrays(
            [names, self._index["z"] + off[:, 0], self._index["y"] + off[:, 1], self._index["x"] + off[:, 2]],
            names=["source", "z", "y", "x"])

    def normalization(self) -> list[dict]:
        """Per source: name, method and the ``offset``/``scale`` applied (computes them if needed)."""
        out = []
        for s in self._sources:
            off, scale, clip = s.norm_params()
            out.append({"source": s.name, **s.normalization.to_dict(), "offset": off, "scale": scale,
                        "clip": clip, "raw_dtype": str(s.dtype)})
        return out

    # ------------------------------------------------------------------ pixel access
    def _gather(self, sel: np.ndarray, which: str) -> np.ndarray:
        ph, pw = self.patch_shape
        out_dtype = np.float32 if which == "image" else np.uint8
        out = np.empty((len(sel), ph, pw), dtype=out_dtype)
        if len(sel) == 0:
            return out
        idx = self._index[sel]
        order = np.lexsort((idx["x"], idx["y"], idx["z"], idx["source"]))
        sources = self._sources if which == "image" else self._masks
        assert sources is not None
        cur_key, cur = None, None
        for j in order:
            s, z, y, x = (int(v) for v in idx[j])
            if (s, z) != cur_key:
                cur_key = (s, z)
                cur = sources[s].read_slice(z)
                if which == "image":
                    off, scale, clip = self._sources[s].norm_params()
            block = cur[y:y + ph, x:x + pw]
            if which == "image":
                o = out[j]
                np.subtract(block, off, out=o, casting="unsafe")
                o *= scale
                if clip:
                    np.clip(o, 0.0, 1.0, out=o)
            else:
                out[j] = check_binary_mask(block, name=f"mask {sources[s].name} z={z}") \
                    if block.max() > 1 else block
        return out

    def _resolve(self, idx: Any) -> np.ndarray:
        if idx is None:
            return np.arange(len(self))
        arr = np.asarray(idx)
        if arr.dtype == bool:
            return np.flatnonzero(arr)
        arr = arr.astype(np.int64).ravel()
        if arr.size and (arr.min() < -len(self) or arr.max() >= len(self)):
            raise IndexError(f"patch indices out of range for {len(self)} patches")
        return arr % max(len(self), 1)

    def images(self, idx: Any = None) -> np.ndarray:
        """Normalised float32 pixels, shape ``(n, h, w)``, for ``idx`` (all patches if None)."""
        return self._gather(self._resolve(idx), "image")

    def masks(self, idx: Any = None) -> np.ndarray:
        """uint8 masks, shape ``(n, h, w)``; raises if the patches have no masks."""
        if not self.has_masks:
            raise ValueError("these patches have no masks; build them with masks=... or read "
                             "annotations with Patches.read_annotations")
        return self._gather(self._resolve(idx), "mask")

    def raw(self, idx: Any = None) -> np.ndarray:
        """Raw pixels in the sources' dtype (all sources must share it), shape ``(n, h, w)``."""
        sel = self._resolve(idx)
        dtypes = {self._sources[int(s)].dtype for s in np.unique(self._index["source"][sel])}
        if len(dtypes) > 1:
            raise ValueError(f"sources differ in dtype ({dtypes}); read them separately")
        ph, pw = self.patch_shape
        out = np.empty((len(sel), ph, pw), dtype=dtypes.pop() if dtypes else np.float32)
        for j, i in enumerate(sel):
            s, z, y, x = (int(v) for v in self._index[i])
            out[j] = self._sources[s].read_slice(z)[y:y + ph, x:x + pw]
        return out

    def _iter_chunks(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield start, self.images(np.arange(start, min(start + batch_size, len(self))))

    def iter_batches(self, batch_size: int = 64, with_masks: bool | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Yield ``(images, masks or None, indices)`` in order, ``batch_size`` patches at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        want = self.has_masks if with_masks is None else with_masks
        for start in range(0, len(self), batch_size):
            sel = np.arange(start, min(start + batch_size, len(self)))
            yield self.images(sel), (self.masks(sel) if want else None), sel

    # ------------------------------------------------------------------ combining
    @staticmethod
    def concat(parts: Sequence["Patches"]) -> "Patches":
        """Concatenate several :class:`Patches` of the same ``patch_shape``."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate")
        shapes = {p.patch_shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate patches of different shapes {sorted(shapes)}")
        sources: list[Source] = []
        masks: list[Source | None] = []
        pos: dict[int, int] = {}
        all_masks = all(p.has_masks for p in parts)
        blocks = []
        for p in parts:
            remap = np.empty(len(p._sources), dtype=np.int32)
            for k, s in enumerate(p._sources):
                if id(s) not in pos:
                    pos[id(s)] = len(sources)
                    sources.append(s)
                    masks.append(p._masks[k] if all_masks else None)  # type: ignore[index]
                remap[k] = pos[id(s)]
            b = p._index.copy()
            b["source"] = remap[b["source"]]
            blocks.append(b)
        return Patches(sources, masks if all_masks else None, np.concatenate(blocks), shapes.pop())

    def with_masks(self, masks: np.ndarray) -> "Patches":
        """A copy whose masks are the given per-patch arrays ``(n, h, w)`` (e.g. predictions).

        The images still come from the original sources; provenance is kept.
        """
        masks = check_binary_mask(np.asarray(masks), name="masks")
        if masks.shape != (len(self), *self.patch_shape):
            raise ValueError(f"masks must have shape {(len(self), *self.patch_shape)}, got {masks.shape}")
        new_sources, new_masks = [], []
        index = np.empty(len(self), dtype=_INDEX_DTYPE)
        for i in range(len(self)):
            s, z, y, x = (int(v) for v in self._index[i])
            new_sources.append(_PatchArraySource(self._sources[s], z, y, x, self.patch_shape))
            new_masks.append(ArraySource(masks[i], "YX", name=f"mask {i}", normalization=Normalization("none")))
            index[i] = (i, 0, 0, 0)
        return Patches(new_sources, new_masks, index, self.patch_shape)

    # ------------------------------------------------------------------ stitching
    def stitch(self, values: np.ndarray, source: int | str = 0, weights: np.ndarray | None = None,
               fill_value: float = np.nan) -> np.ndarray:
        """Put per-patch arrays back into the coordinates of one source, averaging overlaps.

        Parameters
        ----------
        values : array of shape (n, h, w) or (n, c, h, w)
            One array per patch of these Patches (predictions, uncertainty maps ...).
        source : int or str
            Which source (position in :attr:`sources` or its name).
        weights : array of shape (h, w), optional
            Per-pixel blending weights (e.g. a Gaussian window); uniform if omitted.
        fill_value : float
            Value of pixels that no patch covers.

        Returns
        -------
        array of shape (Z, Y, X) or (c, Z, Y, X), float32
        """
        values = np.asarray(values)
        if values.shape[0] != len(self) or values.shape[-2:] != self.patch_shape:
            raise ValueError(f"values must have shape (n={len(self)}, [c,] {self.patch_shape[0]}, "
                             f"{self.patch_shape[1]}), got {values.shape}")
        if isinstance(source, str):
            if source not in self.sources:
                raise KeyError(f"no source named {source!r}")
            source = self.sources.index(source)
        Z, H, W = self._sources[source].shape
        chan = values.shape[1:-2]
        acc = np.zeros((*chan, Z, H, W), dtype=np.float64)
        cnt = np.zeros((Z, H, W), dtype=np.float64)
        w = np.ones(self.patch_shape) if weights is None else np.asarray(weights, dtype=np.float64)
        ph, pw = self.patch_shape
        for i in np.flatnonzero(self._index["source"] == source):
            _, z, y, x = (int(v) for v in self._index[i])
            acc[..., z, y:y + ph, x:x + pw] += values[i] * w
            cnt[z, y:y + ph, x:x + pw] += w
        out = np.full(acc.shape, fill_value, dtype=np.float32)
        covered = cnt > 0
        out[..., covered] = (acc[..., covered] / cnt[covered]).astype(np.float32)
        return out

    # ------------------------------------------------------------------ torch / export
    def torch_dataset(self, augment: Any = None, with_masks: bool | None = None, seed: int = 0):
        """A :class:`torch.utils.data.Dataset` over these patches (see :class:`PatchDataset`)."""
        return PatchDataset(self, augment=augment, with_masks=with_masks, seed=seed)

    def export(self, directory: str | os.PathLike, masks: Any = None, *, on_existing: str = "error",
               mask_origin: str | None = None) -> Path:
        """Write each patch as a TIFF plus a manifest, for annotation in napari or Fiji.

        See :func:`biodatacentric.data.annotations.export_patches` for the folder layout.
        """
        return export_patches(self, directory, masks=masks, on_existing=on_existing, mask_origin=mask_origin)

    @classmethod
    def read_annotations(cls, directory: str | os.PathLike, require_all: bool = False) -> "Patches":
        """Read an annotation folder written by :meth:`export` once masks were painted.

        See :func:`biodatacentric.data.read_annotations`.
        """
        return read_annotations(directory, require_all=require_all)


def _check_pair(value: Any, name: str) -> tuple[int, int]:
    return as_shape2d(value, name, "Patches")


def as_patches(obj: Any, name: str = "patches", need_masks: bool = False) -> Patches:
    """Accept :class:`Patches` or an ``(n, h, w)`` float array (taken as already normalised).

    Raises ``TypeError`` for anything else, and ``ValueError`` when the patches are empty or
    ``need_masks=True`` and they have no masks.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.data import as_patches
    >>> p = as_patches(np.full((5, 16, 16), 0.5, dtype=np.float32))
    >>> len(p), p.patch_shape, p.has_masks
    (5, (16, 16), False)
    >>> float(p.images([0]).max())
    0.5
    """
    if isinstance(obj, Patches):
        p = obj
    elif isinstance(obj, np.ndarray) and obj.ndim == 3:
        p = Patches.from_arrays(obj, axes="ZYX", normalize="none")
    else:
        raise TypeError(f"{name} must be a biodatacentric.Patches or an (n, h, w) array, got "
                        f"{type(obj).__name__}")
    if len(p) == 0:
        raise ValueError(f"{name} is empty")
    if need_masks and not p.has_masks:
        raise ValueError(f"{name} need masks: build them with masks=... or Patches.read_annotations")
    return p


def read_annotations(directory: str | os.PathLike, require_all: bool = False) -> Patches:
    """Return the annotated patches of an export folder as :class:`~biodatacentric.Patches`.

    The manifest is checked against its own checksum first (a hand edit is a
    :class:`ManifestEditedError` naming the patch and field), then every image against the
    content hash in the manifest (an image changed after export is an error), and masks for
    shape and binary values. Patches without a mask are skipped with a warning naming them,
    or raise when ``require_all=True``; files in ``masks/`` that belong to no patch (e.g.
    Fiji's ``Mask of ....tif``) are named in a warning with the name they should have. Each
    returned patch keeps the provenance (original file, z, y, x) and the normalisation of
    the export, so its pixels are identical to those of the exported patch.

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
    sources, mask_sources, patch_shape = _read_annotated(directory, require_all=require_all)
    index = np.zeros(len(sources), dtype=_INDEX_DTYPE)
    index["source"] = np.arange(len(sources))
    return Patches(sources, mask_sources, index, patch_shape)
