"""Lazy pixel sources: TIFF files (memory-mapped or page-cached) and in-memory arrays.

A source is one 2-D image or z-stack seen as ``(Z, Y, X)``; ``read_slice(z)`` returns the
raw 2-D slice in its on-disk dtype. Compressed TIFF pages are decoded once and kept in a
process-wide cache bounded in bytes, so reading the patches of a slice in order decodes
the page once, and memory does not grow with the number of files.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .._validation import check_axes
from .normalize import Normalization

__all__ = ["Source", "TiffSource", "ArraySource", "ZarrSource", "slice_cache", "set_cache_bytes"]

_CHANNEL_LAST = ("YXC", "YXS", "ZYXC", "ZYXS")

_DEFAULT_CACHE_BYTES = int(os.environ.get("BIODATACENTRIC_CACHE_MB", "256")) * 2**20
_MAX_OPEN_FILES = 32


class _LRU:
    """A thread-safe LRU mapping bounded by the total bytes of its values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: np.ndarray) -> None:
        with self._lock:
            if key in self._data:
                return
            self._data[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._data) > 1:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


slice_cache = _LRU(_DEFAULT_CACHE_BYTES)


def set_cache_bytes(max_bytes: int) -> None:
    """Set the byte budget of the decoded-slice cache shared by all TIFF sources.

    The default is 256 MiB (or ``BIODATACENTRIC_CACHE_MB`` from the environment); the oldest
    slices are dropped first when the budget is exceeded.

    Examples
    --------
    >>> from biodatacentric.data import set_cache_bytes
    >>> from biodatacentric.data.readers import slice_cache
    >>> previous = slice_cache.max_bytes
    >>> set_cache_bytes(64 * 2**20)
    >>> slice_cache.max_bytes
    67108864
    >>> set_cache_bytes(previous)
    """
    slice_cache.max_bytes = int(max_bytes)


class _OpenFiles:
    """A small per-process pool of open :class:`tifffile.TiffFile` handles."""

    def __init__(self) -> None:
        self._files: OrderedDict[tuple[int, str], tifffile.TiffFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> tifffile.TiffFile:
        key = (os.getpid(), path)
        with self._lock:
            tf = self._files.get(key)
            if tf is not None:
                self._files.move_to_end(key)
                return tf
            tf = tifffile.TiffFile(path)
            self._files[key] = tf
            while len(self._files) > _MAX_OPEN_FILES:
                _, old = self._files.popitem(last=False)
                try:
                    old.close()
                except Exception:
                    pass
            return tf


_open_files = _OpenFiles()


class Source:
    """One image or stack as ``(Z, Y, X)`` with its normalisation.

    Subclasses set ``shape``, ``dtype``, ``name`` and ``origin`` and implement
    ``_read_raw_slice(z)``; :meth:`read_slice` and :meth:`norm_params` come for free.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Normalization
    >>> from biodatacentric.data.readers import Source
    >>> class Ramp(Source):
    ...     shape, dtype, name, origin = (2, 4, 4), np.dtype("float32"), "ramp", ("ramp", 0, 0, 0)
    ...     def _read_raw_slice(self, z):
    ...         return np.full((4, 4), z, dtype=np.float32)
    >>> src = Ramp(Normalization("minmax"))
    >>> src.read_slice(1).shape, src.norm_params()
    ((4, 4), (0.0, 1.0, True))
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    name: str
    origin: tuple[str, int, int, int]

    def __init__(self, normalization: Normalization) -> None:
        self.normalization = normalization
        self._norm_params: tuple[float, float, bool] | None = None
        self._lock = threading.Lock()

    # -- to implement
    def _read_raw_slice(self, z: int) -> np.ndarray:
        raise NotImplementedError

    # -- public
    def read_slice(self, z: int) -> np.ndarray:
        """Raw slice ``z`` in the source's dtype, checked for NaN/inf."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"z={z} outside [0, {self.shape[0]}) in {self.name}")
        arr = self._read_raw_slice(z)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{self.name}: slice z={z} holds NaN or inf pixels; repair the file (for example "
                "replace them with the background value) before building patches")
        return arr

    def norm_params(self) -> tuple[float, float, bool]:
        """``(offset, scale, clip)``, computed from the data on first use."""
        if self._norm_params is None:
            with self._lock:
                if self._norm_params is None:
                    if self.normalization.method in ("none", "meanstd"):
                        sample = np.zeros(1)
                    else:
                        zs = np.unique(np.linspace(0, self.shape[0] - 1, min(self.shape[0], 16)).astype(int))
                        sample = np.concatenate([self.read_slice(int(z)).ravel() for z in zs])
                    self._norm_params = self.normalization.compute(sample, source=self.name)
        return self._norm_params

    def set_norm_params(self, params: tuple[float, float, bool]) -> None:
        self._norm_params = (float(params[0]), float(params[1]), bool(params[2]))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class ArraySource(Source):
    """An in-memory (or memory-mapped) array seen as ``(Z, Y, X)``.

    ``axes`` names the axes of ``array``; with a ``C`` axis, ``channel`` picks the channel.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Normalization
    >>> from biodatacentric.data.readers import ArraySource
    >>> stack = np.zeros((3, 2, 16, 16), dtype=np.uint16)
    >>> src = ArraySource(stack, "ZCYX", name="stack", normalization=Normalization("none"), channel=1)
    >>> src.shape, src.dtype, src.read_slice(0).shape
    ((3, 16, 16), dtype('uint16'), (16, 16))
    """

    def __init__(self, array: np.ndarray, axes: str, *, name: str, normalization: Normalization,
                 channel: int | None = None, origin: tuple[str, int, int, int] | None = None) -> None:
        super().__init__(normalization)
        arr = np.asarray(array)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name}: pixel dtype {arr.dtype} is not numeric")
        axes = _source_axes(axes, arr.ndim, source=name)
        self.array = _to_zyx(arr, axes, channel, name)
        self.shape = tuple(int(s) for s in self.array.shape)  # type: ignore[assignment]
        self.dtype = self.array.dtype
        self.name = name
        self.origin = origin or (name, 0, 0, 0)

    def _read_raw_slice(self, z: int) -> np.ndarray:
        return self.array[z]


def _source_axes(axes: Any, ndim: int, source: str) -> str:
    """Validate ``axes`` for a source of ``ndim`` dimensions; channel-last layouts (an RGB
    TIFF is ``"YXS"``) are accepted too and returned with the channel axis written ``C``."""
    if isinstance(axes, str) and axes.upper() in _CHANNEL_LAST:
        if len(axes) != ndim:
            raise ValueError(f"axes={axes!r} describes {len(axes)} dimensions but {source} has {ndim}; "
                             "pass the axes that match the data")
        return axes.upper().replace("S", "C")
    return check_axes(axes, ndim, source=source)


def _check_channel(axes: str, shape: tuple, channel: int | None, name: str) -> int | None:
    """Validate ``channel`` against the axes and shape of a source; ``None`` means channel 0
    when there is a single channel."""
    if "C" in axes:
        n_c = shape[axes.index("C")]
        if channel is None:
            if n_c != 1:
                raise ValueError(f"{name} has {n_c} channels (axes {axes!r}); pass channel=<0..{n_c - 1}> to pick one")
            channel = 0
        if not 0 <= channel < n_c:
            raise ValueError(f"channel={channel} is outside the {n_c} channels of {name}")
    elif channel not in (None, 0):
        raise ValueError(f"channel={channel} given but axes {axes!r} of {name} have no 'C'")
    return channel


def _to_zyx(arr: np.ndarray, axes: str, channel: int | None, name: str) -> np.ndarray:
    channel = _check_channel(axes, arr.shape, channel, name)
    if "C" in axes:
        arr = np.take(arr, channel, axis=axes.index("C"))
        axes = axes.replace("C", "")
    if axes == "YX":
        arr = arr[None]
    return arr


class TiffSource(Source):
    """A TIFF file read lazily, one z-slice at a time.

    Uncompressed contiguous files are memory-mapped; compressed pages are decoded on demand
    and cached (see :data:`slice_cache`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, tifffile
    >>> from biodatacentric import Normalization, make_vessels
    >>> from biodatacentric.data.readers import TiffSource
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name) / "stack.tif"
    >>> image, _ = make_vessels((3, 32, 32), dtype="uint16", random_state=0)
    >>> tifffile.imwrite(path, image, photometric="minisblack")
    >>> src = TiffSource(path, "ZYX", normalization=Normalization())
    >>> src.shape, src.dtype, bool(np.array_equal(src.read_slice(2), image[2]))
    ((3, 32, 32), dtype('uint16'), True)
    >>> del src
    >>> tmp.cleanup()
    """

    def __init__(self, path: str | os.PathLike, axes: str, *, normalization: Normalization,
                 channel: int | None = None, origin: tuple[str, int, int, int] | None = None) -> None:
        super().__init__(normalization)
        path = Path(path)
        self.path = str(path)
        self.name = str(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; check the path or glob pattern")
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        try:
            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                shape = tuple(int(s) for s in series.shape)
                file_axes = series.axes
                dtype = np.dtype(series.dtype)
                pages = list(series.pages)
                _check_not_truncated(tf, pages, path)
                page_shape = tuple(int(s) for s in pages[0].shape) if pages else ()
        except (tifffile.TiffFileError, ValueError, IndexError, OSError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read {path} as a TIFF ({exc}); the file may be corrupt or "
                             "truncated: re-export it from the acquisition software") from exc
        known = set("TZCYXS")
        declared = bool(file_axes) and len(file_axes) == len(shape) and set(file_axes) <= known
        if declared and file_axes[-1] in "SC" and (not isinstance(axes, str) or len(axes) != len(shape)):
            kind = "an RGB" if file_axes[-1] == "S" else "a multichannel"
            raise ValueError(
                f"{path} is {kind} TIFF (axes {file_axes!r}, shape {shape}) but axes={axes!r} was given; "
                f"pass axes={file_axes!r} and channel=<0..{shape[-1] - 1}> to read one of its "
                f"{shape[-1]} channels (or convert it to a single-channel image)")
        axes = _source_axes(axes, len(shape), source=str(path))
        if declared and file_axes.replace("S", "C") != axes:
            if not (set(file_axes) - set("YX") <= {"Z", "T"} and set(axes) - set("YX") <= {"Z"}):
                raise ValueError(
                    f"{path} declares axes {file_axes!r} in its metadata but axes={axes!r} was given; "
                    "pass the axes that match the file")
        self.axes = axes
        self.file_shape = shape
        self.dtype = dtype
        self.channel = _check_channel(axes, shape, channel, str(path))
        zyx = [shape[axes.index(a)] if a in axes else 1 for a in "ZYX"]
        self.shape = tuple(zyx)  # type: ignore[assignment]
        self.origin = origin or (self.path, 0, 0, 0)
        self._channel_last = axes.endswith("YXC")
        if self._channel_last:  # interleaved RGB: one page per z-slice holds every channel
            self._pages_are_slices = page_shape == (self.shape[1], self.shape[2], shape[-1]) and \
                len(pages) == self.shape[0]
        else:
            self._pages_are_slices = page_shape == (self.shape[1], self.shape[2]) and \
                len(pages) == int(np.prod(shape[:-2], dtype=np.int64))
        self._memmap: np.ndarray | None = None
        self._memmap_tried = False

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_memmap"] = None
        state["_memmap_tried"] = False
        return state

    def _page_index(self, z: int) -> int:
        if self._channel_last:
            return z
        lead_axes = self.axes[:-2]
        lead_shape = self.file_shape[:-2]
        coords = [z if a == "Z" else self.channel for a in lead_axes]
        return int(np.ravel_multi_index(coords, lead_shape)) if lead_axes else 0

    def _try_memmap(self) -> np.ndarray | None:
        if not self._memmap_tried:
            self._memmap_tried = True
            try:
                mm = tifffile.memmap(self.path, mode="r")
                if tuple(mm.shape) == self.file_shape:
                    self._memmap = _to_zyx(mm, self.axes, self.channel, self.path)
            except (ValueError, OSError, tifffile.TiffFileError):
                self._memmap = None
        return self._memmap

    def _read_raw_slice(self, z: int) -> np.ndarray:
        mm = self._try_memmap()
        if mm is not None:
            return mm[z]
        key = (self.path, self.channel, z)
        cached = slice_cache.get(key)
        if cached is not None:
            return cached
        try:
            tf = _open_files.get(self.path)
            if self._pages_are_slices:
                arr = tf.series[0].pages[self._page_index(z)].asarray()
                if self._channel_last:
                    arr = arr[..., self.channel]
            else:  # unusual layout: decode the whole series once
                arr = _to_zyx(tf.series[0].asarray(), self.axes, self.channel, self.path)[z]
        except Exception as exc:
            raise ValueError(f"failed to read slice z={z} of {self.path} ({exc}); the file may be "
                             "corrupt or truncated") from exc
        arr = np.ascontiguousarray(arr)
        arr.setflags(write=False)
        slice_cache.put(key, arr)
        return arr


def _check_not_truncated(tf: tifffile.TiffFile, pages: list, path: Path) -> None:
    size = os.path.getsize(path)
    for page in pages:
        offsets = getattr(page, "dataoffsets", None)
        counts = getattr(page, "databytecounts", None)
        if offsets is None or counts is None or len(offsets) == 0:
            continue
        end = max(int(o) + int(c) for o, c in zip(offsets, counts))
        if end > size:
            raise ValueError(f"image data ends at byte {end} but the file has {size} bytes (truncated)")


def _import_zarr():
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading Zarr needs the optional dependency zarr: pip install 'biodatacentric[zarr]'") from exc
    return zarr


def _ome_multiscales(attrs: dict) -> list | None:
    """The OME-NGFF ``multiscales`` list of a group's attributes (v0.4 or v0.5 layout)."""
    if "multiscales" in attrs:
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return None


class ZarrSource(Source):
    """A Zarr array or an OME-Zarr multiscale image, read lazily one z-slice at a time.

    For an OME-Zarr group the resolution ``level`` (0 = full resolution) picks the dataset,
    and the axes named in the metadata must agree with ``axes``. Slices are read through
    Zarr's chunked storage (only the chunks that intersect the slice) and cached like
    decoded TIFF pages. Needs the optional dependency ``zarr``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, zarr
    >>> from biodatacentric import Normalization, make_vessels
    >>> from biodatacentric.data.readers import ZarrSource
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = str(pathlib.Path(tmp.name) / "stack.zarr")
    >>> image, _ = make_vessels((2, 32, 32), dtype="uint8", random_state=0)
    >>> store = zarr.open_array(path, mode="w", shape=image.shape, chunks=(1, 32, 32), dtype=image.dtype)
    >>> store[...] = image
    >>> src = ZarrSource(path, "ZYX", normalization=Normalization("none"))
    >>> src.shape, src.dtype, bool(np.array_equal(src.read_slice(1), image[1]))
    ((2, 32, 32), dtype('uint8'), True)
    >>> tmp.cleanup()
    """

    def __init__(self, path: str | os.PathLike, axes: str, *, normalization: Normalization,
                 channel: int | None = None, level: int = 0, component: str | None = None,
                 origin: tuple[str, int, int, int] | None = None) -> None:
        super().__init__(normalization)
        zarr = _import_zarr()
        self.path = str(path)
        self.name = str(path) if component is None else f"{path}/{component}"
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist; check the path")
        try:
            node = zarr.open(self.path, mode="r")
        except Exception as exc:
            raise ValueError(f"cannot open {path} as Zarr ({exc})") from exc
        file_axes = None
        if component is not None:
            node = node[component]
        if not hasattr(node, "shape"):  # a group: OME-Zarr multiscale image
            ms = _ome_multiscales(dict(node.attrs))
            if not ms:
                raise ValueError(f"{self.name} is a Zarr group without OME multiscales metadata; pass "
                                 "component='<array name>'")
            datasets = ms[0]["datasets"]
            if not 0 <= level < len(datasets):
                raise ValueError(f"level={level} but {self.name} has {len(datasets)} resolution levels")
            component = datasets[level]["path"]
            names = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
            file_axes = "".join(n.upper() for n in names) if names else None
            self.name = f"{path}/{component}"
            node = node[component]
        self.component = component
        shape = tuple(int(s) for s in node.shape)
        axes = check_axes(axes, len(shape), source=self.name)
        if file_axes and set(file_axes) <= set("TCZYX") and file_axes != axes:
            raise ValueError(f"{self.name} declares axes {file_axes!r} in its OME metadata but axes={axes!r} "
                             "was given; pass the axes that match the data")
        self.axes = axes
        self.file_shape = shape
        self.dtype = np.dtype(node.dtype)
        self.channel = _check_channel(axes, shape, channel, self.name)
        self.shape = tuple(shape[axes.index(a)] if a in axes else 1 for a in "ZYX")  # type: ignore[assignment]
        self.origin = origin or (self.name, 0, 0, 0)
        self._array = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_array"] = None
        return state

    def _node(self):
        if self._array is None:
            zarr = _import_zarr()
            root = zarr.open(self.path, mode="r")
            self._array = root if self.component is None else root[self.component]
        return self._array

    def _read_raw_slice(self, z: int) -> np.ndarray:
        key = (self.name, self.channel, z)
        cached = slice_cache.get(key)
        if cached is not None:
            return cached
        sel = tuple(z if a == "Z" else (self.channel if a == "C" else slice(None)) for a in self.axes)
        try:
            arr = np.ascontiguousarray(self._node()[sel])
        except Exception as exc:
            raise ValueError(f"failed to read slice z={z} of {self.name} ({exc})") from exc
        arr.setflags(write=False)
        slice_cache.put(key, arr)
        return arr


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
