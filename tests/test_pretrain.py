"""Stage 1: the masked autoencoder module and the MAEPretrainer estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biodatacentric import Patches, make_vessels
from biodatacentric._train import TrainingInterrupted
from biodatacentric.nn.mae import MaskedAutoencoder, patchify, random_masking, unpatchify
from biodatacentric.nn.presets import get_preset
from biodatacentric.pretrain import MAEPretrainer, load_mae_checkpoint

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy CPU two spinning OpenMP
    threads make these tests several times slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)


def _tiny(img_size=32, **kw):
    torch.manual_seed(0)
    return MaskedAutoencoder(img_size=img_size, **{**TINY, **kw})


def _patches(n_images=3, seed=0, size=80, patch=40, stride=20):
    imgs = np.stack([make_vessels((size, size), random_state=seed + i)[0] for i in range(n_images)])
    return Patches.from_arrays(imgs, axes="ZYX", patch_shape=(patch, patch), stride=stride)


def _est(**kw):
    params = dict(preset="tiny", img_size=32, max_epochs=2, batch_size=8, n_components=None,
                  precision="fp32", random_state=0, warmup_epochs=1)
    params.update(kw)
    return MAEPretrainer(**params)


# ---------------------------------------------------------------------- module
@pytest.mark.parametrize("preset,img_size,in_chans,device", [("tiny", 32, 1, "cpu"), ("tiny", 48, 3, "cpu"),
                                                             ("small", 64, 1, "cpu"), ("base", 224, 1, "meta")])
def test_shapes_for_presets_and_sizes(preset, img_size, in_chans, device):
    sizes = get_preset(preset)
    torch.manual_seed(0)
    with torch.device(device):  # ViT-B at 224 runs on the meta device: shapes only, no compute
        m = MaskedAutoencoder(img_size=img_size, in_chans=in_chans, **sizes).to(device)
        x = torch.rand(2, in_chans, img_size, img_size)
    p = sizes["patch_size"]
    length = (img_size // p) ** 2
    with torch.no_grad():
        loss, pred, mask = m(x, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
        tokens = m.encoder(x)
        latent, _, _ = m.forward_encoder(x, 0.75, torch.Generator().manual_seed(0))
    assert pred.shape == (2, length, p * p * in_chans)
    assert mask.shape == (2, length)
    assert latent.shape == (2, 1 + int(length * 0.25), sizes["embed_dim"])
    assert tokens.shape == (2, 1 + length, sizes["embed_dim"])
    assert loss.ndim == 0
    assert m.encoder.pooled(x).shape == (2, sizes["embed_dim"])
    if device == "cpu":
        assert torch.isfinite(loss)


def test_patchify_uses_in_chans_and_round_trips():
    x = torch.rand(2, 3, 16, 24)
    y = patchify(x, 8)
    assert y.shape == (2, 6, 8 * 8 * 3)
    # inside a patch the order is (row, col, channel): element 1 is pixel (0, 0) of channel 1
    assert y[0, 0, 1] == x[0, 1, 0, 0] and y[0, 0, 3] == x[0, 0, 0, 1]
    assert torch.equal(unpatchify(y, 8, 3, (2, 3)), x)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.rand(1, 1, 20, 16), 8)


@pytest.mark.parametrize("length,ratio", [(16, 0.75), (49, 0.75), (10, 0.5), (7, 0.9)])
def test_masking_keeps_exact_number_and_restores_order(length, ratio):
    gen = torch.Generator().manual_seed(3)
    ids_keep, mask, ids_restore = random_masking(4, length, ratio, gen)
    keep = max(int(length * (1 - ratio)), 1)
    assert ids_keep.shape == (4, keep)
    assert torch.all(mask.sum(1) == length - keep)
    # the kept ids are exactly the zeros of the mask
    for i in range(4):
        assert set(ids_keep[i].tolist()) == set(torch.nonzero(mask[i] == 0).flatten().tolist())
    # shuffle then restore gives back the original order
    x = torch.arange(4 * length).reshape(4, length)
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), x)
    assert torch.equal(ids_shuffle[:, :keep], ids_keep)
    # masks differ between samples (per-sample noise)
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, 4)) or length < 8


def test_visible_only_patch_embedding_matches_the_convolution():
    m = _tiny()
    x = torch.rand(3, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latent, mask, ids_restore = m.forward_encoder(x, 0.75, gen)
        tokens, cls = m.encoder.embed(x)  # conv on every patch
        keep = torch.argsort(ids_restore, 1)[:, : latent.shape[1] - 1]
        vis = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        ref, _ = m.encoder.run_blocks(torch.cat([cls, vis], 1))
    torch.testing.assert_close(latent, ref, rtol=1e-5, atol=1e-5)
    assert latent.shape == (3, 1 + 4, 32)


def test_loss_only_on_masked_patches_normalised_by_mask_sum():
    m = _tiny()
    x = torch.rand(2, 1, 32, 32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        loss, pred, mask = m(x, 0.75, gen)
        target = patchify(x, 8)
        manual = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        torch.testing.assert_close(loss, manual)
        # changing predictions of visible patches leaves the loss unchanged ...
        pred2 = pred.clone()
        pred2[mask == 0] += 5.0
        torch.testing.assert_close(m.forward_loss(x, pred2, mask), loss)
        # ... changing a masked one changes it
        pred3 = pred.clone()
        pred3[mask == 1] += 5.0
        assert m.forward_loss(x, pred3, mask) > loss + 1.0
        # the normaliser is mask.sum(), not N*L: doubling the masked errors doubles the loss
        pred4 = target + (pred - target) * np.sqrt(2.0)
        torch.testing.assert_close(m.forward_loss(x, pred4, mask), 2 * loss, rtol=1e-4, atol=1e-6)


def test_norm_pix_loss_excludes_flat_patches_and_stays_finite():
    m = _tiny(norm_pix_loss=True, norm_pix_eps=1e-2, min_patch_std=1e-3)
    x = torch.rand(2, 1, 32, 32)
    x[:, :, :16, :] = 0.25  # top half: constant patches
    mask = torch.ones(2, 16)
    pred = torch.zeros(2, 16, 64)
    loss_all = m.forward_loss(x, pred, mask)
    # a huge error on a flat patch does not count
    pred_bad = pred.clone()
    pred_bad[:, 0] = 1e3
    torch.testing.assert_close(m.forward_loss(x, pred_bad, mask), loss_all)
    assert torch.isfinite(loss_all)
    # all-flat images: loss is 0, not NaN
    assert m.forward_loss(torch.full((1, 1, 32, 32), 0.1), torch.zeros(1, 16, 64), torch.ones(1, 16)) == 0


def test_unmasked_encoder_pool_is_invariant_to_token_shuffling():
    m = _tiny().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        tokens, cls = m.encoder.embed(x)
        ref, _ = m.encoder.run_blocks(torch.cat([cls, tokens], 1))
        perm = torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(0))
        out, _ = m.encoder.run_blocks(torch.cat([cls, tokens[:, perm]], 1))
    torch.testing.assert_close(out[:, 1:].mean(1), ref[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 0], ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], ref[:, 1:][:, perm], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- estimator
def test_fit_transform_contract_and_lr_rule():
    patches = _patches()
    est = _est(n_components=8, batch_size=4, accum_steps=2).fit(patches)
    assert est.lr_ == pytest.approx(1.5e-4 * 8 / 256)
    assert len(est.history_["loss"]) == 2 and all(np.isfinite(est.history_["loss"]))
    emb = est.transform(patches)
    assert emb.shape == (len(patches), 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # deterministic, and each row depends only on its own patch (batching/order invariant)
    np.testing.assert_array_equal(emb, est.transform(patches))
    order = np.arange(len(patches))[::-1].copy()
    np.testing.assert_allclose(est.transform(patches[order]), emb[order], rtol=1e-4, atol=1e-5)
    assert est.encoder_ is est.module_.encoder
    # a given lr is used as is
    assert _est(lr=1e-3, max_epochs=1).fit(patches).lr_ == 1e-3


def test_save_load_keeps_the_trained_encoder(tmp_path):
    patches = _patches()
    est = _est(n_components=8).fit(patches)
    est.save(tmp_path / "m")
    loaded = MAEPretrainer.load(tmp_path / "m")
    assert loaded.encoder_ is loaded.module_.encoder
    for k, v in est.encoder_.state_dict().items():
        torch.testing.assert_close(loaded.encoder_.state_dict()[k], v, rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.transform(patches), est.transform(patches))
    # the encoder is stored once (inside the MAE weights)
    assert sorted(p.name for p in (tmp_path / "m" / "weights").iterdir()) == ["module_.pt"]


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    patches = _patches()
    ref = _est(max_epochs=3, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=1).fit(patches)
    est = _est(max_epochs=3, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=1)
    est._interrupt_after = 1
    with pytest.raises(TrainingInterrupted):
        est.fit(patches)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = _est(max_epochs=3, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=1).fit(patches)
    assert resumed.history_["loss"] == ref.history_["loss"]
    for k, v in ref.module_.state_dict().items():
        torch.testing.assert_close(resumed.module_.state_dict()[k], v, rtol=0, atol=0)
    np.testing.assert_array_equal(resumed.transform(patches), ref.transform(patches))


def test_bf16_and_fp32_losses_agree_within_5_percent():
    patches = _patches()
    runs = {p: _est(max_epochs=4, batch_size=9, precision=p).fit(patches) for p in ("fp32", "bf16")}
    a, b = runs["fp32"].history_["loss"], runs["bf16"].history_["loss"]
    assert a[-1] < a[0]  # it learns
    for x, y in zip(a, b):
        assert abs(x - y) / x < 0.05, (a, b)


def test_reconstruct_and_png_grid(tmp_path):
    patches = _patches()
    est = _est().fit(patches)
    masked, recon, mask = est.reconstruct(patches[:5], return_mask=True)
    assert masked.shape == recon.shape == mask.shape == (5, 32, 32)
    assert mask.mean() == pytest.approx(0.75)
    assert np.all(masked[mask == 1] == 0)
    centre = patches.images(np.arange(5))[:, 4:36, 4:36]
    np.testing.assert_allclose(masked[mask == 0], centre[mask == 0], rtol=1e-6)
    out = est.save_reconstruction_grid(tmp_path / "grid.png", patches, n=4)
    from PIL import Image

    im = np.asarray(Image.open(out))        # a labelled matplotlib figure (RGBA)
    assert im.ndim == 3 and im.shape[0] > im.shape[1] / 4 and im.std() > 0


def _reference_checkpoint(model: MaskedAutoencoder) -> dict:
    """The facebookresearch/mae layout: encoder keys at top level, under 'model'."""
    state = {k.removeprefix("encoder."): v.clone() for k, v in model.state_dict().items()}
    assert "blocks.0.attn.qkv.weight" in state and "decoder_blocks.0.attn.qkv.weight" in state
    return {"model": state, "epoch": 399}


def test_external_checkpoint_loading(tmp_path):
    torch.manual_seed(1)
    src = MaskedAutoencoder(img_size=32, **TINY)
    path = tmp_path / "checkpoint-399.pth"
    torch.save(_reference_checkpoint(src), path)

    est = MAEPretrainer.from_checkpoint(path, preset="tiny", img_size=32, precision="fp32")
    rep = est.init_report_
    assert len(rep["loaded"]) == len(src.state_dict()) and rep["initialised"] == [] and rep["unused"] == []
    for k, v in src.state_dict().items():
        torch.testing.assert_close(est.module_.state_dict()[k], v, rtol=0, atol=0)
    patches = _patches(n_images=1)
    emb = est.transform(patches)
    assert emb.shape == (len(patches), 32)

    # a bare encoder takes the encoder tensors and reports the decoder ones as unused
    from biodatacentric.nn.vit import ViTEncoder

    enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    rep = load_mae_checkpoint(enc, path)
    assert "blocks.1.attn.qkv.weight" in rep["loaded"] and any(k.startswith("decoder_") for k in rep["unused"])
    torch.testing.assert_close(enc.blocks[1].attn.qkv.weight, src.encoder.blocks[1].attn.qkv.weight)

    # a different image size: the fixed sin-cos tables are resized, everything else loads
    rep = load_mae_checkpoint(MaskedAutoencoder(img_size=48, **TINY), path)
    assert any("encoder.pos_embed" in r for r in rep["resized"])

    # continued pretraining from the checkpoint
    cont = _est(max_epochs=1, init_checkpoint=str(path)).fit(patches)
    assert len(cont.init_report_["loaded"]) == len(src.state_dict())

    # wrong width: a clear error naming the tensors
    with pytest.raises(ValueError, match=r"(?s)shape mismatch.*blocks.0.attn.qkv.weight"):
        MAEPretrainer.from_checkpoint(path, preset="tiny", embed_dim=64, img_size=32)
    with pytest.raises(ValueError, match="none of the tensors"):
        load_mae_checkpoint(_tiny(), {"model": {"foo.weight": torch.zeros(2)}})


@pytest.mark.parametrize("layout", ["own", "reference", "ddp", "ddp_state_dict", "prefixed"])
def test_one_key_remapping_serves_both_loaders(layout):
    """The pretrainer's checkpoint loader and the segmenter's encoder= read every layout through
    one remapping: both find the same encoder tensors, and the MAE loads completely."""
    from biodatacentric.nn.weights import map_reference_state, resolve_encoder

    torch.manual_seed(2)
    src = MaskedAutoencoder(img_size=32, **TINY)
    own = src.state_dict()
    ref = {k.removeprefix("encoder."): v for k, v in own.items()}
    state = {"own": own, "reference": {"model": ref, "epoch": 3},
             "ddp": {"module." + k: v for k, v in ref.items()},
             "ddp_state_dict": {"state_dict": {"module." + k: v for k, v in own.items()}},
             "prefixed": {"backbone." + k: v for k, v in ref.items()}}[layout]
    mapped = map_reference_state(state)
    assert sorted(mapped) == sorted(own)
    encoder, _, _ = resolve_encoder(state)
    assert sorted(encoder) == sorted(src.encoder.state_dict())
    for k, v in encoder.items():
        torch.testing.assert_close(v, own["encoder." + k], rtol=0, atol=0)
    rep = load_mae_checkpoint(MaskedAutoencoder(img_size=32, **TINY), state)
    assert len(rep["loaded"]) == len(own) and rep["unused"] == [] and rep["initialised"] == []


def test_bad_parameters_raise_clear_errors():
    patches = _patches(n_images=1)
    with pytest.raises(ValueError, match="img_size=30 is not a multiple"):
        _est(img_size=30).fit(patches)
    with pytest.raises(ValueError, match="larger than the patches"):
        _est(img_size=48).fit(patches)
    with pytest.raises(ValueError, match="mask_ratio"):
        _est(mask_ratio=1.0).fit(patches)
    with pytest.raises(ValueError, match="preset"):
        _est(preset="huge").fit(patches)
    with pytest.raises(ValueError, match="pool"):
        _est(pool="max").fit(patches)


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("path", ["chunked", "fp32_flash"])
def test_cpu_bf16_attention_matches_fp32_within_bf16_tolerance(path, monkeypatch):
    """The CPU bf16 attention paths (chunked bf16 products with a float32 softmax; float32
    flash attention for long sequences) give the float32 result and gradients to bf16
    accuracy, for every chunk size."""
    import biodatacentric.nn.vit as vit

    if path == "fp32_flash":
        if not vit._HAS_CPU_FLASH:
            pytest.skip("torch without the CPU flash-attention kernels")
        monkeypatch.setattr(vit, "_CHUNK_BYTES", 16)  # every sequence counts as long
    torch.manual_seed(0)
    attn = vit.Attention(64, 4)
    x = torch.randn(5, 23, 64)
    g = torch.randn(5, 23, 64)

    def run(autocast, chunk_bytes=None):
        if chunk_bytes is not None:
            monkeypatch.setattr(vit, "_CHUNK_BYTES", chunk_bytes)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = attn(xi)
        grads = torch.autograd.grad(out.float(), [xi, attn.qkv.weight, attn.proj.weight], g)
        return out, grads

    ref, ref_grads = run(False)
    out, grads = run(True)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) < 0.02
    for a, b in zip(grads, ref_grads):
        assert _rel(a, b) < 0.02
    if path == "chunked":  # one image per chunk and all images in one chunk agree
        one, _ = run(True, chunk_bytes=1)
        all_, _ = run(True, chunk_bytes=1 << 30)
        torch.testing.assert_close(one.float(), all_.float(), rtol=0.02, atol=1e-2)
        assert _rel(one, ref) < 0.02


@pytest.mark.parametrize("autocast", [False, True])
def test_block_forward_rows_equals_gathered_forward(autocast):
    from biodatacentric.nn.vit import Block

    torch.manual_seed(0)
    blk = Block(32, 4)
    x = torch.randn(3, 17, 32, requires_grad=True)
    rows = torch.stack([torch.randperm(17, generator=torch.Generator().manual_seed(i))[:6] for i in range(3)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = torch.gather(blk(x), 1, rows[..., None].expand(-1, -1, 32))
        sub = blk.forward_rows(x, rows)
    tol = 0.01 if autocast else 1e-5
    assert _rel(sub, ref) < tol
    params = [x] + list(blk.parameters())
    for a, b in zip(torch.autograd.grad(sub.float().sum(), params), torch.autograd.grad(ref.float().sum(), params)):
        assert _rel(a, b) < 2 * tol


@pytest.mark.parametrize("kw", [{}, {"norm_pix_loss": True}, {"cls_token": False}, {"in_chans": 3}])
def test_training_loss_equals_forward_loss(kw):
    """training_loss (prediction head and loss on masked patches only) is forward's loss."""
    m = _tiny(**kw)
    x = torch.rand(3, kw.get("in_chans", 1), 32, 32)
    loss, _, _ = m(x, 0.75, torch.Generator().manual_seed(1))
    fast = m.training_loss(x, 0.75, torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast, loss, rtol=1e-5, atol=1e-7)
    params = list(m.parameters())
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(loss, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_mae_max_time_limits_fit():
    from biodatacentric import MAEPretrainer, Patches, make_vessels

    img, _ = make_vessels((2, 64, 64), random_state=0)
    p = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32))
    mae = MAEPretrainer(preset="tiny", max_epochs=20, batch_size=4, n_components=None, precision="fp32",
                        random_state=0, progress=False, max_time=1e-6).fit(p)
    assert len(mae.history_["loss"]) == 1 and mae.history_["epochs_planned"] == [1.0]
