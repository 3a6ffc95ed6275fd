"""The TransUNet's coarse (transformer) path: deep supervision and stem-skip dropout (issue 20)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biodatacentric import Patches, make_vessels
from biodatacentric.nn._registry import build_module, module_name
from biodatacentric.nn.transunet import TransUNet
from biodatacentric.segment import TransUNetSegmenter, segmentation_loss

TINY = dict(preset="tiny", feature_size=4, batch_size=4, precision="fp32", device="cpu", random_state=0,
            progress=False)
NET = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4, drop=0.0,
           decoder_dropout=0.0)


def _patches(seed: int = 3) -> Patches:
    img, mask = make_vessels((64, 64), random_state=seed)
    return Patches.from_arrays(img, patch_shape=(32, 32), stride=16, masks=mask)


@pytest.mark.parametrize("patch_size", [4, 8, 16])
def test_aux_head_sees_only_the_transformer_and_trains_it(patch_size):
    torch.manual_seed(0)
    net = TransUNet(**{**NET, "img_size": 64, "patch_size": patch_size}, aux_head=True).eval()
    x = torch.randn(2, 1, 64, 64)
    logits, coarse = net.forward_aux(x)
    torch.testing.assert_close(logits, net(x))                      # the main output is forward's
    assert coarse.shape == (2, 2, 16, 16)                            # level 2 = 1/4 resolution
    feats = net.encode(x)
    no_stem = {**feats, "stem": [torch.zeros_like(s) for s in feats["stem"]]}
    torch.testing.assert_close(net.decoder.forward_aux(no_stem)[1], coarse)   # the stem never reaches it
    assert not torch.allclose(net.decoder.forward_aux(no_stem)[0], logits)    # ... but the main output
    # the aux loss alone sends gradient into every transformer block, none into the stem
    net.train()
    y = torch.randint(0, 2, (2, 64, 64))
    _, coarse = net.forward_aux(x)
    up = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    segmentation_loss(up, y).backward()
    for name, p in net.named_parameters():
        if name.startswith("encoder.blocks.") and name.endswith("weight"):
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        if name.startswith("stem."):
            assert p.grad is None or float(p.grad.abs().sum()) == 0, name


def test_stem_skip_drop_zeroes_whole_samples_in_training_only():
    torch.manual_seed(0)
    net = TransUNet(**NET, stem_skip_drop=0.5)
    x = torch.randn(16, 1, 32, 32)
    net.eval()
    feats = net.encode(x)
    intact = net.decode(feats)
    dropped = net.decode({**feats, "stem": [torch.zeros_like(s) for s in feats["stem"]]})
    ref = TransUNet(**NET)
    ref.load_state_dict(net.state_dict())
    torch.testing.assert_close(ref.eval()(x), intact)                 # eval mode: no drop, as without it
    net.train()   # GroupNorm is per sample and every dropout rate is 0: each sample is one of the two
    torch.manual_seed(1)
    out = net.decode(feats)
    which = []
    for i in range(len(x)):
        if torch.allclose(out[i], intact[i], atol=1e-5):
            which.append(0)
        else:
            torch.testing.assert_close(out[i], dropped[i], atol=1e-5, rtol=1e-4)
            which.append(1)
    assert 0 < sum(which) < len(x)
    with pytest.raises(ValueError, match="dropout rates"):
        TransUNet(**NET, stem_skip_drop=1.0)


def test_fused_coarse_logits_are_part_of_the_output():
    torch.manual_seed(0)
    net = TransUNet(**NET, aux_head="fuse").eval()
    x = torch.randn(2, 1, 32, 32)
    logits, coarse = net.forward_aux(x)
    torch.testing.assert_close(logits, net(x))
    feats = net.encode(x)
    prepared = net.decode_prepare(feats)
    torch.testing.assert_close(net.decode_sample(prepared), logits)
    # the output is the main head's plus the upsampled coarse logits: zero the aux head and it drops out
    with torch.no_grad():
        net.decoder.aux.weight.zero_()
        net.decoder.aux.bias.zero_()
    plain = net(x)
    up = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(plain + up, logits)
    with pytest.raises(ValueError, match="aux_head"):
        TransUNet(**NET, aux_head="sum")


def test_configs_without_the_options_build_the_old_network():
    old = TransUNet(**NET)
    assert "aux_head" not in old.config and "stem_skip_drop" not in old.config
    assert not any("aux" in k for k in old.state_dict())
    new = TransUNet(**NET, aux_head=True, stem_skip_drop=0.25)
    assert new.config["aux_head"] is True and new.config["stem_skip_drop"] == 0.25
    copy = build_module(module_name(new), new.config)
    copy.load_state_dict(new.state_dict())
    assert sorted(copy.state_dict()) == sorted(new.state_dict())
    with pytest.raises(RuntimeError, match="aux head"):
        old.forward_aux(torch.zeros(1, 1, 32, 32))


def test_segmenter_with_deep_supervision_trains_saves_and_fine_tunes(tmp_path):
    p = _patches()
    seg = TransUNetSegmenter(max_epochs=2, coarse_head="aux", deep_supervision=0.5, stem_skip_drop=0.3,
                             **TINY).fit(p[:6])
    assert seg.module_.decoder.aux is not None and seg.module_.decoder.stem_skip_drop == 0.3
    assert not seg.module_.decoder.aux_fuse
    # the training loss is main + 0.5 x coarse: larger than the main loss of the trained model alone
    loaded = TransUNetSegmenter.load(seg.save(tmp_path / "m"))
    assert loaded.deep_supervision == 0.5 and loaded.stem_skip_drop == 0.3 and loaded.coarse_head == "aux"
    np.testing.assert_array_equal(loaded.predict_proba(p), seg.predict_proba(p))
    loaded.fine_tune(p[6:9], replay=p[:6], max_epochs=1)
    assert len(loaded.fine_tune_history_) == 1
    with pytest.raises(ValueError, match="deep_supervision"):
        TransUNetSegmenter(coarse_head="aux", deep_supervision=-1.0, **TINY).fit(p[:4])
    with pytest.raises(ValueError, match="coarse_head='aux' or 'fuse'"):
        TransUNetSegmenter(deep_supervision=0.5, coarse_head=None, **TINY).fit(p[:4])
    with pytest.raises(ValueError, match="coarse_head"):
        TransUNetSegmenter(coarse_head="sum", **TINY).fit(p[:4])
    with pytest.raises(ValueError, match="stem_skip_drop"):
        TransUNetSegmenter(stem_skip_drop=1.0, **TINY).fit(p[:4])


def test_the_aux_loss_is_added_during_training(monkeypatch):
    p = _patches()
    calls = []
    orig = TransUNet.forward_aux

    def spy(self, x):
        out = orig(self, x)
        calls.append(tuple(out[1].shape))
        return out
    monkeypatch.setattr(TransUNet, "forward_aux", spy)
    TransUNetSegmenter(max_epochs=1, coarse_head="aux", deep_supervision=0.4, **TINY).fit(p[:8])
    assert calls == [(4, 2, 8, 8), (4, 2, 8, 8)]          # every training step, 1/4 of 32 x 32
    calls.clear()
    TransUNetSegmenter(max_epochs=1, coarse_head="fuse", deep_supervision=0.0, **TINY).fit(p[:8])
    assert calls == []        # no aux loss: the fused output is trained through forward alone


def test_model_saved_before_the_options_loads_with_the_old_behaviour(tmp_path):
    p = _patches()
    seg = TransUNetSegmenter(max_epochs=1, coarse_head=None, **TINY).fit(p[:6])   # the network before
    folder = seg.save(tmp_path / "old")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("deep_supervision", "stem_skip_drop", "coarse_head"):   # as written before the options
        cfg["params"].pop(key)
    cfg["modules"]["module_"]["config"].pop("aux_head", None)
    cfg_path.write_text(json.dumps(cfg))
    loaded = TransUNetSegmenter.load(folder)
    assert loaded.deep_supervision == 0.0 and loaded.stem_skip_drop == 0.0 and loaded.coarse_head is None
    assert loaded.module_.decoder.aux is None
    np.testing.assert_array_equal(loaded.predict(p), seg.predict(p))
    loaded.fine_tune(p[6:9], max_epochs=1)            # trains as before: no aux head, no aux loss
    # a model without the head cannot be fine-tuned with deep supervision: a clear error
    loaded.set_params(coarse_head="aux", deep_supervision=0.5)
    with pytest.raises(ValueError, match="no aux head"):
        loaded.fine_tune(p[6:9], max_epochs=1)


def test_the_default_segmenter_uses_its_vit():
    """With the default coarse_head='fuse' the ViT's features reach the prediction: replacing
    them with zeros changes a trained model's output (without the head it hardly does)."""
    p = _patches()
    seg = TransUNetSegmenter(max_epochs=2, **TINY).fit(p[:8])
    assert seg.coarse_head == "fuse" and seg.module_.decoder.aux_fuse

    def change(model: TransUNetSegmenter) -> float:
        module = model.module_
        ref = model.predict_proba(p)
        orig = module.encode

        def no_vit(x):
            f = orig(x)
            return {**f, "taps": [torch.zeros_like(t) for t in f["taps"]], "tokens": torch.zeros_like(f["tokens"])}
        module.encode = no_vit
        try:
            return float(np.abs(model.predict_proba(p) - ref).mean())
        finally:
            del module.encode
    assert change(seg) > 0.01
