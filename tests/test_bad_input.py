"""Bad input gets a clear error naming the file or parameter, and user files are untouched."""

import numpy as np
import pytest
import tifffile

from biodatacentric import Patches
from tests.conftest import file_digest


def _write(path, arr, axes="ZYX"):
    tifffile.imwrite(path, arr, photometric="minisblack", metadata={"axes": axes})
    return path


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        Patches.from_tiff(missing, axes="ZYX", patch_shape=(8, 8))


def test_empty_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"matches no files"):
        Patches.from_tiff(str(tmp_path / "*.tif"), axes="ZYX", patch_shape=(8, 8))


def test_corrupt_tiff(tmp_path):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(200))
    digest = file_digest(bad)
    with pytest.raises(ValueError, match="corrupt.tif"):
        Patches.from_tiff(bad, axes="ZYX", patch_shape=(8, 8))
    assert file_digest(bad) == digest


def test_truncated_tiff(tmp_path):
    good = _write(tmp_path / "full.tif", np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8))
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.tif.*(truncated|corrupt)"):
        Patches.from_tiff(cut, axes="ZYX", patch_shape=(8, 8))


def test_unknown_axes_string(tmp_path):
    p = _write(tmp_path / "a.tif", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="axes='QYX'"):
        Patches.from_tiff(p, axes="QYX", patch_shape=(8, 8))


def test_axes_not_matching_dimensions(tmp_path):
    p = _write(tmp_path / "a.tif", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="a.tif"):
        Patches.from_tiff(p, axes="YX", patch_shape=(8, 8))
    with pytest.raises(ValueError, match="describes 3 dimensions"):
        Patches.from_arrays(np.zeros((16, 16)), axes="ZYX")


def test_axes_contradicting_file_metadata(tmp_path):
    p = _write(tmp_path / "c.tif", np.zeros((2, 3, 16, 16), np.uint8), axes="CZYX")
    with pytest.raises(ValueError, match="declares axes 'CZYX'"):
        Patches.from_tiff(p, axes="ZCYX", patch_shape=(8, 8))


def test_patch_larger_than_image(tmp_path):
    p = _write(tmp_path / "small.tif", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"larger than the image .*small.tif"):
        Patches.from_tiff(p, axes="ZYX", patch_shape=(32, 32))


def test_nan_pixels(tmp_path):
    arr = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    arr[1, 3, 3] = np.nan
    p = _write(tmp_path / "nan.tif", arr)
    patches = Patches.from_tiff(p, axes="ZYX", patch_shape=(8, 8), normalize="none")
    with pytest.raises(ValueError, match=r"nan.tif.*z=1.*NaN"):
        patches.images()


def test_constant_image(tmp_path):
    p = _write(tmp_path / "flat.tif", np.full((2, 16, 16), 7, np.uint16))
    patches = Patches.from_tiff(p, axes="ZYX", patch_shape=(8, 8))
    with pytest.raises(ValueError, match=r"flat.tif is constant.*normalize='none'"):
        patches.images()
    ok = Patches.from_tiff(p, axes="ZYX", patch_shape=(8, 8), normalize="none")
    assert ok.images().max() == 7


def test_mask_shape_mismatch(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = _write(tmp_path / "images" / "s.tif", np.zeros((2, 16, 16), np.uint8))
    _write(tmp_path / "masks" / "s.tif", np.zeros((2, 16, 15), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*s.tif has shape"):
        Patches.from_tiff(img, axes="ZYX", patch_shape=(8, 8), masks=tmp_path / "masks")
    with pytest.raises(ValueError, match="does not match|must match"):
        Patches.from_arrays(np.zeros((16, 16)), masks=np.zeros((16, 15)))


def test_missing_mask_file(tmp_path):
    (tmp_path / "masks").mkdir()
    img = _write(tmp_path / "lonely.tif", np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(FileNotFoundError, match="no mask for .*lonely.tif"):
        Patches.from_tiff(img, axes="ZYX", patch_shape=(8, 8), masks=tmp_path / "masks")


def test_non_binary_mask(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = _write(tmp_path / "images" / "s.tif", np.random.default_rng(0).random((1, 16, 16)).astype(np.float32))
    _write(tmp_path / "masks" / "s.tif", np.arange(256, dtype=np.uint8).reshape(1, 16, 16) % 3)
    p = Patches.from_tiff(img, axes="ZYX", patch_shape=(8, 8), masks=tmp_path / "masks")
    with pytest.raises(ValueError, match=r"must be binary .*values 0, 1, 2"):
        p.masks()
    with pytest.raises(ValueError, match="must be binary"):
        Patches.from_arrays(np.zeros((8, 8)), masks=np.full((8, 8), 3))


def test_export_into_folder_with_masks_touches_nothing(tmp_path):
    p = Patches.from_arrays(np.random.default_rng(0).random((2, 16, 16)), axes="ZYX")
    out = tmp_path / "annot"
    (out / "masks").mkdir(parents=True)
    precious = out / "masks" / "someone_painted_this.tif"
    tifffile.imwrite(precious, np.ones((16, 16), np.uint8))
    digest = file_digest(precious)
    with pytest.raises(FileExistsError, match=r"annot.*masks.*already holds 1 mask.*new folder"):
        p.export(out)
    assert file_digest(precious) == digest
    assert not (out / "images").exists() and not (out / "manifest.json").exists()


def test_bad_parameters():
    arr = np.zeros((16, 16))
    with pytest.raises(ValueError, match="patch_shape"):
        Patches.from_arrays(arr, patch_shape=(0, 8))
    with pytest.raises(ValueError, match="stride"):
        Patches.from_arrays(arr, patch_shape=(8, 8), stride="big")
    with pytest.raises(ValueError, match="normalize='zscore'"):
        Patches.from_arrays(arr, normalize="zscore")
    with pytest.raises(IndexError, match="out of range"):
        Patches.from_arrays(arr)[5]
