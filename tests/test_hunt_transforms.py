"""Tests of the hunter's test-time transforms (transforms="dihedral") and the pairwise-Dice score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from estimator_cases import tiny_patches, tiny_segmenter

from biodatacentric import Patches, make_vessels
from biodatacentric.hunt import MCDropoutHunter, aggregate
from biodatacentric.hunt import _sampling as TT
from biodatacentric.hunt.aggregate import pairwise_dice_disagreement
from biodatacentric.hunt.uncertainty import compute_measures
from biodatacentric.nn.transunet import TransUNet


class Pointwise(nn.Module):
    """Logits (-a x, a x): every pixel on its own, so exactly equivariant under every transform."""

    def __init__(self, a: float = 3.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.a * (x - 0.5), self.a * (x - 0.5)], dim=1)


class InertDropout(nn.Module):
    """A fixed, orientation-dependent convolution with a dropout whose output is multiplied by 0:
    dropout is 'active' (p > 0) but cannot change the output."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 0.0 * self.drop(y)


def _no_dropout_net() -> TransUNet:
    g = torch.random.get_rng_state()
    torch.manual_seed(1)
    net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4,
                    drop=0.0, decoder_dropout=0.0).eval()
    torch.random.set_rng_state(g)
    return net


def _manual_dihedral_probs(net: nn.Module, images: np.ndarray, n_samples: int) -> torch.Tensor:
    """(T, n, C, H, W) probabilities computed by hand: transform, run, transform back."""
    x = torch.from_numpy(images.astype(np.float32))[:, None]
    out = []
    with torch.no_grad():
        for t in range(n_samples):
            k = t % 8
            rot = torch.rot90(x, k % 4, dims=(-2, -1))
            if k >= 4:
                rot = rot.flip(-1)
            y = net(rot)
            if k >= 4:
                y = y.flip(-1)
            out.append(torch.softmax(torch.rot90(y, -(k % 4), dims=(-2, -1)), dim=1))
    return torch.stack(out)


def test_dihedral_transforms_invert_and_are_the_eight_symmetries():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 1, 3, 5)   # non-square, no symmetry
    images = set()
    for k in range(8):
        y = TT.apply(x, k)
        assert tuple(y.shape[-2:]) == ((3, 5) if k % 2 == 0 else (5, 3))
        assert torch.equal(TT.invert(y, k), x)
        images.add(tuple(y[0, 0].flatten().tolist()) + tuple(y.shape))
    assert len(images) == 8                          # eight different transforms
    assert torch.equal(TT.apply(x, 0), x)            # 0 is the identity
    assert TT.sample_transforms("dihedral", 10) == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    with pytest.raises(ValueError, match="transforms"):
        TT.sample_transforms("flips", 4)


@pytest.mark.parametrize("patch_shape", [(32, 32), (32, 48)])
def test_outputs_are_mapped_back_exactly(patch_shape):
    """An equivariant model gives 8 identical samples only if every output is transformed back to
    where its input came from; the mean prediction is then the model's plain prediction."""
    img, _ = make_vessels((2, 64, 96), random_state=3)
    pool = Patches.from_arrays(img, axes="ZYX", patch_shape=patch_shape)
    net = Pointwise()
    h = MCDropoutHunter(net, n_samples=8, transforms="dihedral", measure="variance", aggregate="mean",
                        random_state=0).fit(pool)
    np.testing.assert_allclose(h.scores_, 0.0, atol=1e-12)
    maps = h.uncertainty_maps(pool[:3])
    with torch.no_grad():
        plain = torch.sigmoid(2 * net.a * (torch.from_numpy(pool.images(np.arange(3))) - 0.5)).numpy()
    np.testing.assert_allclose(maps["mean_probability"], plain, rtol=1e-5, atol=1e-6)
    # the same pipeline without the inverse would disagree: a rotated output is misplaced
    x = torch.from_numpy(pool.images(np.arange(3)).astype(np.float32))[:, None]
    misplaced = torch.flip(net(TT.apply(x, 4)), dims=(-2,)) if patch_shape[0] == patch_shape[1] else None
    if misplaced is not None:
        assert not torch.allclose(misplaced, net(x))


def test_no_active_dropout_none_is_zero_dihedral_varies():
    pool = tiny_patches()
    net = InertDropout()
    none = MCDropoutHunter(net, n_samples=8, transforms="none", aggregate="top_q", random_state=0).fit(pool)
    assert np.all(none.scores_ < 1e-6)            # dropout is on but changes nothing: float rounding only
    maps = none.uncertainty_maps(pool[:2])
    assert np.all(maps["variation_ratio"] == 0)   # identical votes
    assert np.all(MCDropoutHunter(net, n_samples=8, transforms="none", aggregate="pairwise_dice",
                                  random_state=0).fit(pool).scores_ == 0)
    dihedral = MCDropoutHunter(net, n_samples=8, transforms="dihedral", aggregate="top_q", random_state=0).fit(pool)
    assert np.all(dihedral.scores_ > 1e-3)        # the transforms make the samples differ
    maps = dihedral.uncertainty_maps(pool[:2])
    assert maps["variation_ratio"].max() > 0
    # a network with no dropout at all: "none" would be meaningless and says what to do
    with pytest.raises(ValueError, match="transforms='dihedral'"):
        MCDropoutHunter(_no_dropout_net(), n_samples=4, transforms="none").fit(pool)
    assert MCDropoutHunter(_no_dropout_net(), n_samples=4, transforms="dihedral").fit(pool).scores_.shape == (12,)


@pytest.mark.parametrize("mode", ["full", "decoder_only"])
def test_dihedral_scores_equal_a_hand_computation(mode):
    """Without dropout the samples are deterministic: the hunter's scores are those of the 8
    transformed-and-back predictions computed by hand, in both modes."""
    pool = tiny_patches()[:6]
    net = _no_dropout_net()
    h = MCDropoutHunter(net, n_samples=8, mode=mode, transforms="dihedral", aggregate="top_q", random_state=0).fit(pool)
    probs = _manual_dihedral_probs(net, pool.images(), 8)
    stats = compute_measures(probs, ["mutual_information"])
    expected = aggregate(stats["mutual_information"].numpy(), "top_q", top_q=0.01)
    np.testing.assert_allclose(h.scores_, expected, rtol=1e-4, atol=1e-7)
    assert np.all(h.scores_ > 0)


def test_decoder_only_encodes_once_per_distinct_transform():
    net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4,
                    drop=0.1, decoder_dropout=0.2).eval()
    seen = {"vit_batch": [], "head_batch": []}
    net.encoder.patch_embed.register_forward_hook(lambda mod, inp, out: seen["vit_batch"].append(out.shape[0]))
    net.decoder.head.register_forward_hook(lambda mod, inp, out: seen["head_batch"].append(out.shape[0]))
    pool = tiny_patches()[:4]
    for n_samples, distinct in ((6, 6), (12, 8)):
        seen = {k: [] for k in seen}
        MCDropoutHunter(net, n_samples=n_samples, mode="decoder_only", transforms="dihedral", batch_size=4,
                        random_state=0).fit(pool)
        assert seen["vit_batch"] == [distinct * 4]       # encoder once per distinct transform and patch
        assert seen["head_batch"] == [n_samples * 4]     # the decoder's tail once per sample


@pytest.mark.parametrize("mode", ["full", "decoder_only"])
def test_dihedral_with_dropout_is_seeded_and_leaves_model_and_rng_alone(mode):
    seg, pool = tiny_segmenter(), tiny_patches()
    before = {k: v.detach().clone() for k, v in seg.module_.state_dict().items()}
    flags = {name: m.training for name, m in seg.module_.named_modules()}
    torch.manual_seed(123)
    rng_state = torch.random.get_rng_state()
    kw = dict(n_samples=8, mode=mode, transforms="dihedral", aggregate="top_q")
    a = MCDropoutHunter(seg, random_state=7, **kw).fit(pool)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    b = MCDropoutHunter(seg, random_state=7, **kw).fit(pool)
    c = MCDropoutHunter(seg, random_state=8, **kw).fit(pool)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    assert not np.array_equal(a.scores_, c.scores_)      # dropout masks still sampled, from the seed
    after = seg.module_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {name: m.training for name, m in seg.module_.named_modules()} == flags
    # the maps come from the same seeded passes as fit
    maps = a.uncertainty_maps(pool)
    np.testing.assert_allclose(aggregate(maps["mutual_information"], "top_q", top_q=0.01), a.scores_, rtol=1e-5)


def test_transforms_none_reproduces_plain_mc_dropout():
    """transforms='none' draws the same dropout masks as before transforms existed: the samples are
    the module's outputs on the repeated batch, under the same per-batch seed."""
    from biodatacentric.hunt._sampling import batch_seed, dropout_modules, sampling_mode

    seg, pool = tiny_segmenter(), tiny_patches()[:4]
    h = MCDropoutHunter(seg, n_samples=5, transforms="none", aggregate="top_q", batch_size=4, random_state=3).fit(pool)
    module = seg.module_
    x = torch.from_numpy(pool.images().astype(np.float32))[:, None]
    with torch.random.fork_rng(), sampling_mode(module), torch.no_grad():
        torch.manual_seed(batch_seed(3, 0))
        for m in dropout_modules(module):
            m.train(True)
        probs = torch.softmax(module(x.repeat(5, 1, 1, 1)), dim=1).reshape(5, 4, 2, 32, 32)
    mi = compute_measures(probs, ["mutual_information"])["mutual_information"].numpy()
    np.testing.assert_allclose(h.scores_, aggregate(mi, "top_q", top_q=0.01), rtol=1e-5)


# ---------------------------------------------------------------------- pairwise Dice
def test_pairwise_dice_disagreement_known_values():
    m = np.zeros((4, 3, 8, 8), bool)
    m[:, 0, 2, :] = True                         # patch 0: four identical lines
    m[:2, 1, 2, :] = True                        # patch 1: two samples draw a line, two draw nothing
    # patch 2: all empty -> agreement
    out = pairwise_dice_disagreement(m)
    # patch 1: 6 pairs, 1 (line, line) and 1 (empty, empty) agree, 4 mixed pairs have Dice 0
    np.testing.assert_allclose(out, [0.0, 4 / 6, 0.0])
    half = m.copy()
    half[1, 0, 2, 4:] = False                    # one sample draws half the line: Dice 2*4/(8+4) with 3 others
    d = 2 * 4 / 12
    np.testing.assert_allclose(pairwise_dice_disagreement(half)[0], 1 - (3 * d + 3 * 1.0) / 6)
    assert np.all(pairwise_dice_disagreement(m[:1]) == 0)    # one sample: nothing to disagree with
    labels = m.astype(np.uint8)
    np.testing.assert_allclose(aggregate(np.zeros((3, 8, 8)), "pairwise_dice", labels=labels), out)
    with pytest.raises(ValueError, match="needs labels"):
        aggregate(np.zeros((3, 8, 8)), "pairwise_dice")
    with pytest.raises(ValueError, match="labels must have shape"):
        aggregate(np.zeros((2, 8, 8)), "pairwise_dice", labels=labels)


def test_pairwise_dice_hunter_matches_score_table_and_ignores_area():
    seg, pool = tiny_segmenter(), tiny_patches()
    h = MCDropoutHunter(seg, n_samples=8, transforms="dihedral", aggregate="pairwise_dice", random_state=2).fit(pool)
    assert np.all((h.scores_ >= 0) & (h.scores_ <= 1))
    table = h.score_table(pool, measures=["entropy"], aggregates=["mean", "pairwise_dice"])
    assert sorted(table) == ["entropy/mean", "masks/pairwise_dice"]
    np.testing.assert_allclose(table["masks/pairwise_dice"], h.scores_, rtol=1e-6)
    # the score does not depend on the measure
    other = MCDropoutHunter(seg, n_samples=8, transforms="dihedral", aggregate="pairwise_dice", measure="variance",
                            random_state=2).fit(pool)
    np.testing.assert_array_equal(other.scores_, h.scores_)
