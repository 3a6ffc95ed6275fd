"""The segmenter trains any segmentation network given as ``network=``, not only its TransUNet;
the fitted model predicts, hunts, saves and loads (through the module registry) like the default."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from biodatacentric import MCDropoutHunter, Patches, TransUNetSegmenter, make_vessels
from biodatacentric.nn import register_module


@register_module
class TinyConvNet(nn.Module):
    """A small fully convolutional net: (B, 1, h, w) -> (B, n_classes, h, w)."""

    def __init__(self, n_classes: int = 2, width: int = 8, drop: float = 0.2) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, width=width, drop=drop)
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Dropout2d(drop),
                                  nn.Conv2d(width, n_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Unregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def patches():
    img, mask = make_vessels((2, 64, 64), random_state=0)
    return Patches.from_arrays([img], masks=[mask], axes="ZYX", patch_shape=(32, 32))


def _seg(net, **kw):
    return TransUNetSegmenter(network=net, max_epochs=3, batch_size=4, lr=3e-3, precision="fp32", device="cpu",
                              random_state=0, progress=False, **kw)


def test_any_network_trains_predicts_and_round_trips(patches, tmp_path):
    net = TinyConvNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seg = _seg(net).fit(patches)
    assert isinstance(seg.module_, TinyConvNet) and seg.module_ is not net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # the user's net is untouched
    assert seg.history_["loss"][-1] < seg.history_["loss"][0]
    stack = patches.images()[:2]
    pred = seg.predict_image(np.concatenate([np.concatenate(stack[:2], 1)] * 1)[None], axes="ZYX")
    assert pred.shape == (1, 32, 64) and set(np.unique(pred)) <= {0, 1}
    again = TransUNetSegmenter.load(seg.save(tmp_path / "m"))
    np.testing.assert_array_equal(again.predict_proba(patches), seg.predict_proba(patches))
    np.testing.assert_array_equal(_seg(net).fit(patches).predict_proba(patches),
                                  seg.predict_proba(patches))   # same network and seed, same model
    cloned = clone(seg)
    assert isinstance(cloned.network, TinyConvNet) and not hasattr(cloned, "module_")


def test_the_hunter_samples_the_networks_dropout(patches):
    seg = _seg(TinyConvNet()).fit(patches)
    hunter = MCDropoutHunter(seg, n_samples=4, random_state=0).fit(patches)
    assert hunter.scores_.shape == (len(patches),) and np.ptp(hunter.scores_) > 0


def test_bad_networks_get_clear_errors(patches, tmp_path):
    with pytest.raises(ValueError, match=r"must return logits of shape \(1, 3, 32, 32\)"):
        _seg(TinyConvNet(n_classes=2), n_classes=3).fit(patches)
    with pytest.raises(ValueError, match="with network= pass encoder=None"):
        _seg(TinyConvNet(), encoder={"x": torch.zeros(1)}).fit(patches)
    with pytest.raises(TypeError, match="network"):
        _seg("unet").fit(patches)
    seg = _seg(Unregistered()).fit(patches)
    with pytest.raises(TypeError, match="not a registered biodatacentric module"):
        seg.save(tmp_path / "unregistered")
    assert not (tmp_path / "unregistered").exists()
