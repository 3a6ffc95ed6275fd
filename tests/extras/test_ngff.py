"""OME-NGFF output of predict_image (extra: ome-zarr, i.e. ngff-zarr[validate])."""

import json

import numpy as np
import pytest

ngff_zarr = pytest.importorskip("ngff_zarr")
pytest.importorskip("jsonschema")

from biodatacentric import Patches, TransUNetSegmenter, make_vessels  # noqa: E402
from biodatacentric.ngff import write_image_zarr  # noqa: E402
from biodatacentric.data.writers import write_tiff  # noqa: E402
from biodatacentric.parallel import read_array  # noqa: E402


@pytest.fixture(scope="module")
def seg():
    img, mask = make_vessels((2, 64, 64), random_state=0)
    p = Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(32, 32))
    return TransUNetSegmenter(preset="tiny", max_epochs=1, random_state=0, progress=False).fit(p), img


def _root_attrs(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]


def test_prediction_is_valid_ngff_with_pixel_size(seg, tmp_path):
    est, img = seg
    tif = write_tiff(tmp_path / "in.tif", img, axes="ZYX", pixel_size=(3.0, 0.5, 0.25))
    out = tmp_path / "pred.zarr"
    z = est.predict_image(tif, axes="ZYX", out=out)
    attrs = _root_attrs(out)
    ngff_zarr.validate(attrs, version="0.5", model="image", strict=False)  # the NGFF JSON schema
    ms = attrs["ome"]["multiscales"][0]
    assert [(a["name"], a["type"], a.get("unit")) for a in ms["axes"]] == [
        ("z", "space", "micrometer"), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    assert attrs["biodatacentric"]["content"] == "labels"
    back = ngff_zarr.from_ngff_zarr(str(out))  # read back with the library
    image = back.images[0]
    assert image.dims == ("z", "y", "x")
    assert image.scale == pytest.approx({"z": 3.0, "y": 0.5, "x": 0.25})
    labels = est.predict_image(img, axes="ZYX")
    np.testing.assert_array_equal(np.asarray(image.data), labels)
    np.testing.assert_array_equal(z[...], labels)
    np.testing.assert_array_equal(read_array(out), labels)


def test_probabilities_have_a_channel_axis_and_unit_scale(seg, tmp_path):
    est, img = seg
    out = tmp_path / "proba.zarr"
    est.predict_image(img[0], axes="YX", out=out, return_proba=True)
    attrs = _root_attrs(out)
    ngff_zarr.validate(attrs, version="0.5", model="image")
    ms = attrs["ome"]["multiscales"][0]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    back = ngff_zarr.from_ngff_zarr(str(out)).images[0]
    assert back.dims == ("c", "y", "x") and back.data.shape == (2, 64, 64)


def test_plain_zarr_when_asked(tmp_path):
    def fill(arr):
        arr[...] = 1

    z = write_image_zarr(tmp_path / "plain.zarr", (4, 4), (4, 4), "uint8", fill, axes="YX", ngff=False)
    assert "ome" not in _root_attrs(tmp_path / "plain.zarr") and int(z[...].sum()) == 16
    with pytest.raises(ValueError, match="axes='ZYX' has 3 letters"):
        write_image_zarr(tmp_path / "bad.zarr", (4, 4), (4, 4), "uint8", fill, axes="ZYX")
    assert not (tmp_path / "bad.zarr").exists()
