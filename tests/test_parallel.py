"""Dask data-parallel helpers give the single-process results."""

import numpy as np
import pytest

from biodatacentric import Patches, make_vessels
from biodatacentric.parallel import chunk_patches, map_items, map_patches, resolve_client


class MeanPerPatch:
    """A stand-in for a fitted estimator: one row per patch."""

    def __init__(self, scale):
        self.scale = scale

    def transform(self, patches):
        imgs = patches.images()
        return np.stack([imgs.mean(axis=(1, 2)), imgs.std(axis=(1, 2))], axis=1) * self.scale


def _patches():
    arrays = [make_vessels((3, 64, 64), random_state=i)[0] for i in range(3)]
    return Patches.from_arrays(arrays, axes="ZYX", patch_shape=(32, 32))


def test_chunks_stay_inside_one_source():
    p = _patches()
    chunks = chunk_patches(p, chunk_size=5)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(p)))
    for c in chunks:
        assert len(set(p.index["source"][c])) == 1 and len(c) <= 5


def test_without_client_runs_in_process():
    p = _patches()
    est = MeanPerPatch(2.0)
    assert resolve_client(False) is None
    np.testing.assert_array_equal(map_patches(est.transform, p, client=False), est.transform(p))


def test_local_cluster_gives_identical_results():
    distributed = pytest.importorskip("distributed")
    p = _patches()
    est = MeanPerPatch(3.0)
    with distributed.Client(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        out = map_patches(est.transform, p, client=client, chunk_size=7)
        with_ctx = map_patches(est.transform, p)  # the active client is found from the context
        squares = map_items(lambda x, power: x ** power, [1, 2, 3], power=2)
    np.testing.assert_array_equal(out, est.transform(p))
    np.testing.assert_array_equal(with_ctx, out)
    assert squares == [1, 4, 9]
