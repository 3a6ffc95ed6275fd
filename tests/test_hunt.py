"""Tests of stage 3: MC-dropout hunting, uncertainty measures, aggregation and the curation loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from estimator_cases import tiny_patches, tiny_segmenter

from biodatacentric import Patches, make_vessels
from biodatacentric.hunt import CurationLog, MCDropoutHunter, aggregate, model_fingerprint, skeleton_branches
from biodatacentric.hunt import uncertainty as U
from biodatacentric.hunt.hunter import dropout_modules
from biodatacentric.nn.transunet import TransUNet


# ---------------------------------------------------------------------- fixtures
def _bn_net(seed: int = 0) -> TransUNet:
    """A tiny TransUNet with BatchNorm whose running statistics would move in train mode."""
    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                    feature_size=4, drop=0.1, decoder_dropout=0.2, norm="batch")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.momentum = 0.9
    torch.random.set_rng_state(g)
    return net.eval()


def _segmenter():
    return tiny_segmenter()


def _pool():
    return tiny_patches()


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------- measures
def _random_probs(rng, shape):
    a = rng.gamma(0.5, size=shape)
    return a / a.sum(axis=-3, keepdims=True)


def test_measures_mathematical_properties():
    rng = np.random.default_rng(0)
    p = _random_probs(rng, (10, 3, 2, 8, 8))  # T, N, C, H, W
    h, mi = U.predictive_entropy(p), U.mutual_information(p)
    assert h.shape == mi.shape == (3, 8, 8)
    assert np.all(mi >= 0) and np.all(mi <= h + 1e-9)
    assert mi.max() > 0.05  # disagreeing samples give information
    assert np.all(h <= np.log(2) + 1e-9)
    # identical samples: no epistemic uncertainty, entropy unchanged
    same = np.repeat(p[:1], 7, axis=0)
    np.testing.assert_allclose(U.mutual_information(same), 0, atol=1e-6)
    np.testing.assert_allclose(U.variance(same), 0, atol=1e-12)
    np.testing.assert_allclose(U.variation_ratio(same), 0)
    np.testing.assert_allclose(U.predictive_entropy(same), U.predictive_entropy(p[:1]), rtol=1e-6)
    # two classes: class-summed variance is twice the foreground variance
    np.testing.assert_allclose(U.variance(p), 2 * p[:, :, 1].var(axis=0), rtol=1e-6)
    # entropy of a fair coin, zero probabilities are safe
    coin = np.full((2, 2, 1, 1), 0.5)
    np.testing.assert_allclose(U.predictive_entropy(coin), np.log(2), rtol=1e-6)
    hard = np.zeros((3, 2, 1, 1)); hard[:, 1] = 1.0
    assert np.isfinite(U.mutual_information(hard)).all() and U.predictive_entropy(hard).max() < 1e-9


def test_variation_ratio_and_mi_known_values():
    # 4 samples, labels 1, 1, 1, 0 -> ratio 1 - 3/4
    p = np.array([[0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.6, 0.4]])[:, :, None, None]
    assert float(U.variation_ratio(p)[0, 0]) == pytest.approx(0.25)
    # two confident opposite samples: MI = log 2 - H(0.9)
    q = np.array([[0.9, 0.1], [0.1, 0.9]])[:, :, None, None]
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert float(U.mutual_information(q)[0, 0]) == pytest.approx(np.log(2) - h09, rel=1e-5)


def test_measures_accept_torch_and_match_compute_measures():
    rng = np.random.default_rng(1)
    p = _random_probs(rng, (5, 2, 2, 4, 4)).astype(np.float32)
    t = torch.from_numpy(p)
    out = U.compute_measures(t)
    for name, fn in U.MEASURES.items():
        r = fn(t)
        assert isinstance(r, torch.Tensor)
        np.testing.assert_allclose(r.numpy(), fn(p), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out[name].numpy(), r.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["mean_probability"].numpy(), p[:, :, 1].mean(axis=0), rtol=1e-6)
    assert out["labels"].shape == (5, 2, 4, 4)
    with pytest.raises(ValueError, match="classes"):
        U.mutual_information(np.ones((3, 1, 4, 4)))
    with pytest.raises(ValueError, match="measure"):
        U.get_measure("nonsense")


# ---------------------------------------------------------------------- aggregation
def test_aggregate_rules():
    u = np.zeros((2, 10, 10))
    u[0, 0, :5] = 1.0
    u[1] += 0.2
    np.testing.assert_allclose(aggregate(u, "sum"), [5.0, 20.0])
    np.testing.assert_allclose(aggregate(u, "mean"), [0.05, 0.2])
    np.testing.assert_allclose(aggregate(u, "top_q", top_q=0.05), [1.0, 0.2])  # 5 pixels
    prob = np.zeros((2, 10, 10))
    prob[0, 0, :5] = 0.9  # predicted foreground exactly where patch 0 is uncertain
    fg = aggregate(u, "foreground_mean", mean_probability=prob, radius=0)
    np.testing.assert_allclose(fg, [1.0, 0.2])  # patch 1: no foreground -> whole-patch mean
    assert aggregate(u, "foreground_mean", mean_probability=prob, radius=1)[0] < 1.0  # dilation adds pixels
    with pytest.raises(ValueError, match="mean_probability"):
        aggregate(u, "structure")
    with pytest.raises(ValueError, match="aggregate"):
        aggregate(u, "median")


def test_skeleton_branches_and_structure_scores():
    m = np.zeros((32, 32), bool)
    m[15:17, 2:30] = True      # horizontal vessel
    m[2:15, 15:17] = True      # branch going up: a T junction
    lab, n = skeleton_branches(m, min_length=3)
    assert n == 3
    # uncertainty only on the upper branch -> the patch takes that branch's score
    u = np.zeros((32, 32))
    u[2:12, 14:18] = 1.0
    s = aggregate(u[None], "structure", mean_probability=m[None].astype(float), radius=0)[0]
    upper = lab[5, 15] if lab[5, 15] else lab[5, 16]
    assert upper > 0 and s == pytest.approx(u[lab == upper].mean())
    assert s > aggregate(u[None], "mean")[0]
    # disconnect: the horizontal vessel is cut in 2 of 4 samples
    samples = np.repeat(m[None], 4, axis=0).astype(np.uint8)
    samples[:2, 14:18, 6] = 0
    d = aggregate(np.zeros((1, 32, 32)), "structure", mean_probability=m[None].astype(float),
                  labels=samples[:, None], branch_score="disconnect", radius=0)
    assert d[0] == pytest.approx(0.5)
    # no predicted foreground: disconnect score 0, uncertainty score = patch mean
    empty = np.zeros((1, 32, 32))
    assert aggregate(empty + 0.3, "structure", mean_probability=empty)[0] == pytest.approx(0.3)


# ---------------------------------------------------------------------- the hunter
def test_real_segmenter_unchanged_by_hunting():
    seg, pool = _segmenter(), _pool()
    before = _state(seg.module_)
    assert any("running_mean" in k for k in before)
    proba = seg.predict_proba(pool[:3])
    for mode in ("full", "decoder_only"):
        MCDropoutHunter(seg, n_samples=4, mode=mode, random_state=0).fit(pool)
    after = seg.module_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in seg.module_.modules())
    np.testing.assert_array_equal(seg.predict_proba(pool[:3]), proba)


@pytest.mark.parametrize("mode", ["full", "decoder_only"])
def test_hunting_changes_no_weight_and_restores_flags(mode):
    net = _bn_net()
    net.decoder.blocks[0].train()          # a mixed pattern of flags must come back as it was
    flags = {name: m.training for name, m in net.named_modules()}
    before = _state(net)
    pool = _pool()
    h = MCDropoutHunter(net, n_samples=5, mode=mode, transforms="none", aggregate="top_q", batch_size=4,
                        random_state=0).fit(pool)
    h.uncertainty_maps(pool[:2])
    after = net.state_dict()
    assert set(before) == set(after)
    for k in before:  # every tensor, BN running stats and num_batches_tracked included
        assert torch.equal(before[k], after[k]), f"{k} changed"
    assert {name: m.training for name, m in net.named_modules()} == flags
    assert np.all(h.scores_ > 0)  # dropout really sampled
    # negative control: plain model.train() (what the authors' code does) moves BN statistics
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(pool.images([0, 1]))[:, None])
    assert not all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_only_dropout_is_sampled_and_decoder_only_runs_encoder_once():
    net = _bn_net()
    seen = {"bn": [], "vit_batch": [], "vit_dropout": []}
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda mod, inp: seen["bn"].append(mod.training))
    net.encoder.register_forward_pre_hook(lambda mod, inp: None)
    net.encoder.patch_embed.register_forward_hook(lambda mod, inp, out: seen["vit_batch"].append(out.shape[0]))
    vit_drop = dropout_modules(net.encoder)[0]
    vit_drop.register_forward_pre_hook(lambda mod, inp: seen["vit_dropout"].append(mod.training))
    pool = _pool()[:4]
    MCDropoutHunter(net, n_samples=6, mode="decoder_only", transforms="none", batch_size=4, random_state=0).fit(pool)
    assert seen["bn"] and not any(seen["bn"])        # BatchNorm stayed in eval mode
    assert seen["vit_batch"] == [4]                  # encoder once, not T times
    assert not any(seen["vit_dropout"])              # encoder deterministic
    seen = {k: [] for k in seen}
    MCDropoutHunter(net, n_samples=6, mode="full", transforms="none", batch_size=4, random_state=0).fit(pool)
    assert seen["vit_batch"] == [24] and all(seen["vit_dropout"]) and not any(seen["bn"])


def test_flags_restored_on_error():
    net = _bn_net()
    flags = {name: m.training for name, m in net.named_modules()}

    def boom(features):
        raise RuntimeError("decoder failed")

    net.decode = net.decode_sample = boom  # the failure happens while dropout is switched on
    with pytest.raises(RuntimeError, match="decoder failed"):
        MCDropoutHunter(net, n_samples=3, mode="decoder_only", random_state=0).fit(_pool())
    assert {name: m.training for name, m in net.named_modules()} == flags


def test_reproducible_ranking_and_user_rng_untouched():
    seg, pool = _segmenter(), _pool()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = MCDropoutHunter(seg, n_samples=5, transforms="none", aggregate="top_q", random_state=7).fit(pool)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = MCDropoutHunter(seg, n_samples=5, transforms="none", aggregate="top_q", random_state=7).fit(pool)
    c = MCDropoutHunter(seg, n_samples=5, transforms="none", aggregate="top_q", random_state=8).fit(pool)
    np.testing.assert_array_equal(a.scores_, b.scores_)
    np.testing.assert_array_equal(a.ranking_, b.ranking_)
    assert not np.array_equal(a.scores_, c.scores_)
    # the maps come from the same seeded passes as fit
    maps = a.uncertainty_maps(pool)
    np.testing.assert_allclose(aggregate(maps["mutual_information"], "top_q", top_q=0.01), a.scores_, rtol=1e-5)


def test_score_table_matches_fit():
    seg, pool = _segmenter(), _pool()
    h = MCDropoutHunter(seg, n_samples=4, measure="entropy", aggregate="foreground_mean",
                        random_state=3).fit(pool)
    table = h.score_table(pool)
    assert len(table) == 4 * 5 + 2   # + the measure-free disconnect/structure and masks/pairwise_dice
    np.testing.assert_allclose(table["entropy/foreground_mean"], h.scores_, rtol=1e-6)
    assert np.all((table["disconnect/structure"] >= 0) & (table["disconnect/structure"] <= 1))


def test_select_excludes_and_diversity():
    seg = _segmenter()
    img, mask = make_vessels((6, 64, 64), random_state=2)
    pool = Patches.from_arrays([img, img[::-1].copy()], axes="ZYX", patch_shape=(32, 32),
                               masks=[mask, mask[::-1].copy()])  # 2 stacks x 6 slices x 4 tiles
    h = MCDropoutHunter(seg, n_samples=3, slice_window=1, random_state=0).fit(pool)
    rng = np.random.default_rng(0)
    prov = pool.provenance()
    emb = rng.normal(size=(len(pool), 5))
    for trial in range(5):
        excl = rng.choice(len(pool), size=15, replace=False)
        for div in (None, "one_per_slice", emb):
            sel = h.select(3, exclude=excl, diversity=div)
            assert len(sel) == 3 and len(set(sel)) == 3
            assert not set(sel) & set(excl.tolist())
    # top-n without diversity follows the ranking
    np.testing.assert_array_equal(h.select(4), h.ranking_[:4])
    # one per stack within a one-slice neighbourhood
    sel = h.select(4, diversity="one_per_slice")
    for i in sel:
        for j in sel:
            if i != j and prov.source[i] == prov.source[j]:
                assert abs(int(prov.z[i]) - int(prov.z[j])) > 1
    with pytest.raises(ValueError, match="one_per_slice"):
        h.select(7, diversity="one_per_slice")  # 2 stacks x at most 3 slices
    with pytest.raises(ValueError, match="excluded"):
        h.select(3, exclude=np.arange(len(pool) - 2))
    with pytest.raises(ValueError, match="rows"):
        h.select(2, diversity=emb[:5])


def test_facility_location_prefers_other_clusters():
    seg = _segmenter()
    pool = _pool()
    h = MCDropoutHunter(seg, n_samples=3, n_candidates=6, random_state=0).fit(pool)
    # the 3 best-scored patches share one embedding; everything else sits in a second cluster
    emb = np.tile([0.0, 1.0], (len(pool), 1))
    emb[h.ranking_[:3]] = [1.0, 0.0]
    sel = h.select(2, diversity=emb)
    assert (sel[0] in h.ranking_[:3]) != (sel[1] in h.ranking_[:3])  # one from each cluster
    assert set(sel) <= set(h.ranking_[:6])                              # only among the candidates


def test_facility_location_picks_are_those_of_plain_greedy():
    """The hunter's diversity rule runs on the core-set selectors' greedy solver; each pick has
    the largest gain of the textbook greedy (summed increase of the best (1 + cos) / 2 over every
    non-excluded patch), the first such candidate in ranking order unless gains tie."""
    seg = _segmenter()
    pool = _pool()
    h = MCDropoutHunter(seg, n_samples=3, n_candidates=10, random_state=0).fit(pool)
    rng = np.random.default_rng(1)
    for trial in range(6):
        emb = rng.normal(size=(len(pool), 6))
        emb[3] = emb[4]                                          # duplicates: the second gains nothing
        excl = np.zeros(len(pool), bool)
        excl[rng.choice(len(pool), 3, replace=False)] = True
        order = h.ranking_[~excl[h.ranking_]]
        cands, keep = order[:10], np.flatnonzero(~excl)
        got = h.select(5, exclude=excl, diversity=emb).tolist()
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        sim = (1.0 + unit[keep] @ unit[cands].T) / 2.0
        cover = np.zeros(len(keep))
        for step, pick in enumerate(got):
            gains = np.maximum(sim, cover[:, None]).sum(axis=0) - cover.sum()
            gains[[c in got[:step] for c in cands]] = -np.inf
            j = list(cands).index(pick)
            assert gains[j] >= gains.max() - 1e-6, (trial, step)
            cover = np.maximum(cover, sim[:, j])


def test_errors_are_clear():
    pool = _pool()
    with pytest.raises(ValueError, match="mode"):
        MCDropoutHunter(_segmenter(), mode="encoder").fit(pool)
    with pytest.raises(ValueError, match="n_samples"):
        MCDropoutHunter(_segmenter(), n_samples=1).fit(pool)
    with pytest.raises(ValueError, match="precision"):
        MCDropoutHunter(_segmenter(), precision="fp16").fit(pool)
    with pytest.raises(ValueError, match="segmenter is None"):
        MCDropoutHunter().fit(pool)
    no_drop = TransUNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, feature_size=4,
                        drop=0.0, decoder_dropout=0.0)
    with pytest.raises(ValueError, match="no dropout"):
        MCDropoutHunter(no_drop, n_samples=3, transforms="none").fit(pool)
    with pytest.raises(ValueError, match="transforms"):
        MCDropoutHunter(_segmenter(), transforms="flips").fit(pool)


def test_plot_writes_png(tmp_path):
    h = MCDropoutHunter(_segmenter(), n_samples=3, random_state=0).fit(_pool())
    out = h.plot(_pool(), h.select(2), tmp_path / "critical.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- curation loop
def test_curation_round_trip(tmp_path):
    seg, pool = _segmenter(), _pool()
    h = MCDropoutHunter(seg, n_samples=4, random_state=0).fit(pool)
    critical = h.select(3, exclude=[h.ranking_[0]])
    log = CurationLog(tmp_path / "log.json")
    r = log.start_round(pool, critical, tmp_path / "round1", model=seg, hunter=h, model_name="M0")
    assert r == 1
    manifest = json.loads((tmp_path / "round1" / "manifest.json").read_text())
    assert [e["start_mask"] for e in manifest["patches"]] == ["prediction M0"] * 3
    # the starting masks are the model's prediction
    pred = seg.predict(pool[critical])
    for k, e in enumerate(manifest["patches"]):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "round1" / e["mask"]), pred[k])
    # a person corrects the second patch (the true mask), leaves the others
    e1 = manifest["patches"][1]
    truth = pool.masks(critical[1:2])[0]
    tifffile.imwrite(tmp_path / "round1" / e1["mask"], truth * 255)
    labelled = log.read_round(r)
    assert len(labelled) == 3
    np.testing.assert_array_equal(labelled.images(), pool.images(critical))
    np.testing.assert_array_equal(labelled.masks()[1], truth)
    np.testing.assert_array_equal(labelled.masks()[0], pred[0])
    prov, pprov = labelled.provenance(), pool.provenance()
    assert [(str(prov.source[k]), int(prov.z[k])) for k in range(3)] == \
        [(str(pprov.source[i]), int(pprov.z[i])) for i in critical]
    log.record_model(r, "M1", seg, metrics={"dice": 0.5})
    # the record survives a reload and says what happened
    again = CurationLog(tmp_path / "log.json")
    rec = again.round(1)
    assert rec["status"] == "trained" and rec["model"]["fingerprint"] == model_fingerprint(seg)
    assert [s["pool_index"] for s in rec["selected"]] == [int(i) for i in critical]
    assert [s["rank"] for s in rec["selected"]] == [int(np.flatnonzero(h.ranking_ == i)[0]) for i in critical]
    assert rec["hunter"]["seed"] == h.seed_ and rec["hunter"]["params"]["n_samples"] == 4
    edited = [lab["edited"] for lab in rec["labels"]["patches"]]
    assert edited == [bool(np.any(truth != pred[1])) if k == 1 else False for k in range(3)]
    assert again.summary()[0]["trained"] == {"M1": {"dice": 0.5}}
    # a second export into the same folder would mix with a person's work
    with pytest.raises(FileExistsError):
        log.start_round(pool, critical, tmp_path / "round1", hunter=h)
    assert len(CurationLog(tmp_path / "log.json").rounds) == 1


def test_model_fingerprint_sees_weight_changes():
    net = _bn_net()
    f0 = model_fingerprint(net)
    assert model_fingerprint(_bn_net()) == f0
    with torch.no_grad():
        net.decoder.head.bias.add_(1e-3)
    assert model_fingerprint(net) != f0


def test_labels_match_argmax_including_ties():
    from biodatacentric.hunt.uncertainty import compute_measures

    g = torch.Generator().manual_seed(0)
    for n_classes in (2, 3):
        p = torch.softmax(torch.randn(5, 2, n_classes, 8, 8, generator=g), dim=2)
        p[0, 0, :, 0, 0] = 1.0 / n_classes  # an exact tie: argmax takes the first class
        out = compute_measures(p)
        assert out["labels"].dtype == torch.uint8
        assert torch.equal(out["labels"].long(), p.argmax(dim=2))
        assert "labels" not in compute_measures(p, ["entropy"], labels=False)
