"""The data fingerprint describes a dataset in numbers that match what was put in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

import biodatacentric as bdc


def _bars(width, n=4, size=96, seed=0):
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, size, size), np.float32)
    for k in range(n):
        for x0 in (16, 56):
            imgs[k, :, x0:x0 + width] = 1.0
        imgs[k] = gaussian_filter(imgs[k], 0.7) + rng.normal(0, 0.05, (size, size))
    return imgs


@pytest.mark.parametrize("width, expected", [(4, 2.0), (12, 6.0)])
def test_structure_scale_is_about_half_the_bar_width(width, expected):
    p = bdc.Patches.from_arrays([_bars(width)], axes="ZYX", patch_shape=(96, 96))
    fp = bdc.fingerprint(p)
    assert fp.structure_scale_px == pytest.approx(expected, rel=0.5)
    assert fp.snr > 5 and 0.05 < fp.foreground_share < 0.5


def test_noise_lowers_the_snr_estimate():
    clean = bdc.Patches.from_arrays([_bars(6)], axes="ZYX", patch_shape=(96, 96))
    noisy_img = _bars(6) + np.random.default_rng(1).normal(0, 0.5, (4, 96, 96)).astype(np.float32)
    noisy = bdc.Patches.from_arrays([noisy_img], axes="ZYX", patch_shape=(96, 96))
    assert bdc.fingerprint(noisy).snr < bdc.fingerprint(clean).snr / 3


def test_pixel_size_and_sources_from_tiff_metadata(tmp_path):
    img, mask = bdc.make_vessels((3, 64, 64), dtype="uint16", random_state=0)
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, img, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                         metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    fp = bdc.fingerprint(bdc.Patches.from_tiff(str(tmp_path / "*.tif"), axes="ZYX", patch_shape=(32, 32)))
    assert fp.n_sources == 2 and fp.n_patches == 24 and fp.raw_dtype == "uint16"
    assert fp.pixel_size_um == pytest.approx([2.0, 0.5, 0.5])
    assert fp.mask_share is None
    saved = json.loads(fp.save(tmp_path / "fp.json").read_text())
    assert saved["pixel_size_um"] == pytest.approx([2.0, 0.5, 0.5]) and saved["n_patches"] == 24
    assert "0.5" in str(fp) and "2 source(s)" in str(fp)


def test_embedding_summary_sees_duplicates_and_spread():
    img, _ = bdc.make_vessels((2, 64, 64), random_state=0)
    p = bdc.Patches.from_arrays([img], axes="ZYX", patch_shape=(32, 32))
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(8, 16))
    dup = np.repeat(rng.normal(size=(1, 16)), 8, axis=0) + 1e-6 * rng.normal(size=(8, 16))
    a = bdc.fingerprint(p, embeddings=spread).embedding
    b = bdc.fingerprint(p, embeddings=dup).embedding
    assert a["near_duplicate_share"] == 0.0 and b["near_duplicate_share"] == 1.0
    assert a["effective_rank"] > 3 and b["mean_cosine_to_centroid"] > 0.999
    with pytest.raises(ValueError, match="embeddings has 3 rows for 8 patches"):
        bdc.fingerprint(p, embeddings=spread[:3])
