"""rank_models: orders stored models by the drift from their cards and their flip agreement."""

from __future__ import annotations

import numpy as np
import pytest

from biodatacentric import Patches, TransUNetSegmenter, make_vessels, rank_models


def _seg(p, epochs=2):
    return TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=epochs, precision="fp32", random_state=0,
                              progress=False).fit(p)


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    root = tmp_path_factory.mktemp("shelf")
    img, mask = make_vessels((4, 64, 64), random_state=0)
    vessels = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    rng = np.random.default_rng(0)
    noise = rng.random((4, 64, 64)).astype(np.float32)
    blobs = Patches.from_arrays(noise, axes="ZYX", patch_shape=(32, 32), masks=(noise > 0.9).astype(np.uint8))
    _seg(vessels).save(root / "vessels")
    _seg(blobs).save(root / "noise")
    return root, vessels, blobs


def test_rank_prefers_the_model_of_alike_data(shelf):
    root, vessels, blobs = shelf
    new = Patches.from_arrays(make_vessels((2, 64, 64), random_state=5)[0], axes="ZYX", patch_shape=(32, 32))
    r = rank_models(root, new, n_sample=4)
    assert r.best == "vessels"
    rows = {x["model"]: x for x in r.rows}
    assert rows["vessels"]["drift"] < rows["noise"]["drift"]
    assert all(0.0 <= x["estimate"] <= 1.0 for x in r.rows)
    assert [x["rank"] for x in r.rows] == [1, 2]
    text = str(r)
    assert "drift" in text and "vessels" in text and "reason" in text
    # the other way round for noise
    assert rank_models(root, blobs, n_sample=4, estimate=False).best == "noise"


def test_rank_says_when_none_fits(shelf):
    root, _, _ = shelf
    odd = np.zeros((6, 32, 32), np.float32)
    odd[:, ::2] = 1.0                                   # stripes: like neither training set
    r = rank_models(root, odd, n_sample=2, max_drift=1.5)
    assert r.none_fit and "fine-tune" in str(r)


def test_rank_accepts_fitted_models_and_other_patch_sizes(shelf):
    root, vessels, _ = shelf
    seg = TransUNetSegmenter.load(root / "vessels")
    big = Patches.from_arrays(make_vessels((2, 64, 64), random_state=3)[0], axes="ZYX", patch_shape=(48, 48))
    r = rank_models([("mine", seg), root / "noise"], big, n_sample=2)
    assert {x["model"] for x in r.rows} == {"mine", "noise"}
    assert "cut to its 32x32" in next(x for x in r.rows if x["model"] == "mine")["reason"]


def test_rank_bad_input(shelf, tmp_path):
    root, vessels, _ = shelf
    with pytest.raises(FileNotFoundError, match="holds no saved models"):
        rank_models(tmp_path, vessels)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        rank_models(tmp_path / "absent", vessels)
    with pytest.raises(ValueError, match="n_views"):
        rank_models(root, vessels, n_views=1)
