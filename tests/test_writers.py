"""Predictions leave the library as files Fiji and napari open at scale: ImageJ TIFF with the
input's pixel size, Zarr for large stacks, and an error for any other suffix."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from biodatacentric import Patches, TransUNetSegmenter, make_vessels
from biodatacentric.data.writers import read_pixel_size, write_tiff
from tests.conftest import file_digest


@pytest.fixture(scope="module")
def seg():
    img, mask = make_vessels((2, 64, 64), random_state=0)
    p = Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(32, 32))
    return TransUNetSegmenter(preset="tiny", max_epochs=1, random_state=0).fit(p)


def test_prediction_tiff_keeps_the_input_pixel_size(seg, tmp_path):
    img, _ = make_vessels((3, 64, 64), dtype="uint16", random_state=1)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, img, imagej=True, resolution=(1 / 0.621, 1 / 0.621),
                     metadata={"axes": "ZYX", "spacing": 5.0, "unit": "um"})
    assert read_pixel_size(src) == pytest.approx((5.0, 0.621, 0.621))
    labels = seg.predict_image(str(src), axes="ZYX", out=tmp_path / "pred.tif")
    with tifffile.TiffFile(tmp_path / "pred.tif") as tf:
        assert tf.is_imagej and tf.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tf.asarray(), labels)
    assert read_pixel_size(tmp_path / "pred.tif") == pytest.approx((5.0, 0.621, 0.621))
    proba = seg.predict_image(str(src), axes="ZYX", return_proba=True, out=tmp_path / "proba.tiff")
    with tifffile.TiffFile(tmp_path / "proba.tiff") as tf:
        assert tf.series[0].axes == "ZCYX" and tf.asarray().dtype == np.float32
        np.testing.assert_allclose(tf.asarray(), proba)


@pytest.mark.parametrize("name", ["pred.png", "pred", "pred.npy"])
def test_unknown_output_suffix_is_refused_before_any_work(seg, tmp_path, name):
    with pytest.raises(ValueError, match=r"out=.*must end in \.tif, \.tiff or \.zarr"):
        seg.predict_image(np.zeros((64, 64), np.float32), out=tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_existing_prediction_is_not_replaced(seg, tmp_path):
    target = tmp_path / "pred.tif"
    target.write_bytes(b"a person's file")
    digest = file_digest(target)
    with pytest.raises(FileExistsError, match="pred.tif exists; pass overwrite=True"):
        seg.predict_image(np.zeros((64, 64), np.float32), out=target)
    assert file_digest(target) == digest
    seg.predict_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), out=target, overwrite=True)
    assert tifffile.imread(target).shape == (64, 64)


def test_files_without_scale_report_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    assert read_pixel_size(plain) == (None, None, None)
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, np.zeros((4, 4), np.uint8), resolution=(10000 / 2.0, 10000 / 2.0), resolutionunit=3)
    assert read_pixel_size(cm) == pytest.approx((None, 2.0, 2.0))


def test_write_tiff_rejects_mismatched_axes(tmp_path):
    with pytest.raises(ValueError, match="axes='YX' does not describe an array of shape"):
        write_tiff(tmp_path / "a.tif", np.zeros((2, 4, 4), np.uint8), axes="YX")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        (tmp_path / "d.tif").mkdir()
        write_tiff(tmp_path / "d.tif", np.zeros((4, 4), np.uint8), axes="YX")

