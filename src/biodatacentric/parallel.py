"""Data-parallel inference over a Dask cluster, with the same estimators.

When a :class:`dask.distributed.Client` is given (``client=...``) or active (inside
``with Client(...):``), estimator methods that map over patches or files (embedding,
whole-stack prediction, hunting, RCA scoring) split the work into chunks grouped by source
file, ship the fitted estimator to every worker once (``client.scatter(..., broadcast=True)``),
run the same single-process code on each chunk, and reassemble the results in the original
order -- identical to the single-process result. Without a client, everything runs in the
calling process. Dask is optional: ``pip install 'biodatacentric[dask]'``.

Examples
--------
>>> from dask.distributed import Client, LocalCluster          # doctest: +SKIP
>>> with Client(LocalCluster(n_workers=2, threads_per_worker=1)) as client:  # doctest: +SKIP
...     emb = parallel.map_patches(mae.transform, patches, client=client)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["resolve_client", "chunk_patches", "map_patches", "map_items"]


def resolve_client(client: Any = None) -> Any:
    """The client to use: ``client`` if given, else the active default client, else ``None``.

    ``client=False`` forces single-process execution even inside a client context.
    """
    if client is False:
        return None
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client is active
        return None


def chunk_patches(patches: Any, chunk_size: int = 512) -> list[np.ndarray]:
    """Split patch positions into chunks of at most ``chunk_size``, each from one source.

    Keeping a chunk inside one file means a worker decodes each TIFF page or Zarr chunk once.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    src = patches.index["source"]
    order = np.argsort(src, kind="stable")
    chunks = []
    for s in np.unique(src):
        members = order[src[order] == s]
        for start in range(0, len(members), chunk_size):
            chunks.append(members[start:start + chunk_size])
    return chunks


def _apply_to_chunk(fn: Callable, patches: Any, idx: np.ndarray, kwargs: dict) -> Any:
    return fn(patches[idx], **kwargs)


def map_patches(fn: Callable, patches: Any, *, client: Any = None, chunk_size: int = 512,
                **kwargs: Any) -> np.ndarray:
    """``fn(patches, **kwargs)`` computed chunk by chunk on a Dask cluster, in order.

    ``fn`` must return one row per patch (an array whose first axis has the chunk's length),
    e.g. a bound method such as ``mae.transform``. The object owning a bound method is sent
    to each worker once. Without a client, ``fn(patches, **kwargs)`` is called directly.
    """
    client = resolve_client(client)
    if client is None:
        return fn(patches, **kwargs)
    chunks = chunk_patches(patches, chunk_size)
    fn_future = client.scatter(fn, broadcast=True, hash=False)
    patches_future = client.scatter(patches, broadcast=True, hash=False)
    futures = [client.submit(_apply_to_chunk, fn_future, patches_future, idx, kwargs, pure=False)
               for idx in chunks]
    parts = client.gather(futures)
    first = np.asarray(parts[0])
    out = np.empty((len(patches),) + first.shape[1:], dtype=first.dtype)
    for idx, part in zip(chunks, parts):
        out[idx] = part
    return out


def map_items(fn: Callable, items: Sequence[Any], *, client: Any = None, **kwargs: Any) -> list:
    """``[fn(item, **kwargs) for item in items]`` on a Dask cluster (one task per item)."""
    client = resolve_client(client)
    if client is None:
        return [fn(item, **kwargs) for item in items]
    fn_future = client.scatter(fn, broadcast=True, hash=False)
    futures = [client.submit(lambda f, it: f(it, **kwargs), fn_future, item, pure=False) for item in items]
    return client.gather(futures)
