"""Data-parallel inference over a Dask cluster, with the same estimators, and Zarr outputs.

When a :class:`dask.distributed.Client` is given (``client=...``) or active (inside
``with Client(...):``), the estimator methods that map over patches or files --
:meth:`MAEPretrainer.transform <biodatacentric.MAEPretrainer.transform>`,
:meth:`TransUNetSegmenter.predict_files <biodatacentric.TransUNetSegmenter.predict_files>`,
:meth:`MCDropoutHunter.fit <biodatacentric.MCDropoutHunter.fit>` and
:meth:`RCAMonitor.score_many <biodatacentric.RCAMonitor.score_many>` -- split the work into
chunks, ship the fitted estimator to every worker once (``client.scatter(...,
broadcast=True)``), run the same single-process code on each chunk (with ``client=False``, so
a worker never submits work of its own), and reassemble the results in the original order.
``client=False`` forces single-process execution even inside a client context.

*Identical results.* Patch chunks are contiguous runs of the patch order whose length is a
multiple of the estimator's inference batch size (``align``), so every worker sees exactly
the batches the single-process run sees, and the estimators avoid the computations whose
rounding depends on the number of rows or threads (NumPy/OpenBLAS matrix products; torch's
CPU kernels give the same bits with 1 or 2 threads, checked in ``tests/test_parallel_*.py``).
``precision="auto"`` is resolved on the calling machine and pinned in the shipped copy, so
workers with other CPUs use the same arithmetic. Results are bitwise identical on the same
device type; a GPU worker computes the same model within floating-point tolerance.

Dask and Zarr are optional: ``pip install 'biodatacentric[dask]'`` / ``'biodatacentric[zarr]'``.

Examples
--------
>>> from dask.distributed import Client, LocalCluster          # doctest: +SKIP
>>> with Client(LocalCluster(n_workers=2, threads_per_worker=1)) as client:  # doctest: +SKIP
...     emb = mae.transform(patches)                    # uses the active client
...     seg.predict_files(["a.tif", "b.tif"], out="predictions/")
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import csv
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tifffile

from ._io import atomic_write_text, move_dir_into_place
from .data.patches import Patches
from .data.readers import TiffSource, ZarrSource, _import_zarr, _ome_multiscales

__all__ = ["resolve_client", "chunk_patches", "balanced_chunk_size", "CHUNKS_PER_THREAD", "map_patches",
           "map_items", "worker_copy", "read_array", "open_source", "output_name", "zarr_output", "write_zarr",
           "write_table"]

_task_state = threading.local()  # depth > 0 while a task of map_patches/map_items runs


def resolve_client(client: Any = None) -> Any:
    """The client to use: ``client`` if given, else the active default client, else ``None``.

    ``client=False`` forces single-process execution even inside a client context. Inside a
    task started by :func:`map_patches` or :func:`map_items` no client is found (so an
    embedder called by an estimator on a worker never submits work of its own). When
    ``distributed`` has not been imported, no client can be active and nothing is imported.

    Examples
    --------
    >>> resolve_client(False) is None   # single-process, even inside ``with Client(...):``
    True
    >>> resolve_client() is None        # no Dask client is active here
    True
    """
    if client is False:
        return None
    if client is not None:
        return client
    if getattr(_task_state, "depth", 0) or "distributed" not in sys.modules:
        return None  # inside one of our tasks nested calls run locally, whatever client is active
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - a broken installation
        return None
    try:
        return default_client()
    except ValueError:  # no client is active
        return None


def chunk_patches(patches: Patches, chunk_size: int = 512, align: int | None = None) -> list[np.ndarray]:
    """Split patch positions into chunks of at most ``chunk_size``.

    Without ``align`` each chunk stays inside one source file, so a worker decodes each TIFF
    page or Zarr chunk once. With ``align`` (an estimator's inference batch size) the chunks
    are contiguous runs of the patch order whose length is a multiple of ``align`` (the
    chunk size is rounded down to one, at least ``align``): a chunk then splits into exactly
    the batches a single-process run makes, which is what identical results need.

    Examples
    --------
    >>> from biodatacentric import Patches, make_vessels
    >>> img, _ = make_vessels((64, 64), random_state=0)
    >>> patches = Patches.from_arrays([img, img], patch_shape=(32, 32))   # 4 patches per image
    >>> [c.tolist() for c in chunk_patches(patches, chunk_size=3)]   # chunks stay inside one image
    [[0, 1, 2], [3], [4, 5, 6], [7]]
    >>> [c.tolist() for c in chunk_patches(patches, chunk_size=5, align=2)]   # whole batches of 2
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = len(patches)
    if align is not None:
        if align < 1:
            raise ValueError(f"align must be >= 1, got {align}")
        size = max(int(chunk_size) // int(align), 1) * int(align)
        return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]
    src = patches.index["source"]
    order = np.argsort(src, kind="stable")
    chunks = []
    for s in np.unique(src):
        members = order[src[order] == s]
        for start in range(0, len(members), chunk_size):
            chunks.append(members[start:start + chunk_size])
    return chunks


_malloc_tuned = False


def _tune_malloc() -> None:
    """Undo a side effect of Dask's worker environment on torch (once per process).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting any glibc
    malloc threshold freezes the *mmap* threshold at 128 KiB, so every large torch buffer is
    mapped and unmapped again for each batch. Measured on the MAE encoder this doubled a
    worker's CPU time (as much system time as compute). Raising the mmap threshold to glibc's
    documented maximum of 32 MiB (``mallopt(M_MMAP_THRESHOLD)``) restores in-process speed;
    nothing is done where the user set ``MALLOC_MMAP_THRESHOLD_`` or off glibc.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ \
            or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


@contextlib.contextmanager
def _in_task() -> Iterator[None]:
    _tune_malloc()
    _task_state.depth = getattr(_task_state, "depth", 0) + 1
    try:
        yield
    finally:
        _task_state.depth -= 1


def _apply_to_chunk(fn: Callable, patches: Patches, idx: np.ndarray, pass_offset: bool, kwargs: dict) -> Any:
    with _in_task():
        if pass_offset:
            return fn(patches[idx], int(idx[0]), **kwargs)
        return fn(patches[idx], **kwargs)


#: chunks per worker thread that :func:`map_patches` aims at with aligned chunks (load balance)
CHUNKS_PER_THREAD = 4


def balanced_chunk_size(n: int, chunk_size: int, align: int, threads: int) -> int:
    """The chunk length :func:`map_patches` uses for ``n`` patches in whole batches of ``align``
    on ``threads`` worker threads: at most ``chunk_size``, at least ``align``, and small enough
    for about :data:`CHUNKS_PER_THREAD` chunks per thread.

    Examples
    --------
    >>> balanced_chunk_size(600, 512, 64, threads=1)   # 600 // 4 = 150 -> two batches
    128
    >>> balanced_chunk_size(600, 512, 64, threads=2)   # 600 // 8 = 75 -> one batch
    64
    >>> balanced_chunk_size(100_000, 512, 64, threads=2)   # large jobs keep chunk_size
    512
    """
    share = int(n) // (CHUNKS_PER_THREAD * max(int(threads), 1))
    return min(int(chunk_size), max(share // int(align), 1) * int(align))


def _worker_threads(client: Any) -> int:
    """Worker threads of the cluster behind ``client`` (1 if the scheduler does not say)."""
    try:
        return max(sum(int(n) for n in client.nthreads().values()), 1)
    except (AttributeError, TypeError, ValueError):
        return 1


def map_patches(fn: Callable, patches: Patches, *, client: Any = None, chunk_size: int = 512,
                align: int | None = None, pass_offset: bool = False, **kwargs: Any) -> np.ndarray:
    """``fn(patches, **kwargs)`` computed chunk by chunk on a Dask cluster, in order.

    Parameters
    ----------
    fn : callable
        Returns one row per patch (an array whose first axis has the chunk's length), e.g.
        a bound method such as ``mae.transform``; the object owning a bound method (or a
        :func:`functools.partial`) is sent to each worker once.
    patches : Patches
        Sent to each worker once (an index plus file paths, or the arrays it wraps).
    client : Client, None or False
        ``None`` uses the active client if any; ``False`` or no client calls
        ``fn(patches, **kwargs)`` directly.
    chunk_size, align
        See :func:`chunk_patches`. With ``align``, ``chunk_size`` is lowered where needed so
        that every worker thread gets about :data:`CHUNKS_PER_THREAD` chunks (never below
        ``align``): few large chunks would leave workers idle while one finishes.
    pass_offset : bool
        Call ``fn(chunk, offset, **kwargs)`` with the position of the chunk's first patch
        (needs ``align``, so chunks are contiguous); without a client ``offset`` is 0.

    Examples
    --------
    Without a client (``client=False``, or none active) ``fn`` runs once, in this process:

    >>> import numpy as np
    >>> from biodatacentric import Patches, make_vessels
    >>> img, _ = make_vessels((64, 64), random_state=0)
    >>> patches = Patches.from_arrays([img, img], patch_shape=(32, 32))
    >>> def brightness(p, q=99.0):
    ...     return np.percentile(p.images(), q, axis=(1, 2))
    >>> map_patches(brightness, patches, client=False, q=50.0).shape   # one row per patch
    (8,)
    """
    if pass_offset and align is None:
        raise ValueError("pass_offset=True needs align (contiguous chunks)")
    client = resolve_client(client)
    if client is None:
        return fn(patches, 0, **kwargs) if pass_offset else fn(patches, **kwargs)
    if align is not None:
        chunk_size = balanced_chunk_size(len(patches), chunk_size, align, _worker_threads(client))
    chunks = chunk_patches(patches, chunk_size, align)
    if not chunks:
        return fn(patches, 0, **kwargs) if pass_offset else fn(patches, **kwargs)
    fn_future = client.scatter(fn, broadcast=True, hash=False)
    patches_future = client.scatter(patches, broadcast=True, hash=False)
    futures = [client.submit(_apply_to_chunk, fn_future, patches_future, idx, pass_offset, kwargs, pure=False)
               for idx in chunks]
    parts = client.gather(futures)
    first = np.asarray(parts[0])
    out = np.empty((len(patches),) + first.shape[1:], dtype=first.dtype)
    for idx, part in zip(chunks, parts):
        out[idx] = part
    return out


def _apply_to_item(fn: Callable, item: Any, kwargs: dict) -> Any:
    with _in_task():
        return fn(item, **kwargs)


def map_items(fn: Callable, items: Sequence[Any], *, client: Any = None, **kwargs: Any) -> list:
    """``[fn(item, **kwargs) for item in items]`` on a Dask cluster (one task per item, in order).

    The owner of ``fn`` is sent to each worker once; each item travels with its task, so
    pass file paths rather than large arrays where the workers can read the files.

    Examples
    --------
    >>> map_items(output_name, ["a.tif", "b.ome.zarr"], client=False, i=0)
    ['a', 'b']
    """
    client = resolve_client(client)
    if client is None:
        return [fn(item, **kwargs) for item in items]
    if not len(items):
        return []
    fn_future = client.scatter(fn, broadcast=True, hash=False)
    futures = [client.submit(_apply_to_item, fn_future, item, kwargs, pure=False) for item in items]
    return client.gather(futures)


def worker_copy(estimator: Any, **pinned: Any) -> Any:
    """A shallow copy of ``estimator`` to ship to workers, with ``pinned`` attributes set and
    progress bars off (the fitted modules are shared with the original, not copied).

    Examples
    --------
    >>> from biodatacentric import MAEPretrainer
    >>> est = MAEPretrainer(preset="tiny", progress=True)
    >>> shipped = worker_copy(est, precision="fp32")
    >>> shipped.precision, shipped.progress, est.precision, est.progress
    ('fp32', False, 'auto', True)
    """
    shipped = copy.copy(estimator)
    for name, value in pinned.items():
        setattr(shipped, name, value)
    for name in ("progress", "verbose"):
        if hasattr(shipped, name):
            setattr(shipped, name, False)
    return shipped


# ---------------------------------------------------------------------- files
def _is_zarr_path(path: str) -> bool:
    p = path.rstrip("/\\")
    return p.endswith(".zarr") or (os.path.isdir(p) and any(
        os.path.exists(os.path.join(p, f)) for f in ("zarr.json", ".zarray", ".zgroup")))


def read_array(obj: Any) -> Any:
    """An array from ``obj``: arrays pass through; a path to a TIFF (read whole), a ``.npy``
    file (memory-mapped), a Zarr array store or an OME-NGFF image (full resolution; read
    whole) is loaded.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name) / "image.npy"
    >>> np.save(path, np.zeros((64, 64), dtype=np.float32))
    >>> arr = read_array(path)   # memory-mapped
    >>> arr.shape, arr.dtype, read_array(arr) is arr   # arrays pass through
    ((64, 64), dtype('float32'), True)
    >>> del arr
    >>> tmp.cleanup()
    """
    if not isinstance(obj, (str, os.PathLike)):
        return obj
    path = os.fspath(obj)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; check the path")
    if _is_zarr_path(path):
        node = _import_zarr().open(path, mode="r")
        if not hasattr(node, "shape"):
            ms = _ome_multiscales(dict(node.attrs))
            if not ms:
                raise ValueError(f"{path} is a Zarr group; pass the path of an array inside it")
            node = node[ms[0]["datasets"][0]["path"]]  # an OME-NGFF image: its full resolution
        return np.asarray(node[...])
    if path.lower().endswith(".npy"):
        return np.load(path, mmap_mode="r")
    if path.lower().endswith((".tif", ".tiff")):
        return tifffile.imread(path)
    raise ValueError(f"cannot read {path}: expected a .tif/.tiff, .npy or .zarr path")


def output_name(item: Any, i: int) -> str:
    """File stem for the output of input ``item`` number ``i`` (``"image<i>"`` for arrays).

    Examples
    --------
    >>> import numpy as np
    >>> output_name("data/stack01.ome.tif", 0), output_name(np.zeros((8, 8)), 2)
    ('stack01', 'image2')
    """
    if isinstance(item, (str, os.PathLike)):
        name = Path(os.fspath(item).rstrip("/\\")).name
        for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".tiff", ".tif", ".npy"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name
    return f"image{i}"


def _create_array(parent: Any, zarr: Any, *, name: str | None, store: str | None, shape: tuple,
                  chunks: tuple, dtype: Any) -> Any:
    """A new Zarr array under ``parent`` (a group) or at ``store`` (a path), zarr 2 or 3."""
    kwargs = dict(shape=tuple(int(s) for s in shape), chunks=tuple(int(c) for c in chunks), dtype=np.dtype(dtype))
    if parent is not None:
        create = getattr(parent, "create_array", None) or parent.create_dataset
        return create(name, **kwargs)
    return zarr.open_array(store, mode="w", **kwargs)


@contextlib.contextmanager
def zarr_output(out: Any, arrays: dict[str | None, tuple[tuple, tuple, Any]], *, attrs: dict | None = None,
                overwrite: bool = False) -> Iterator[dict[str | None, Any]]:
    """Create Zarr arrays to be filled chunk by chunk, published atomically.

    Parameters
    ----------
    out : path or zarr array / group
        A path: the arrays are written into ``<out>.partial`` and that folder is renamed to
        ``out`` only when the block exits without error (readers never see a half-written
        result under the final name; a failed run leaves no ``.partial`` behind). An existing
        ``out`` raises unless ``overwrite``. A Zarr array (one entry in ``arrays``) or group
        opened for writing is filled in place, its shape and dtype checked.
    arrays : dict
        ``{name: (shape, chunks, dtype)}``; the name ``None`` means the store's root array.
    attrs : dict, optional
        JSON-able attributes stored on the root (array or group).

    Yields
    ------
    dict
        ``{name: zarr array}``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> out = pathlib.Path(tmp.name) / "prediction.zarr"
    >>> arrays = {"prob": ((64, 64), (32, 32), "float32"), "label": ((64, 64), (32, 32), "uint8")}
    >>> with zarr_output(out, arrays, attrs={"model": "tiny"}) as made:
    ...     made["label"][:32] = 1                # fill chunk by chunk
    ...     print(sorted(made), out.exists())     # not published yet
    ['label', 'prob'] False
    >>> out.exists()
    True
    >>> tmp.cleanup()
    """
    zarr = _import_zarr()
    if not isinstance(out, (str, os.PathLike)):
        if None in arrays:
            shape, _, dtype = arrays[None]
            if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
                raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected "
                                 f"{tuple(shape)} and {np.dtype(dtype)}")
            made = {None: out}
        else:
            made = {}
            for name, (shape, chunks, dtype) in arrays.items():
                made[name] = _create_array(out, zarr, name=name, store=None, shape=shape, chunks=chunks,
                                           dtype=dtype)
        if attrs:
            out.attrs.update(attrs)
        yield made
        return
    final = Path(os.fspath(out))
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True or choose another out path")
    partial = final.with_name(final.name + ".partial")
    if partial.exists():  # left by a run that was killed: start that file again
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        if None in arrays:
            shape, chunks, dtype = arrays[None]
            root = _create_array(None, zarr, name=None, store=str(partial), shape=shape, chunks=chunks, dtype=dtype)
            made = {None: root}
        else:
            root = zarr.open_group(str(partial), mode="w")
            made = {name: _create_array(root, zarr, name=name, store=None, shape=shape, chunks=chunks, dtype=dtype)
                    for name, (shape, chunks, dtype) in arrays.items()}
        if attrs:
            root.attrs.update(attrs)
        yield made
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    move_dir_into_place(partial, final)



class _LeadingAxis:
    """Writes ``view[0] = slice`` into ``array[...]``: a 2-D result seen as a 1-slice stack."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = (1,) + tuple(array.shape)
        self.dtype = array.dtype

    def __setitem__(self, key: Any, value: Any) -> None:
        if key != 0:
            raise IndexError(f"a single-slice result has no slice {key}")
        self.array[...] = value


def write_zarr(out: Any, shape: tuple, chunks: tuple, dtype: Any, fill: Callable[[Any], Any], *,
               attrs: dict | None = None, overwrite: bool = False, stack_view: bool = False) -> Any:
    """Create one Zarr array at ``out`` (see :func:`zarr_output`), let ``fill(array)`` write
    it chunk by chunk, publish it, and return it (opened read-only when ``out`` is a path).

    With ``stack_view`` ``fill`` receives a view with a leading axis of length 1 (``view[0] =
    result``), for writers that work slice by slice on a 2-D result.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> def fill(arr):
    ...     arr[:32] = 1
    ...     arr[32:] = 2
    >>> z = write_zarr(pathlib.Path(tmp.name) / "mask.zarr", (64, 64), (32, 32), "uint8", fill)
    >>> z.shape, int(z[...].sum())
    ((64, 64), 6144)
    >>> tmp.cleanup()
    """
    with zarr_output(out, {None: (shape, chunks, dtype)}, attrs=attrs, overwrite=overwrite) as made:
        arr = made[None]
        fill(_LeadingAxis(arr) if stack_view else arr)
    if isinstance(out, (str, os.PathLike)):
        return _import_zarr().open_array(os.fspath(out), mode="r")
    return out


def open_source(path: str | os.PathLike, axes: str, normalization: Any) -> Any:
    """A lazy :class:`~biodatacentric.data.readers.Source` for a TIFF file or a Zarr store.

    Examples
    --------
    >>> import tempfile, pathlib, tifffile
    >>> from biodatacentric import Normalization, make_vessels
    >>> tmp = tempfile.TemporaryDirectory()
    >>> img, _ = make_vessels((64, 64), random_state=0)
    >>> tifffile.imwrite(pathlib.Path(tmp.name) / "vessels.tif", img)
    >>> src = open_source(pathlib.Path(tmp.name) / "vessels.tif", "YX", Normalization())
    >>> type(src).__name__, src.shape   # always seen as (Z, Y, X)
    ('TiffSource', (1, 64, 64))
    >>> tmp.cleanup()
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p} does not exist; check the path")
    if _is_zarr_path(p):
        return ZarrSource(p, axes, normalization=normalization)
    if p.lower().endswith((".tif", ".tiff")):
        return TiffSource(p, axes, normalization=normalization)
    raise ValueError(f"cannot read {p}: expected a .tif/.tiff file or a .zarr store")


def write_table(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts of scalars) atomically as CSV (``.csv``) or a JSON list (``.json``).

    CSV columns are the union of the rows' keys, in order of first appearance.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> rows = [{"image": "a", "score": 0.5}, {"image": "b", "score": 0.25, "flagged": True}]
    >>> path = write_table(pathlib.Path(tmp.name) / "scores.csv", rows)
    >>> print(path.read_text(), end="")
    image,score,flagged
    a,0.5,
    b,0.25,True
    >>> tmp.cleanup()
    """
    path = Path(os.fspath(path))
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, json.dumps(rows, indent=1) + "\n")
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path} must end in .csv or .json")
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
