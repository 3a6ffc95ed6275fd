"""Estimators on a Dask LocalCluster give exactly the single-process results.

One in-process LocalCluster with 2 single-threaded workers is shared by the module (worker
processes take ~10 s to spawn on 2 busy cores); the workers then run the same shipped
estimator object concurrently, which is the harder case for shared torch state. That the
shipped estimators survive pickling, as they must for worker processes, is checked with a
cloudpickle round trip.
"""

import functools

import numpy as np
import pytest
import tifffile
import torch

distributed = pytest.importorskip("distributed")

from biodatacentric import MAEPretrainer, Patches, make_vessels  # noqa: E402
from biodatacentric.hunt import MCDropoutHunter  # noqa: E402
from estimator_cases import tiny_segmenter  # noqa: E402
from biodatacentric.monitor import RCAMonitor  # noqa: E402
from biodatacentric.parallel import chunk_patches, map_items, map_patches, resolve_client, worker_copy  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        yield c


def _roundtrip(fn):
    cloudpickle = pytest.importorskip("cloudpickle")
    return cloudpickle.loads(cloudpickle.dumps(fn))


def _pool(n_stacks=3, depth=5, size=64):
    vols = [make_vessels((depth, size, size), random_state=i)[0] for i in range(n_stacks)]
    return Patches.from_arrays(vols, axes="ZYX", patch_shape=(32, 32))


def test_aligned_chunks_are_contiguous_runs_of_whole_batches():
    p = _pool()  # 60 patches
    chunks = chunk_patches(p, chunk_size=25, align=6)
    assert [len(c) for c in chunks] == [24, 24, 12]
    np.testing.assert_array_equal(np.concatenate(chunks), np.arange(len(p)))
    with pytest.raises(ValueError, match="pass_offset"):
        map_patches(len, p, pass_offset=True)


def test_aligned_chunks_are_balanced_over_the_worker_threads(client):
    p = _pool()  # 60 patches on 2 worker threads: 60 // (4 chunks x 2 threads) = 7 -> 6, whole batches of 3
    sizes = map_patches(lambda chunk: np.full(len(chunk), len(chunk)), p, client=client, chunk_size=48, align=3)
    assert sizes.tolist() == [6] * 60
    sizes = map_patches(lambda chunk: np.full(len(chunk), len(chunk)), p, client=client, chunk_size=48, align=9)
    assert sizes.tolist() == [9] * 54 + [6] * 6   # never below one batch
    big = map_patches(lambda chunk: np.full(len(chunk), len(chunk)), p, client=client, chunk_size=3, align=3)
    assert big.tolist() == [3] * 60                # chunk_size stays an upper bound


def test_mae_transform_identical_with_and_without_client(client):
    p = _pool()
    mae = MAEPretrainer(preset="tiny", img_size=32, max_epochs=1, batch_size=8, n_components=8,
                        transform_batch_size=3, precision="fp32", random_state=0, progress=False).fit(p[:16])
    torch.set_num_threads(2)  # the reference uses 2 threads, the workers 1
    try:
        ref = mae.transform(p, client=False)
    finally:
        torch.set_num_threads(1)
    out = mae.transform(p, client=client)  # 60 patches in chunks of 6 = 2 batches of 3 (balance)
    np.testing.assert_array_equal(out, ref)
    with client.as_current():  # the active client is used when none is given
        np.testing.assert_array_equal(mae.transform(p), ref)
    shipped = _roundtrip(functools.partial(worker_copy(mae, precision="fp32").transform, client=False))
    np.testing.assert_array_equal(shipped(p[np.arange(24, 48)]), ref[24:48])


def test_segmenter_predict_files_identical(client, tmp_path):
    seg = tiny_segmenter()
    stacks = [make_vessels((2, 48, 56), dtype="uint16", random_state=10 + i)[0] for i in range(3)]
    paths = []
    for i, s in enumerate(stacks[:2]):
        paths.append(tmp_path / f"stack{i}.tif")
        tifffile.imwrite(paths[-1], s, photometric="minisblack", metadata={"axes": "ZYX"})
    items = [str(paths[0]), str(paths[1]), stacks[2]]
    ref = seg.predict_files(items, axes="ZYX", client=False, return_proba=True)
    for r, s in zip(ref, stacks):
        np.testing.assert_array_equal(r, seg.predict_image(s, axes="ZYX", return_proba=True))
    out = seg.predict_files(items, axes="ZYX", client=client, return_proba=True)
    assert len(out) == 3
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    # written to Zarr by the workers: same numbers, and a rerun keeps the finished files
    written = seg.predict_files(items, axes="ZYX", out=tmp_path / "pred", client=client, return_proba=True)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["stack0.zarr", "stack1.zarr", "image2.zarr"]
    zarr = pytest.importorskip("zarr")
    for path, b in zip(written, ref):
        np.testing.assert_array_equal(zarr.open_array(path, mode="r")[...], b)
    again = seg.predict_files(items, axes="ZYX", out=tmp_path / "pred", client=False, return_proba=True)
    assert again == written


def test_hunter_fit_identical_with_and_without_client(client):
    pool = _pool(3, 6)  # 72 patches; chunks of 16 batches of 2
    hunter = MCDropoutHunter(tiny_segmenter(), n_samples=3, batch_size=2, random_state=4)
    ref = hunter.fit(pool, client=False).scores_.copy()
    ref_ranking = hunter.ranking_.copy()
    got = MCDropoutHunter(tiny_segmenter(), n_samples=3, batch_size=2, random_state=4).fit(pool, client=client)
    np.testing.assert_array_equal(got.scores_, ref)
    np.testing.assert_array_equal(got.ranking_, ref_ranking)
    assert "_fit_client" not in vars(got)
    shipped = _roundtrip(functools.partial(worker_copy(hunter)._chunk_scores, seed=hunter.seed_))
    np.testing.assert_array_equal(shipped(pool[np.arange(32, 64)], 32), ref[32:64])
    # the masks of a batch depend on its position only: a run scored alone gives the same scores
    part = hunter._chunk_scores(pool[np.arange(32, 64)], 32, seed=hunter.seed_)
    np.testing.assert_array_equal(part, ref[32:64])


def test_rca_score_many_identical_with_and_without_client(client, tmp_path):
    pairs = [make_vessels((48, 48), random_state=s) for s in range(3)]
    mon = RCAMonitor(n_pixels=600, n_estimators=5, n_jobs=1, normalize="none", random_state=0).fit(
        (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])))
    images, masks = [], []
    for s in range(3):
        img, truth = make_vessels((2, 48, 48), random_state=20 + s)
        images.append(img)
        masks.append(np.roll(truth, 3 * s, axis=2))
    np.save(tmp_path / "img0.npy", images[0])
    images[0] = str(tmp_path / "img0.npy")  # a path is read where the task runs
    ref = mon.score_many(images, masks, axes="ZYX", client=False)
    got = mon.score_many(images, masks, axes="ZYX", client=client, out=tmp_path / "rca.csv")
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        for key in a:
            if key == "timings":
                continue
            if isinstance(a[key], np.ndarray):
                np.testing.assert_array_equal(a[key], b[key])
            elif not isinstance(a[key], dict):
                assert a[key] == b[key], key
    import csv

    rows = list(csv.DictReader(open(tmp_path / "rca.csv")))
    assert [float(r["estimated_dice"]) for r in rows] == [r["estimated_dice"] for r in ref]
    assert rows[0]["image"].endswith("img0.npy") and rows[1]["image"] == "image1"
    assert [r["decision"] for r in rows] == [r["decision"] for r in ref]



def test_nested_calls_inside_tasks_run_locally(client):
    assert resolve_client() is client  # the fixture's client is the default one
    # an estimator called inside a task (e.g. RCA's embedder on a worker) must not submit work
    assert map_items(lambda _: resolve_client() is None, [0, 1], client=client) == [True, True]
    assert resolve_client() is client
