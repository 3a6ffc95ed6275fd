"""Reading images and masks: odd file names, same-name files in several folders, RGB and
damaged TIFFs get either the right pixels or an error that names the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from biodatacentric import Patches, make_vessels

from .conftest import untouched


def _write(path, arr, axes="ZYX", **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, photometric=kw.pop("photometric", "minisblack"), metadata={"axes": axes}, **kw)
    return path


def _pair(seed, shape=(1, 32, 32)):
    img, mask = make_vessels(shape, dtype="uint8", random_state=seed)
    return img, mask


# ---------------------------------------------------------------- glob characters in names
@pytest.mark.parametrize("name", ["sample [1].tif", "scan*.tif", "what?.tif"])
def test_existing_path_with_glob_characters_is_taken_literally(tmp_path, name):
    img, mask = _pair(0)
    path = _write(tmp_path / "images" / name, img)
    _write(tmp_path / "masks" / name, mask)
    decoy = name.replace("[1]", "1").replace("*", "X").replace("?", "X")  # what the pattern matches too
    _write(tmp_path / "images" / decoy, img)
    with untouched(tmp_path):
        for given in (path, str(path), [str(path)]):
            p = Patches.from_tiff(given, axes="ZYX", patch_shape=(16, 16), normalize="none",
                                  masks=tmp_path / "masks")
            assert p.sources == [str(path)]
            np.testing.assert_array_equal(p.stitch(p.images())[0], img[0])
            np.testing.assert_array_equal(p.stitch(p.masks())[0], mask[0])
        p = Patches.from_tiff(path, axes="ZYX", patch_shape=(16, 16), masks=[tmp_path / "masks" / name])
        assert p.has_masks


def test_folder_with_brackets_in_its_name(tmp_path):
    folder = tmp_path / "run [1]"
    img, _ = _pair(1)
    _write(folder / "a.tif", img)
    _write(folder / "b.tif", img)
    (tmp_path / "run 1").mkdir()  # what the bracket pattern would match instead
    _write(tmp_path / "run 1" / "decoy.tif", img)
    with untouched(tmp_path):
        p = Patches.from_tiff(folder, axes="ZYX", patch_shape=(16, 16))
    assert [s.rsplit("/", 1)[1] for s in p.sources] == ["a.tif", "b.tif"]


def test_pattern_that_matches_nothing_names_the_pattern(tmp_path):
    with untouched(tmp_path):
        with pytest.raises(FileNotFoundError, match=r"the pattern .*sample \[2\]\.tif' matches no files"):
            Patches.from_tiff(str(tmp_path / "sample [2].tif"), axes="ZYX", patch_shape=(16, 16))


# ---------------------------------------------------------------- same file name, two folders
@pytest.fixture
def two_days(tmp_path):
    out = {}
    for k, day in enumerate(["day1", "day2"]):
        img, mask = _pair(k + 3)
        out[day] = (_write(tmp_path / "images" / day / "stack.tif", img), img, mask)
    return tmp_path, out


def test_masks_folder_with_one_mask_for_two_same_name_images_is_refused(two_days):
    root, days = two_days
    _write(root / "masks" / "stack.tif", days["day1"][2])
    with untouched(root):
        with pytest.raises(ValueError, match=r"day1.stack\.tif, .*day2.stack\.tif share the file name stack\.tif"
                                             r".*masks.stack\.tif would serve all of them.*sub-folder"):
            Patches.from_tiff([days["day1"][0], days["day2"][0]], axes="ZYX", patch_shape=(16, 16),
                              masks=root / "masks")


def test_masks_folder_mirroring_subfolders_pairs_each_image_with_its_own_mask(two_days):
    root, days = two_days
    for day in days:
        _write(root / "masks" / day / "stack.tif", days[day][2])
    with untouched(root):
        p = Patches.from_tiff([days["day1"][0], days["day2"][0]], axes="ZYX", patch_shape=(32, 32),
                              masks=root / "masks")
    for k, day in enumerate(days):
        np.testing.assert_array_equal(p.masks([k])[0], days[day][2][0])


def test_mask_list_with_one_mask_for_two_same_name_images_is_refused(two_days):
    root, days = two_days
    m = _write(root / "masks" / "stack.tif", days["day1"][2])
    with untouched(root):
        with pytest.raises(ValueError, match=r"images .*day1.stack\.tif, .*day2.stack\.tif share the file name"):
            Patches.from_tiff([days["day1"][0], days["day2"][0]], axes="ZYX", patch_shape=(16, 16), masks=[m])


def test_mask_list_with_two_same_name_masks_for_one_image_is_refused(two_days):
    root, days = two_days
    m1 = _write(root / "m" / "a" / "stack.tif", days["day1"][2])
    m2 = _write(root / "m" / "b" / "stack.tif", days["day2"][2])
    with untouched(root):
        with pytest.raises(ValueError, match=r"mask files .*a.stack\.tif, .*b.stack\.tif share the file name"):
            Patches.from_tiff(days["day1"][0], axes="ZYX", patch_shape=(16, 16), masks=[m1, m2])


def test_zarr_stores_with_the_same_name_and_masks_are_refused(tmp_path):
    zarr = pytest.importorskip("zarr")
    paths = []
    for day in ("day1", "day2"):
        path = str(tmp_path / day / "plate.zarr")
        z = zarr.open_array(path, mode="w", shape=(1, 16, 16), dtype="uint8")
        z[...] = 1
        paths.append(path)
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=r"day1.plate\.zarr, .*day2.plate\.zarr share the name plate\.zarr"):
            Patches.from_zarr(paths, axes="ZYX", patch_shape=(16, 16), masks=tmp_path / "masks")


# ---------------------------------------------------------------- RGB TIFFs
@pytest.fixture(params=[None, "zlib"], ids=["raw", "zlib"])
def rgb_file(tmp_path, request):
    rgb = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression=request.param)
    return path, rgb


def test_rgb_tiff_with_grey_axes_says_how_to_read_it(rgb_file):
    path, _ = rgb_file
    with untouched(path.parent):
        with pytest.raises(ValueError, match=r"photo\.tif is an RGB TIFF .*pass axes='YXS' and channel=<0\.\.2>"):
            Patches.from_tiff(path, axes="YX", patch_shape=(16, 16))


def test_rgb_tiff_without_channel_names_the_choice(rgb_file):
    path, _ = rgb_file
    with untouched(path.parent):
        with pytest.raises(ValueError, match=r"photo\.tif has 3 channels .*channel=<0\.\.2>"):
            Patches.from_tiff(path, axes="YXS", patch_shape=(16, 16))
        with pytest.raises(ValueError, match=r"channel=3 is outside the 3 channels of .*photo\.tif"):
            Patches.from_tiff(path, axes="YXS", channel=3, patch_shape=(16, 16))


@pytest.mark.parametrize("axes", ["YXS", "YXC", "yxs"])
def test_rgb_tiff_reads_the_chosen_channel(rgb_file, axes):
    path, rgb = rgb_file
    mask = (rgb[..., 0] > 128).astype(np.uint8)
    _write(path.parent / "masks" / "photo.tif", mask, axes="YX")
    with untouched(path.parent):
        p = Patches.from_tiff(path, axes=axes, channel=1, patch_shape=(16, 16), normalize="none",
                              masks=path.parent / "masks")
        np.testing.assert_array_equal(p.stitch(p.images())[0], rgb[..., 1])
        np.testing.assert_array_equal(p.stitch(p.masks())[0], mask)


def test_rgb_array_reads_the_chosen_channel():
    rgb = np.random.default_rng(1).random((3, 16, 16, 3)).astype(np.float32)
    p = Patches.from_arrays(rgb, axes="ZYXC", channel=2, normalize="none")
    np.testing.assert_array_equal(p.images(), rgb[..., 2])


# ---------------------------------------------------------------- damaged files
def _damage(kind, path):
    good = np.random.default_rng(0).integers(0, 2, (2, 32, 32), dtype=np.uint8)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    else:
        _write(path, good)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_damaged_mask_is_named(tmp_path, kind):
    img, _ = make_vessels((2, 32, 32), dtype="uint8", random_state=0)
    image = _write(tmp_path / "images" / "s.tif", img)
    (tmp_path / "masks").mkdir()
    _damage(kind, tmp_path / "masks" / "s.tif")
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=r"cannot read .*masks.s\.tif as a TIFF.*(corrupt|truncated)"):
            Patches.from_tiff(image, axes="ZYX", patch_shape=(16, 16), masks=tmp_path / "masks")


@pytest.mark.parametrize("kind", ["empty", "text"])
def test_damaged_image_is_named(tmp_path, kind):
    path = tmp_path / "broken.tif"
    _damage(kind, path)
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=r"cannot read .*broken\.tif as a TIFF"):
            Patches.from_tiff(path, axes="ZYX", patch_shape=(16, 16))


def test_patch_larger_than_image_names_image_and_size(tmp_path):
    path = _write(tmp_path / "tiny.tif", np.zeros((1, 20, 40), np.uint8))
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=re.escape("patch_shape=(32, 32) is larger than the image ")
                           + r".*tiny\.tif \(20x40 pixels\)"):
            Patches.from_tiff(path, axes="ZYX", patch_shape=(32, 32))


# ---------------------------------------------------------------- empty selections
def test_empty_inputs_are_named(tmp_path):
    from biodatacentric.data import as_patches

    img, _ = make_vessels((1, 32, 32), dtype="uint8", random_state=0)
    path = _write(tmp_path / "s.tif", img)
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=r"no images given: the list of paths is empty"):
            Patches.from_tiff([], axes="ZYX", patch_shape=(16, 16))
        with pytest.raises(ValueError, match=r"every patch is empty under empty_threshold=2"):
            Patches.from_tiff(path, axes="ZYX", patch_shape=(16, 16), empty_threshold=2)
        none = Patches.from_tiff(path, axes="ZYX", patch_shape=(16, 16))[[]]
        with pytest.raises(ValueError, match=r"pool is empty"):
            as_patches(none, name="pool")
        with pytest.raises(FileNotFoundError, match=r"the folder .*empty holds no \.tif/\.tiff files"):
            (tmp_path / "empty").mkdir()
            Patches.from_tiff(tmp_path / "empty", axes="ZYX", patch_shape=(16, 16))
