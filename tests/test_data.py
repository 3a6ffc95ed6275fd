"""Patches: indexing, laziness, normalisation, views, torch adapter, stitching, round trip."""

import json

import numpy as np
import pytest
import tifffile
import torch

from biodatacentric import Normalization, Patches, load_folder, load_sample, make_vessels
from biodatacentric.data import annotation_status
from biodatacentric.data.readers import TiffSource, slice_cache


def test_from_arrays_covers_every_pixel_and_shifts_last_patch(rng):
    img = rng.random((70, 90)).astype(np.float32)
    p = Patches.from_arrays(img, axes="YX", patch_shape=(32, 32), normalize="none")
    ys = sorted(set(p.index["y"]))
    xs = sorted(set(p.index["x"]))
    assert ys == [0, 32, 38] and xs == [0, 32, 58]
    back = p.stitch(p.images())
    np.testing.assert_array_equal(back[0], img)


def test_stride_and_overlap_averaging(rng):
    img = rng.random((2, 40, 40)).astype(np.float32)
    p = Patches.from_arrays(img, axes="ZYX", patch_shape=(20, 20), stride=10, normalize="none")
    assert len(p) == 2 * 3 * 3
    ones = np.ones((len(p), 20, 20), np.float32) * np.arange(len(p))[:, None, None]
    out = p.stitch(ones)
    # the centre pixel (20, 20) of slice 0 is covered by patches starting at 10 and 20 in y and x
    covering = [i for i in range(9) if p.index["y"][i] in (10, 20) and p.index["x"][i] in (10, 20)]
    assert out[0, 20, 20] == pytest.approx(np.mean(covering))
    assert not np.isnan(out).any()


def test_from_tiff_is_lazy_and_reads_on_demand(stack_files, monkeypatch):
    folder, paths = stack_files
    calls = []
    orig = TiffSource._read_raw_slice
    monkeypatch.setattr(TiffSource, "_read_raw_slice", lambda self, z: calls.append(z) or orig(self, z))
    p = Patches.from_tiff(str(folder / "images" / "*.tif"), axes="ZYX", patch_shape=(32, 32),
                          masks=folder / "masks")
    assert calls == []  # indexing reads no pixels
    assert len(p) == 3 * 3 * 3 + 2 * 2 * 2
    assert p.has_masks
    p.images([0])
    assert len(calls) > 0


def test_tiff_patches_match_file_content(stack_files):
    folder, paths = stack_files
    p = Patches.from_tiff([str(x) for x in paths], axes="ZYX", patch_shape=(32, 32), masks=folder / "masks")
    raw = tifffile.imread(paths[0])
    mask = tifffile.imread(folder / "masks" / "stack0.tif")
    i = 5
    s, z, y, x = (int(v) for v in p.index[i])
    assert s == 0
    np.testing.assert_array_equal(p.raw([i])[0], raw[z, y:y + 32, x:x + 32])
    assert p.raw([i]).dtype == np.uint16  # raw dtype kept
    np.testing.assert_array_equal(p.masks([i])[0], mask[z, y:y + 32, x:x + 32])
    lo, hi = np.percentile(raw[np.unique(np.linspace(0, 2, 3).astype(int))].ravel(), [0.5, 99.8])
    expected = np.clip((raw[z, y:y + 32, x:x + 32].astype(np.float32) - lo) * np.float32(1 / (hi - lo)), 0, 1)
    np.testing.assert_allclose(p.images([i])[0], expected, rtol=1e-5, atol=1e-6)
    patch = p[i]
    assert patch.source == str(paths[0]) and (patch.z, patch.y, patch.x) == (z, y, x)


def test_compressed_tiff_uses_bounded_cache(tmp_path):
    img, _ = make_vessels((4, 64, 64), dtype="uint8", random_state=3)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, img, compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    slice_cache.clear()
    p = Patches.from_tiff(str(path), axes="ZYX", patch_shape=(32, 32), normalize="none")
    np.testing.assert_array_equal(p.images(), img.reshape(4, 2, 32, 2, 32).transpose(0, 1, 3, 2, 4).reshape(-1, 32, 32))
    assert 0 < slice_cache.nbytes <= slice_cache.max_bytes


def test_yx_and_czyx_with_channel(tmp_path):
    a = np.arange(2 * 3 * 40 * 40, dtype=np.uint16).reshape(2, 3, 40, 40)
    tifffile.imwrite(tmp_path / "czyx.tif", a, photometric="minisblack", metadata={"axes": "CZYX"})
    p = Patches.from_tiff(tmp_path / "czyx.tif", axes="CZYX", channel=1, patch_shape=(40, 40), normalize="none")
    assert len(p) == 3
    np.testing.assert_array_equal(p.images([2])[0], a[1, 2].astype(np.float32))
    with pytest.raises(ValueError, match="channel"):
        Patches.from_tiff(tmp_path / "czyx.tif", axes="CZYX", patch_shape=(40, 40))
    tifffile.imwrite(tmp_path / "yx.tif", a[0, 0], metadata={"axes": "YX"})
    q = Patches.from_tiff(tmp_path / "yx.tif", axes="YX", patch_shape=(20, 20))
    assert len(q) == 4 and q.images().shape == (4, 20, 20)


@pytest.mark.parametrize("spec,check", [
    ("none", lambda out, raw: np.allclose(out, raw)),
    ("minmax", lambda out, raw: np.isclose(out.min(), 0) and np.isclose(out.max(), 1)),
    ((10.0, 5.0), lambda out, raw: np.allclose(out, (raw - 10) / 5)),
    (Normalization("percentile", low=1, high=99), lambda out, raw: 0 <= out.min() and out.max() <= 1),
])
def test_normalisation_options(spec, check, rng):
    raw = (rng.random((1, 32, 32)) * 100).astype(np.float32)
    p = Patches.from_arrays(raw, axes="ZYX", normalize=spec)
    out = p.images()
    assert out.dtype == np.float32
    assert check(out, raw)
    info = p.normalization()[0]
    assert {"offset", "scale", "method"} <= set(info)


def test_views_concat_and_batches(stack_files):
    folder, paths = stack_files
    p = Patches.from_tiff(str(folder / "images"), axes="ZYX", patch_shape=(32, 32), masks=folder / "masks")
    sel = p[[3, 1, 7]]
    assert len(sel) == 3
    np.testing.assert_array_equal(sel.images(), p.images([3, 1, 7]))
    assert list(sel.provenance().z) == list(p.provenance().z[[3, 1, 7]])
    boolmask = np.zeros(len(p), bool)
    boolmask[::5] = True
    assert len(p[boolmask]) == boolmask.sum()
    both = Patches.concat([p[:4], p[10:12]])
    assert len(both) == 6 and both.has_masks
    np.testing.assert_array_equal(both.images(), np.concatenate([p.images(range(4)), p.images([10, 11])]))
    seen = np.concatenate([idx for _, _, idx in p.iter_batches(8)])
    np.testing.assert_array_equal(seen, np.arange(len(p)))


def test_torch_dataset_augmentation_is_seeded_and_keeps_masks_aligned():
    img, mask = make_vessels((64, 64), random_state=2)
    p = Patches.from_arrays(img, axes="YX", patch_shape=(32, 32), masks=mask, normalize="none")
    ds = p.torch_dataset(augment=True, seed=5)
    x1, y1 = ds[1]
    x2, y2 = ds[1]
    assert x1.shape == (1, 32, 32) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    ds.set_epoch(1)
    # geometric transforms move image and mask together: the original patch, transformed by one
    # of the 8 square symmetries, must reproduce the mask exactly
    orig_mask = p.masks([1])[0]
    variants = [np.rot90(orig_mask, k) for k in range(4)] + [np.rot90(orig_mask, k)[:, ::-1] for k in range(4)]
    _, ym = ds[1]
    assert any(np.array_equal(ym.numpy(), v) for v in variants)


def test_export_read_annotations_round_trip(stack_files, tmp_path):
    folder, paths = stack_files
    p = Patches.from_tiff(str(folder / "images"), axes="ZYX", patch_shape=(32, 32), masks=folder / "masks")
    core = p[[0, 4, 30]]
    out = tmp_path / "annot"
    core.export(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["patches"]) == 3
    # a person paints masks: here the true masks, saved beside the images with the same name
    (out / "masks").mkdir()
    true = core.masks()
    for e, m in zip(manifest["patches"], true):
        tifffile.imwrite(out / e["mask"], (m * 255).astype(np.uint8))  # Fiji-style 0/255
    back = Patches.read_annotations(out)
    np.testing.assert_array_equal(back.images(), core.images())
    np.testing.assert_array_equal(back.masks(), true)
    prov, orig = back.provenance(), core.provenance()
    assert list(prov.source) == list(orig.source)
    assert list(zip(prov.z, prov.y, prov.x)) == list(zip(orig.z, orig.y, orig.x))


def test_export_with_starting_masks_never_overwrites(stack_files, tmp_path):
    folder, _ = stack_files
    p = Patches.from_tiff(str(folder / "images"), axes="ZYX", patch_shape=(32, 32))
    crit = p[[2, 5]]
    pred = np.zeros((2, 32, 32), np.uint8)
    pred[:, 10:20, 10:20] = 1
    out = tmp_path / "crit"
    crit.export(out, masks=pred, mask_origin="prediction M0")
    status = annotation_status(out)
    assert [s["edited"] for s in status] == [False, False]
    # the person corrects one mask
    first = sorted((out / "masks").iterdir())[0]
    corrected = np.ones((32, 32), np.uint8)
    tifffile.imwrite(first, corrected)
    before = first.read_bytes()
    with pytest.raises(FileExistsError, match="already holds 2 mask"):
        crit.export(out, masks=pred)
    assert first.read_bytes() == before
    crit.export(out, masks=pred, on_existing="keep")
    assert first.read_bytes() == before
    assert [s["edited"] for s in annotation_status(out)] == [True, False]
    back = Patches.read_annotations(out)
    np.testing.assert_array_equal(back.masks([0])[0], corrected)


def test_read_annotations_detects_modified_images_and_missing_masks(stack_files, tmp_path):
    folder, _ = stack_files
    p = Patches.from_tiff(str(folder / "images"), axes="ZYX", patch_shape=(32, 32))
    out = tmp_path / "a"
    p[[0, 1]].export(out)
    with pytest.raises(FileNotFoundError, match="no masks found"):
        Patches.read_annotations(out)
    m = json.loads((out / "manifest.json").read_text())["patches"]
    (out / "masks").mkdir()
    tifffile.imwrite(out / m[0]["mask"], np.zeros((32, 32), np.uint8))
    with pytest.warns(UserWarning, match="1 of 2"):
        assert len(Patches.read_annotations(out)) == 1
    with pytest.raises(FileNotFoundError, match="have no mask"):
        Patches.read_annotations(out, require_all=True)
    tifffile.imwrite(out / m[0]["image"], np.zeros((32, 32), np.uint16))
    with pytest.raises(ValueError, match="hash"):
        Patches.read_annotations(out)


def test_with_masks_keeps_images_and_provenance(rng):
    img = rng.random((2, 32, 32)).astype(np.float32)
    p = Patches.from_arrays(img, axes="ZYX", patch_shape=(16, 16))
    m = (rng.random((len(p), 16, 16)) > 0.5).astype(np.uint8)
    q = p.with_masks(m)
    np.testing.assert_array_equal(q.images(), p.images())
    np.testing.assert_array_equal(q.masks(), m)
    assert list(q.provenance().y) == list(p.provenance().y)


def test_empty_threshold_skips_blank_patches():
    img = np.zeros((64, 64), np.float32)
    img[:32, :32] = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    p = Patches.from_arrays(img, axes="YX", patch_shape=(32, 32), normalize="none", empty_threshold=0.0)
    assert len(p) == 1 and p[0].y == 0 and p[0].x == 0


def test_bundled_sample_and_folder_loader(stack_files):
    s = load_sample(patch_shape=(64, 64))
    assert s.image.shape == (64, 128, 128) and s.mask.shape == s.image.shape
    assert set(np.unique(s.mask)) == {0, 1}
    assert "tUbeNet" in s.citation
    assert len(s.patches) == 64 * 4 and s.patches.has_masks
    folder, _ = stack_files
    p = load_folder(folder, patch_shape=(32, 32), names=["stack1"])
    assert p.n_sources == 1 and p.has_masks


def test_make_vessels_is_seeded_2d_and_3d():
    a, ma = make_vessels((96, 96), random_state=7)
    b, mb = make_vessels((96, 96), random_state=7)
    c, _ = make_vessels((96, 96), random_state=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)
    assert 0.02 < ma.mean() < 0.6
    assert a[ma == 1].mean() > a[ma == 0].mean() + 0.1  # vessels are brighter than background
    v, mv = make_vessels((4, 64, 64), dtype="uint16", random_state=1)
    assert v.dtype == np.uint16 and mv.shape == (4, 64, 64) and mv.any()


def test_zarr_and_ome_zarr_input(tmp_path):
    zarr = pytest.importorskip("zarr")
    a, m = make_vessels((3, 100, 120), dtype="uint16", random_state=4)
    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=a.shape, chunks=(1, 64, 64), dtype=a.dtype)
    z[:] = a
    (tmp_path / "masks").mkdir()
    zm = zarr.open_array(str(tmp_path / "masks" / "img.zarr"), mode="w", shape=m.shape, chunks=(1, 64, 64),
                         dtype=m.dtype)
    zm[:] = m
    p = Patches.from_zarr(str(tmp_path / "img.zarr"), axes="ZYX", patch_shape=(64, 64), normalize="none",
                          masks=tmp_path / "masks")
    ref = Patches.from_arrays(a, axes="ZYX", patch_shape=(64, 64), normalize="none", masks=m)
    np.testing.assert_array_equal(p.images(), ref.images())
    np.testing.assert_array_equal(p.masks(), ref.masks())
    # OME-Zarr multiscale: level 1 is half resolution; axes come from the metadata
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    g.create_array("0", shape=a.shape, chunks=(1, 64, 64), dtype=a.dtype)[:] = a
    g.create_array("1", shape=a[:, ::2, ::2].shape, chunks=(1, 64, 64), dtype=a.dtype)[:] = a[:, ::2, ::2]
    g.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}],
                               "axes": [{"name": n, "type": "space"} for n in "zyx"]}]
    q = Patches.from_zarr(str(tmp_path / "ome.zarr"), axes="ZYX", patch_shape=(25, 30), level=1, normalize="none")
    np.testing.assert_array_equal(q.images([0])[0], a[0, :50:2, :60:2][:25, :30])
    with pytest.raises(ValueError, match="declares axes 'ZYX'"):
        Patches.from_zarr(str(tmp_path / "ome.zarr"), axes="CYX", patch_shape=(8, 8))
    with pytest.raises(ValueError, match="level=5"):
        Patches.from_zarr(str(tmp_path / "ome.zarr"), axes="ZYX", patch_shape=(8, 8), level=5)
