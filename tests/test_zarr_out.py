"""Results written chunk by chunk to Zarr equal the in-memory results, with bounded memory."""

import csv
import json

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")

from biodatacentric import make_vessels  # noqa: E402
from biodatacentric.hunt import MCDropoutHunter  # noqa: E402
from biodatacentric.hunt.aggregate import aggregate  # noqa: E402
from estimator_cases import tiny_segmenter  # noqa: E402
from biodatacentric.parallel import write_table, zarr_output  # noqa: E402
from biodatacentric.segment.sliding import sliding_window_predict  # noqa: E402


class SliceRecorder:
    """An ``out`` target that keeps no data: it records the shape of every write."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.attrs, self.writes = tuple(shape), np.dtype(dtype), {}, []

    def __setitem__(self, key, value):
        self.writes.append((key, np.shape(value)))


def _stack(z=5, h=48, w=56, seed=1):
    return make_vessels((z, h, w), dtype="uint16", random_state=seed)[0]


def test_predict_image_to_zarr_equals_in_memory(tmp_path):
    seg = tiny_segmenter()
    stack = _stack()
    proba = seg.predict_image(stack, axes="ZYX", return_proba=True)
    labels = seg.predict_image(stack, axes="ZYX")
    z = seg.predict_image(stack, axes="ZYX", return_proba=True, out=tmp_path / "p.zarr")
    assert z.chunks == (1, 2, 48, 56)  # one slice per chunk: each write is one whole chunk
    np.testing.assert_array_equal(z[...], proba)
    zl = seg.predict_image(stack, axes="ZYX", out=str(tmp_path / "l.zarr"))
    assert zl.dtype == np.uint8 and zl.chunks == (1, 48, 56)
    np.testing.assert_array_equal(zl[...], labels)
    assert dict(zl.attrs)["biodatacentric"]["axes"] == "ZYX"
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(FileExistsError, match="overwrite"):
        seg.predict_image(stack, axes="ZYX", out=tmp_path / "l.zarr")
    again = seg.predict_image(stack[:2], axes="ZYX", out=tmp_path / "l.zarr", overwrite=True)
    np.testing.assert_array_equal(again[...], seg.predict_image(stack[:2], axes="ZYX"))
    # a 2-D image, and a given Zarr array filled in place
    np.testing.assert_array_equal(seg.predict_image(stack[0], out=tmp_path / "one.zarr")[...],
                                  seg.predict_image(stack[0]))
    target = zarr.open_array(str(tmp_path / "given.zarr"), mode="w", shape=labels.shape, chunks=(1, 48, 56),
                             dtype=np.uint8)
    assert seg.predict_image(stack, axes="ZYX", out=target) is target
    np.testing.assert_array_equal(target[...], labels)


def test_predict_image_reads_tiff_and_zarr_paths_lazily(tmp_path):
    seg = tiny_segmenter()
    stack = _stack(3)
    ref = seg.predict_image(stack, axes="ZYX", return_proba=True)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack", metadata={"axes": "ZYX"})
    src = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=stack.shape, chunks=(1, 48, 56),
                          dtype=stack.dtype)
    src[...] = stack
    for path in (tmp_path / "s.tif", str(tmp_path / "s.zarr")):
        np.testing.assert_array_equal(seg.predict_image(path, axes="ZYX", return_proba=True), ref)


def test_prediction_writer_holds_one_slice_at_a_time():
    seg = tiny_segmenter()
    stack = _stack(z=6)
    rec = SliceRecorder((6, 2, 48, 56), np.float32)
    assert seg.predict_image(stack, axes="ZYX", return_proba=True, out=rec) is rec
    assert [k for k, _ in rec.writes] == list(range(6))  # each slice written once, in order
    assert {s for _, s in rec.writes} == {(2, 48, 56)}   # ... and only one slice per write
    # the sliding-window loop holds only the slices whose windows are in flight
    stats = {}
    rec = SliceRecorder((6, 48, 56), np.uint8)
    sliding_window_predict(lambda z: np.zeros((48, 56), np.float32), 6, (48, 56), seg._window_proba, 2,
                           tuple(seg.patch_shape_), batch_size=4, return_proba=False, out=rec, stats=stats)
    assert stats["max_slices_in_flight"] <= 2 and len(rec.writes) == 6
    with pytest.raises(ValueError, match="out has shape"):
        seg.predict_image(stack, axes="ZYX", out=SliceRecorder((5, 48, 56), np.uint8))


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with zarr_output(tmp_path / "x.zarr", {None: ((4, 8), (1, 8), np.float32)}) as arrays:
            arrays[None][0] = 1.0
            raise RuntimeError("boom")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.zarr.partial").exists()
    (tmp_path / "y.zarr.partial").mkdir()  # left by a killed run: started again
    with zarr_output(tmp_path / "y.zarr", {"a": ((2, 3), (1, 3), np.uint8)}) as arrays:
        arrays["a"][...] = 7
    assert (zarr.open_group(str(tmp_path / "y.zarr"), mode="r")["a"][...] == 7).all()
    assert not (tmp_path / "y.zarr.partial").exists()


def test_hunter_uncertainty_maps_to_zarr(tmp_path):
    from biodatacentric import Patches

    img = make_vessels((3, 64, 64), random_state=2)[0]
    pool = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32))  # 12 patches
    hunter = MCDropoutHunter(tiny_segmenter(), n_samples=3, aggregate="top_q", batch_size=5, random_state=0).fit(pool)
    maps = hunter.uncertainty_maps(pool)
    written = hunter.uncertainty_maps(pool, out=tmp_path / "maps.zarr")
    assert written.keys() == maps.keys()
    for key in maps:
        assert written[key].chunks == (5, 32, 32)  # one batch per chunk
        np.testing.assert_array_equal(written[key][...], maps[key])
    # the maps of the scored patches agree with the scores of fit (same seeded passes)
    np.testing.assert_allclose(aggregate(maps["mutual_information"], "top_q", top_q=hunter.top_q), hunter.scores_,
                               rtol=1e-6)


def test_write_table_csv_and_json(tmp_path):
    rows = [{"index": 0, "estimated_dice": 0.5}, {"index": 1, "estimated_dice": 0.75, "passed": True}]
    write_table(tmp_path / "t.csv", rows)
    got = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["estimated_dice"] for r in got] == ["0.5", "0.75"] and got[1]["passed"] == "True"
    write_table(tmp_path / "t.json", rows)
    assert json.loads((tmp_path / "t.json").read_text()) == rows
    with pytest.raises(ValueError, match="csv or .json"):
        write_table(tmp_path / "t.txt", rows)
