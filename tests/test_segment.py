"""Tests of the TransUNet module, the segmenter, its losses and sliding-window inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biodatacentric import Patches, make_vessels
from biodatacentric._train import TrainingInterrupted
from biodatacentric.nn.transunet import TransUNet
from biodatacentric.nn.vit import ViTEncoder
from biodatacentric.segment import TransUNetSegmenter, segmentation_loss, soft_dice_loss
from biodatacentric.segment.sliding import sliding_window_predict
from sklearn.exceptions import NotFittedError

TINY = dict(preset="tiny", feature_size=4, batch_size=4, precision="fp32", device="cpu", random_state=0,
            progress=False)


def _patches(seed: int = 3, shape=(64, 64), patch=(32, 32), stride=16) -> Patches:
    img, mask = make_vessels(shape, random_state=seed)
    return Patches.from_arrays(img, patch_shape=patch, stride=stride, masks=mask)


@pytest.fixture(scope="module")
def fitted() -> TransUNetSegmenter:
    return TransUNetSegmenter(max_epochs=1, **TINY).fit(_patches())


# ---------------------------------------------------------------------- module
@pytest.mark.parametrize("where, active", [("head", [False, False, False]), ("last", [False, False, True]),
                                           ("blocks", [True, True, True])])
def test_forward_is_decode_of_encode_and_dropout_placement(where, active):
    torch.manual_seed(0)
    net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, feature_size=4,
                    drop=0.1, decoder_dropout=0.2, decoder_dropout_at=where).eval()
    x = torch.randn(2, 1, 32, 48)  # another grid than the training one
    feats = net.encode(x)
    torch.testing.assert_close(net(x), net.decode(feats))
    torch.testing.assert_close(net(x), net.decode_sample(net.decode_prepare(feats)))
    assert net(x).shape == (2, 2, 32, 48)
    assert [b.dropout.p > 0 for b in net.decoder.blocks] == active
    assert all(b.dropout.p in (0.0, 0.2) for b in net.decoder.blocks) and net.decoder.head_dropout.p == 0.2
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in net.encoder.modules())
    mlp_drop = [m for n, m in net.encoder.named_modules() if "mlp.drop" in n]
    assert len(mlp_drop) == 2 * 4 and all(m.p == 0.1 for m in mlp_drop)
    # decoder dropout is active only in train mode: two decodes of the same features differ then,
    # and the prepared (deterministic) part is the same whether dropout is on or off
    prepared = net.decode_prepare(feats)
    d2 = [m for m in net.decoder.modules() if isinstance(m, torch.nn.Dropout2d)]
    for m in d2:
        m.train()
    torch.testing.assert_close(net.decode_prepare(feats)["x"], prepared["x"])
    assert not torch.allclose(net.decode(feats), net.decode(feats))
    assert not torch.allclose(net.decode_sample(prepared), net.decode_sample(prepared))


def test_decoder_dropout_at_is_validated():
    with pytest.raises(ValueError, match="decoder_dropout_at"):
        TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dropout_at="everywhere")


def test_taps_follow_depth_quarters():
    net = TransUNet(img_size=64, patch_size=16, embed_dim=32, depth=12, num_heads=2, feature_size=4)
    assert net.taps == [2, 5, 8]


# ---------------------------------------------------------------------- encoder transfer
def _vit(seed: int = 7) -> ViTEncoder:
    torch.manual_seed(seed)
    vit = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    with torch.no_grad():  # make every tensor distinctive (biases are zero after init)
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit


def _assert_encoder_equal(seg: TransUNetSegmenter, vit: ViTEncoder) -> None:
    own = seg.module_.encoder.state_dict()
    ref = vit.state_dict()
    assert set(own) == set(ref)
    for k in ref:
        assert torch.equal(own[k], ref[k]), k
    assert sorted(seg.encoder_transfer_["loaded"]) == sorted("encoder." + k for k in ref)
    assert not any(k.startswith("encoder.") for k in seg.encoder_transfer_["initialised"])
    assert any(k.startswith("decoder.") for k in seg.encoder_transfer_["initialised"])


def test_transfer_from_module_state_dict_and_folder(tmp_path):
    vit = _vit()
    seg = TransUNetSegmenter(encoder=vit, **TINY).initialize((32, 32))
    _assert_encoder_equal(seg, vit)
    # a wrapped, prefixed state dict (as in a full MAE model) with decoder tensors left unused
    full = {"encoder." + k: v for k, v in vit.state_dict().items()}
    full["decoder_embed.weight"] = torch.zeros(3, 3)
    seg2 = TransUNetSegmenter(encoder={"model": full}, **TINY).initialize((32, 32))
    _assert_encoder_equal(seg2, vit)
    assert "decoder_embed.weight" not in seg2.encoder_transfer_["loaded"]
    # an estimator save folder holding the encoder as weights/encoder_.pt
    folder = tmp_path / "mae"
    (folder / "weights").mkdir(parents=True)
    torch.save(vit.state_dict(), folder / "weights" / "encoder_.pt")
    (folder / "config.json").write_text(json.dumps(
        {"modules": {"encoder_": {"class": "ViTEncoder", "config": vit.config}}}))
    seg3 = TransUNetSegmenter(encoder=str(folder), **TINY).initialize((32, 32))
    _assert_encoder_equal(seg3, vit)
    # the encoder sizes win over the preset, and fitting starts from the transferred weights
    seg4 = TransUNetSegmenter(encoder=vit, **{**TINY, "preset": "small"}).initialize((64, 64))
    _assert_encoder_equal(seg4, vit)


def test_transfer_fails_loudly_on_mismatch():
    state = _vit().state_dict()
    bad = dict(state)
    bad["blocks.0.norm1.weight"] = torch.ones(5)
    with pytest.raises(ValueError, match="shape mismatch"):
        TransUNetSegmenter(encoder=bad, **TINY).initialize((32, 32))
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    partial.update({k.replace("blocks.1.", "blocks.0."): v for k, v in state.items() if k.startswith("blocks.1.")})
    partial.pop("norm.weight")
    with pytest.raises(ValueError, match="lacks"):
        TransUNetSegmenter(encoder=partial, **TINY).initialize((32, 32))
    with pytest.raises(ValueError, match="no ViT encoder"):
        TransUNetSegmenter(encoder={"w": torch.zeros(2)}, **TINY).initialize((32, 32))
    with pytest.raises(FileNotFoundError):
        TransUNetSegmenter(encoder="/nonexistent/mae", **TINY).initialize((32, 32))
    with pytest.raises(TypeError):
        TransUNetSegmenter(encoder=3, **TINY).initialize((32, 32))


# ---------------------------------------------------------------------- training
def test_resume_gives_same_weights(tmp_path):
    p = _patches()
    ref = TransUNetSegmenter(max_epochs=3, checkpoint_dir=str(tmp_path / "a"), **TINY).fit(p[:7], validation=p[7:])
    seg = TransUNetSegmenter(max_epochs=3, checkpoint_dir=str(tmp_path / "b"), **TINY)
    seg._interrupt_after = 1
    with pytest.raises(TrainingInterrupted):
        seg.fit(p[:7], validation=p[7:])
    resumed = TransUNetSegmenter(max_epochs=3, checkpoint_dir=str(tmp_path / "b"), **TINY).fit(p[:7], validation=p[7:])
    a, b = ref.module_.state_dict(), resumed.module_.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("loss", "lr", "val_dice"):
        assert ref.history_[key] == resumed.history_[key]
    assert ref.best_epoch_ == resumed.best_epoch_ == int(np.argmax(ref.history_["val_dice"]))
    # the kept weights are the best epoch's: their validation Dice is the best recorded one
    assert resumed.score(p[7:]) == pytest.approx(max(resumed.history_["val_dice"]), abs=1e-6)


def test_training_reduces_the_loss():
    seg = TransUNetSegmenter(max_epochs=5, lr=3e-3, augment=False, **TINY).fit(_patches(seed=5))
    assert seg.history_["loss"][-1] < 0.9 * seg.history_["loss"][0]
    assert "val_dice" not in seg.history_ and seg.best_epoch_ is None


def test_fine_tune_mix_and_replay():
    p = _patches()
    seg = TransUNetSegmenter(max_epochs=1, **TINY).fit(p[:6])
    before = {k: v.clone() for k, v in seg.module_.state_dict().items()}
    seg.fine_tune(p[6:9], replay=p[:6], n_replay=5, max_epochs=2, lr=1e-3)
    h = seg.fine_tune_history_[-1]
    assert h["n_new"] == 3 and h["n_replay_per_epoch"] == 5 and len(h["loss"]) == 2
    assert any(not torch.equal(before[k], v) for k, v in seg.module_.state_dict().items())
    seg.fine_tune(p[6:9], max_epochs=1)  # naive
    assert len(seg.fine_tune_history_) == 2 and seg.fine_tune_history_[-1]["n_replay_per_epoch"] == 0
    with pytest.raises(ValueError, match="patch"):
        seg.fine_tune(_patches(patch=(16, 16)), replay=p)


def test_layer_decay_and_bf16_close_to_fp32(fitted):
    seg = TransUNetSegmenter(max_epochs=1, layer_decay=0.5, **TINY).fit(_patches())
    p32 = seg.predict_proba(_patches()[:3])
    seg.set_params(precision="bf16")
    p16 = seg.predict_proba(_patches()[:3])
    assert np.abs(p32 - p16).max() < 0.1


# ---------------------------------------------------------------------- inference
def _naive_predict_image(seg: TransUNetSegmenter, img: np.ndarray, overlap: float) -> np.ndarray:
    """Straightforward reference: every window alone, Gaussian from its definition."""
    wh, ww = seg.patch_shape_
    H, W = img.shape

    def starts(n, w, step):
        s = list(range(0, n - w + 1, step))
        return s if s[-1] == n - w else s + [n - w]

    def g1(n):
        x = np.arange(n) - (n - 1) / 2
        return np.exp(-x ** 2 / (2 * (n / 8) ** 2))

    g = np.outer(g1(wh), g1(ww))
    g = np.maximum(g, max(g.min(), 1e-3))
    acc = np.zeros((2, H, W))
    wsum = np.zeros((H, W))
    for y in starts(H, wh, int(wh * (1 - overlap))):
        for x in starts(W, ww, int(ww * (1 - overlap))):
            win = torch.from_numpy(np.ascontiguousarray(img[y:y + wh, x:x + ww]))[None, None]
            with torch.no_grad():
                prob = torch.softmax(seg.module_.eval()(win), 1)[0].double().numpy()
            acc[:, y:y + wh, x:x + ww] += prob * g
            wsum[y:y + wh, x:x + ww] += g
    return (acc / wsum).astype(np.float32)


def test_predict_image_equals_naive_reference(fitted):
    rng = np.random.default_rng(0)
    img = rng.random((50, 61)).astype(np.float32)
    for overlap in (0.5, 0.25):
        ours = fitted.predict_image(img, overlap=overlap, return_proba=True, normalize="none", batch_size=3)
        ref = _naive_predict_image(fitted, img, overlap)
        np.testing.assert_allclose(ours, ref, atol=2e-5)
    # probabilities, never votes: they sum to one and take many values
    assert ours.dtype == np.float32 and ours.shape == (2, 50, 61)
    np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)
    assert len(np.unique(np.round(ours[1], 4))) > 50
    labels = fitted.predict_image(img, overlap=0.25, normalize="none")
    assert labels.dtype == np.uint8 and np.array_equal(labels, ours.argmax(0))


def test_predict_image_stack_slice_by_slice_and_normalisation(fitted):
    raw, _ = make_vessels((3, 50, 64), dtype="uint16", random_state=1)
    stack = fitted.predict_image(raw, axes="ZYX", return_proba=True, batch_size=5)
    assert stack.shape == (3, 2, 50, 64)
    # the stack uses the Patches per-source normalisation of the whole array
    p = Patches.from_arrays(raw, axes="ZYX", patch_shape=(50, 64))
    for z in range(3):
        one = fitted.predict_image(p.images([z])[0], return_proba=True, normalize="none")
        np.testing.assert_allclose(stack[z], one, atol=1e-5)
    # small image (padded to the window) still works
    assert fitted.predict_image(np.ones((20, 20), np.float32) * 0.3, normalize="none").shape == (20, 20)


def test_sliding_memory_is_bounded_slice_by_slice():
    reads: list[int] = []
    stats: dict = {}

    def slices(z):
        reads.append(z)
        return np.zeros((64, 64), np.float32)

    def predict(x):
        return torch.softmax(torch.zeros(x.shape[0], 2, *x.shape[-2:]), 1)

    out = sliding_window_predict(slices, 40, (64, 64), predict, 2, (32, 32), overlap=0.5, batch_size=4,
                                 return_proba=False, stats=stats)
    assert out.shape == (40, 64, 64)
    assert reads == list(range(40))  # each slice read once, in order
    assert stats["max_slices_in_flight"] <= 2  # 9 windows a slice, 4 per batch


def test_bad_inputs(fitted):
    p = _patches()
    with pytest.raises(NotFittedError, match="TransUNetSegmenter"):
        TransUNetSegmenter(**TINY).predict(p)
    img, _ = make_vessels((64, 64), random_state=0)
    with pytest.raises(ValueError, match="masks"):
        TransUNetSegmenter(max_epochs=1, **TINY).fit(Patches.from_arrays(img, patch_shape=(32, 32)))
    with pytest.raises(ValueError, match="divisible"):
        TransUNetSegmenter(max_epochs=1, **TINY).fit(_patches(patch=(30, 30), stride=30))
    with pytest.raises(ValueError, match="loss"):
        TransUNetSegmenter(max_epochs=1, loss="focal", **TINY).fit(p)
    with pytest.raises(ValueError, match="n_classes"):
        TransUNetSegmenter(max_epochs=1, n_classes=1, **TINY).fit(p)
    with pytest.raises(ValueError, match="axes"):
        fitted.predict_image(np.zeros((2, 32, 32), np.float32), axes="YX")
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict_image(np.full((32, 32), np.nan, np.float32), normalize="none")
    with pytest.raises(ValueError, match="overlap"):
        fitted.predict_image(np.zeros((32, 32), np.float32), overlap=1.0, normalize="none")
    with pytest.raises(ValueError, match="blend"):
        fitted.predict_image(np.zeros((32, 32), np.float32), blend="max", normalize="none")
    with pytest.raises(TypeError):
        fitted.predict_proba([1, 2, 3])


# ---------------------------------------------------------------------- losses
def test_losses():
    t = torch.tensor([[[0, 1, 1], [0, 0, 1]]])
    perfect = torch.nn.functional.one_hot(t, 2).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, t)) == pytest.approx(0.0, abs=1e-4)
    wrong = -perfect
    assert float(soft_dice_loss(wrong, t)) == pytest.approx(1.0, abs=1e-3)
    # background-including Dice is lower than foreground-only when only background is right
    bg_only = torch.zeros(1, 2, 2, 3)
    bg_only[:, 0] = 50
    assert float(soft_dice_loss(bg_only, t, "all")) < float(soft_dice_loss(bg_only, t, "foreground"))
    assert float(segmentation_loss(perfect, t)) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError):
        segmentation_loss(perfect, t, loss="l2")


def test_transfer_from_mae_pretrainer(tmp_path):
    try:
        from biodatacentric.pretrain.mae import MAEPretrainer
    except ImportError:  # pragma: no cover - stage not present
        pytest.skip("MAEPretrainer not available")
    imgs = np.stack([make_vessels((64, 64), random_state=i)[0] for i in range(2)])
    data = Patches.from_arrays(imgs, axes="ZYX", patch_shape=(32, 32), stride=16)
    mae = MAEPretrainer(preset="tiny", img_size=32, max_epochs=1, batch_size=8, precision="fp32",
                        random_state=0).fit(data)
    seg = TransUNetSegmenter(encoder=mae.encoder_, **TINY).initialize((32, 32))
    _assert_encoder_equal(seg, mae.encoder_)
    mae.save(tmp_path / "mae")
    seg2 = TransUNetSegmenter(encoder=str(tmp_path / "mae"), **TINY).initialize((32, 32))
    _assert_encoder_equal(seg2, mae.encoder_)


def test_max_time_limits_fit_and_fine_tune():
    from biodatacentric import Patches, TransUNetSegmenter, make_vessels

    img, mask = make_vessels((2, 64, 64), random_state=0)
    p = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    seg = TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=20, batch_size=4, precision="fp32",
                             random_state=0, progress=False, max_time=1e-6).fit(p)
    assert len(seg.history_["loss"]) == 1                       # no time left after the first epoch
    assert seg.history_["epochs_planned"] == [1.0]
    seg.fine_tune(p[:2], replay=p[2:], max_epochs=5, max_time=1e-6)
    with pytest.raises(ValueError, match="max_time"):
        seg.fine_tune(p[:2], replay=p[2:], max_time=-1.0)
