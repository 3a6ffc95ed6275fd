"""QualityMonitor (issue 21): agreement statistics, calibration, decisions, blank masks, save/load."""

import numpy as np
import pytest
import torch

from biodatacentric import EmbeddingDrift, QualityMonitor, RCAMonitor, make_vessels
from tests.estimator_cases import tiny_patches, tiny_segmenter
from biodatacentric.monitor._agreement import agreement_statistics, sample_foreground, sample_tiles
from biodatacentric.monitor._conformal import conformal_halfwidth, cross_fitted


@pytest.fixture(scope="module")
def stack():
    return make_vessels((2, 48, 48), random_state=7)


@pytest.fixture(scope="module")
def monitor():
    return QualityMonitor(tiny_segmenter(), n_samples=4, n_tiles=3, n_corruptions=3, n_estimators=20,
                          random_state=0).fit(tiny_patches())


def test_blank_and_full_masks_fail_without_exception(monitor, stack):
    img, mask = stack
    for bad, word in ((np.zeros_like(mask), "blank"), (np.ones_like(mask), "full")):
        rec = monitor.assess(img, bad, axes="ZYX")
        assert rec["estimated_dice"] == 0.0 and rec["decision"] == "fail" and not rec["passed"]
        assert word in rec["reasons"][0]
        assert monitor.score(img, bad, axes="ZYX") == 0.0


def test_score_is_the_float_of_the_record(monitor, stack):
    img, mask = stack
    est = monitor.score(img, mask, axes="ZYX")
    rec = monitor.assess(img, mask, axes="ZYX")
    assert isinstance(est, float) and est == rec["estimated_dice"]
    lo, hi = rec["interval"]
    assert 0.0 <= lo <= est <= hi <= 1.0
    assert rec["decision"] in ("pass", "fail", "review")
    assert set(rec["statistics"]) == set(monitor.reference_statistics_)
    assert rec["signals"]["rca"] is None and rec["signals"]["drift"] is None
    # the decision follows the estimate and the review band
    m = monitor.review_margin
    expected = "pass" if est >= 0.7 + m else "fail" if est < 0.7 - m else "review"
    assert rec["decision"] == expected


def test_calibration_rows_are_cross_fitted(monitor):
    n = monitor.n_references_
    # per-patch rows (prediction + corruptions of each reference), then as many pooled rows (the default)
    assert monitor.calibration_unit == "pooled" and monitor.monotone
    assert len(monitor.calibration_y_) == 2 * n * (1 + monitor.n_corruptions)
    assert monitor.calibration_X_.shape[1] == len(monitor.reference_statistics_)
    resid = np.abs(monitor.calibration_y_ - monitor.calibration_oof_)
    assert monitor.halfwidth_ == pytest.approx(conformal_halfwidth(resid, monitor.coverage))
    # in-sample predictions fit the rows better than the out-of-group ones
    in_sample = monitor._calibration_map().predict(monitor.calibration_X_)
    assert np.mean(np.abs(in_sample - monitor.calibration_y_)) < np.mean(resid)


def test_cross_fitted_never_sees_the_predicted_group():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    groups = np.repeat(np.arange(3), 20).astype(str)
    y = np.where(groups == "2", 0.9, 0.1)      # group 2 is unlike the others in y only
    oof = cross_fitted(X, y, groups, n_estimators=20, seed=0)
    assert np.all(oof[groups == "2"] < 0.5)   # predicted from groups 0 and 1, which say 0.1


def test_conformal_halfwidth_quantile():
    r = np.arange(1, 11) / 10.0             # |residuals| 0.1 .. 1.0
    assert conformal_halfwidth(r, 0.5) == pytest.approx(0.6)   # ceil(11 * 0.5) = 6th
    assert conformal_halfwidth(r, 0.99) == pytest.approx(1.0)
    assert conformal_halfwidth(np.array([]), 0.9) == 1.0


def test_agreement_statistics_rank_a_worse_mask_lower(stack):
    img, mask = stack
    probs = np.repeat(mask[None].astype(np.float32) * 0.9, 3, axis=0)
    good = agreement_statistics(probs, mask)
    shifted = agreement_statistics(probs, np.roll(mask, 6, axis=-1))
    assert good["sample_mask_dice"] == 1.0 and shifted["sample_mask_dice"] < 0.8
    assert good["pairwise_dice"] == shifted["pairwise_dice"] == 1.0
    assert good["uncertainty_mass_in"] > shifted["uncertainty_mass_in"]


def test_sampling_restores_flags_and_rng():
    seg = tiny_segmenter()
    module = seg.module_
    flags = [m.training for m in module.modules()]
    tiles = tiny_patches().images()[:2]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    p = sample_foreground(module, tiles, 3, "both", seed=0)
    after = torch.rand(1)
    assert torch.equal(before, after)                    # caller's random state untouched
    assert [m.training for m in module.modules()] == flags
    assert p.shape == (3, 2, *tiles.shape[1:]) and np.all((p >= 0) & (p <= 1))
    # flips without dropout are deterministic and sample 0 is the plain eval forward
    f1 = sample_foreground(module, tiles, 4, "flips", seed=0)
    f2 = sample_foreground(module, tiles, 4, "flips", seed=1)
    np.testing.assert_allclose(f1, f2, atol=1e-6)
    eval_fg = 1 - seg.predict_proba(tiles)[:, 0]
    np.testing.assert_allclose(f1[0], eval_fg, atol=1e-5)
    # dropout samples differ from each other (the segmenter has dropout)
    d = sample_foreground(module, tiles, 2, "dropout", seed=0)
    assert not np.allclose(d[0], d[1])


def test_sample_tiles_cover_every_slice():
    img = np.arange(3 * 20 * 20, dtype=np.float32).reshape(3, 20, 20)
    tiles, windows = sample_tiles(img, (8, 8), 6, seed=0)
    assert tiles.shape == (6, 8, 8) and sorted({w[0] for w in windows}) == [0, 1, 2]
    small, _ = sample_tiles(img, (32, 32), 2, seed=0)
    assert small.shape == (2, 20, 20)


def test_bad_input_names_the_parameter(stack):
    with pytest.raises(ValueError, match="segmenter"):
        QualityMonitor().fit(tiny_patches())
    with pytest.raises(ValueError, match="sampling"):
        QualityMonitor(tiny_segmenter(), sampling="mc").fit(tiny_patches())
    with pytest.raises(ValueError, match="n_samples"):
        QualityMonitor(tiny_segmenter(), n_samples=1).fit(tiny_patches())
    with pytest.raises(ValueError, match="fitted TransUNetSegmenter"):
        QualityMonitor(object.__new__(type(tiny_segmenter()))).fit(tiny_patches())


def test_rca_and_drift_are_combined(stack, tmp_path):
    img, mask = stack
    p = tiny_patches()
    rca = RCAMonitor(n_pixels=1000, n_estimators=10, normalize="none", random_state=0, verbose=False).fit(p)
    emb = lambda x: x.reshape(len(x), -1)[:, ::37]  # noqa: E731
    mon = QualityMonitor(tiny_segmenter(), n_samples=3, n_tiles=3, n_corruptions=2, n_estimators=10, rca=rca,
                         embedder=emb, normalize="none", threshold=0.0, review_margin=0.0, drift_review=0.0,
                         random_state=0).fit(p)
    assert mon.rca_ is rca and isinstance(mon.drift_, EmbeddingDrift)   # a fitted RCA is used as it is
    rec = mon.assess(img, mask, axes="ZYX")
    sig = rec["signals"]
    assert rec["estimated_dice"] == pytest.approx(min(sig["agreement"], sig["rca"]))
    assert sig["rca"] == pytest.approx(rca.score(img, mask, axes="ZYX")["estimated_dice"])
    assert rec["decision"] == "review" and rec["driver"] == "drift"     # every drift >= 0 is sent to review
    mean = mon.set_params(combine="mean").assess(img, mask, axes="ZYX")
    assert mean["estimated_dice"] == pytest.approx((sig["agreement"] + sig["rca"]) / 2)
    # an unfitted RCA monitor is cloned and fitted on the references
    mon2 = QualityMonitor(tiny_segmenter(), n_samples=3, n_tiles=3, n_corruptions=1, n_estimators=10,
                          rca=RCAMonitor(n_pixels=1000, n_estimators=10, normalize="none", random_state=0,
                                         verbose=False), random_state=0).fit(p)
    assert mon2.rca_ is not mon2.rca and mon2.rca_.n_references_ == len(p)
    # save / load keeps RCA, drift and the calibration map
    folder = mon.save(tmp_path / "qm")
    again = QualityMonitor.load(folder, segmenter=tiny_segmenter(), embedder=emb, rca=rca)
    rec2 = again.set_params(combine="mean").assess(img, mask, axes="ZYX")
    assert rec2["estimated_dice"] == pytest.approx(mean["estimated_dice"])
    assert rec2["signals"]["drift"] == pytest.approx(sig["drift"])


def test_agreement_counts_add_up_to_the_pooled_statistics():
    from biodatacentric.monitor._agreement import agreement_counts, statistics_from_counts

    rng = np.random.default_rng(0)
    probs = rng.random((5, 3, 16, 16)).astype(np.float32) ** 2
    mask = rng.random((3, 16, 16)) < 0.3
    summed = sum(agreement_counts(probs[:, i], mask[i]) for i in range(3))
    pooled = agreement_statistics(probs, mask)
    from_counts = statistics_from_counts(summed, 5)
    assert from_counts == pytest.approx(pooled, abs=1e-6)


def test_pooled_rows_stay_within_one_group_and_sum_counts():
    from biodatacentric.monitor._conformal import pooled_rows

    # 4 references in 2 groups, each with its prediction row followed by 2 corrupted rows
    is_pred = np.array([True, False, False] * 4)
    groups = np.repeat(["a", "a", "b", "b"], 3)
    counts = np.arange(12, dtype=float)[:, None] * np.array([[1.0, 10.0]])
    truth = np.column_stack([np.arange(12), np.full(12, 20), np.full(12, 30)]).astype(float)
    c, t, g = pooled_rows(counts, truth, groups, is_pred, pool_size=2, rng=np.random.default_rng(0))
    assert len(c) == 12 and set(g) == {"a", "b"}                  # as many rows as candidates per group
    for ci, ti, gi in zip(c, t, g):
        # two references of the group, one candidate each: the row indices sum to ci[0]
        rows_a = {0, 1, 2} | {3, 4, 5} if gi == "a" else {6, 7, 8} | {9, 10, 11}
        assert ci[1] == 10 * ci[0] and ti[1] == 40 and ti[2] == 60
        assert any(i + j == ci[0] for i in rows_a for j in rows_a if i // 3 != j // 3)


def test_pooled_and_monotone_calibration(stack, tmp_path):
    img, mask = stack
    kw = dict(n_samples=3, n_tiles=4, n_corruptions=2, n_estimators=15, normalize="none", random_state=0)
    patch = QualityMonitor(tiny_segmenter(), calibration_unit="patch", **kw).fit(tiny_patches())
    pooled = QualityMonitor(tiny_segmenter(), calibration_unit="pooled", **kw).fit(tiny_patches())
    n = len(patch.calibration_y_)
    assert len(pooled.calibration_y_) > n                            # per-patch rows plus pooled rows
    np.testing.assert_allclose(pooled.calibration_y_[:n], patch.calibration_y_)
    mono = QualityMonitor(tiny_segmenter(), calibration_unit="patch", monotone=True, **kw).fit(tiny_patches())
    assert not QualityMonitor(tiny_segmenter(), monotone=False, **kw).fit(tiny_patches())._monotonic_cst()
    # the estimate never falls when a Dice-like agreement statistic rises, the others fixed
    from biodatacentric.monitor._agreement import AGREEMENT_STATISTICS

    j = AGREEMENT_STATISTICS.index("sample_mask_dice")
    X = np.repeat(mono.calibration_X_[:1], 21, axis=0)
    X[:, j] = np.linspace(0, 1, 21)
    assert np.all(np.diff(mono._calibration_map().predict(X)) >= -1e-12)
    est = mono.score(img, mask, axes="ZYX")
    again = QualityMonitor.load(mono.save(tmp_path / "mono"), segmenter=tiny_segmenter())
    assert again.monotone and again.score(img, mask, axes="ZYX") == pytest.approx(est)
    with pytest.raises(ValueError, match="calibration_unit"):
        QualityMonitor(tiny_segmenter(), calibration_unit="stack").fit(tiny_patches())


def test_triangle_bounds_hold_for_random_masks():
    """The bounds from the Jaccard triangle inequality contain the true Dice of any mask, given the
    vote's true Dice (here computed exactly) and the mask's Dice with the vote."""
    from biodatacentric.metrics import dice
    from biodatacentric.monitor._conformal import triangle_bounds

    rng = np.random.default_rng(1)
    for _ in range(200):
        truth = rng.random((24, 24)) < rng.uniform(0.05, 0.5)
        vote = truth ^ (rng.random((24, 24)) < rng.uniform(0.0, 0.3))
        mask = (vote if rng.random() < 0.5 else truth) ^ (rng.random((24, 24)) < rng.uniform(0.0, 0.3))
        own = dice(vote, truth)
        lo, hi = triangle_bounds((own, own), dice(mask, vote))
        assert lo - 1e-9 <= dice(mask, truth) <= hi + 1e-9
    # the model's own prediction: the bounds collapse onto its quality; a mask as far from the vote
    # as the truth may be: anything from near 0 to 1
    assert triangle_bounds((0.7, 0.7), 1.0) == pytest.approx((0.7, 0.7))
    lo, hi = triangle_bounds((0.7, 0.7), 0.7)
    assert lo < 0.2 and hi == 1.0
    # a range of own quality widens the bounds
    lo2, hi2 = triangle_bounds((0.6, 0.8), 1.0)
    assert lo2 == pytest.approx(0.6) and hi2 == pytest.approx(0.8)


def test_bounded_combination_clips_rca_to_the_triangle_bounds(stack):
    img, mask = stack
    p = tiny_patches()
    rca = RCAMonitor(n_pixels=1000, n_estimators=10, normalize="none", random_state=0, verbose=False).fit(p)
    mon = QualityMonitor(tiny_segmenter(), n_samples=3, n_tiles=3, n_corruptions=2, n_estimators=10, rca=rca,
                         normalize="none", combine="bounded", random_state=0).fit(p)
    rec = mon.assess(img, mask, axes="ZYX")
    sig = rec["signals"]
    lo, hi = sig["bounds"]
    assert 0.0 <= lo <= hi <= 1.0 and 0.0 <= sig["own"] <= 1.0
    assert rec["estimated_dice"] == pytest.approx(float(np.clip(sig["rca"], lo, hi)))
    assert rec["interval"][0] <= rec["estimated_dice"] <= rec["interval"][1]
    # "auto": RCA for a mask unlike the model's output (its vote agrees less with it than the
    # samples with each other), the agreement estimate otherwise
    auto = mon.set_params(combine="auto").assess(img, mask, axes="ZYX")
    st = auto["statistics"]
    assert auto["signals"]["foreign"] == (st["mean_mask_dice"] < st["pairwise_dice"] - 0.05)
    assert auto["estimated_dice"] == pytest.approx(sig["rca"] if auto["signals"]["foreign"] else sig["agreement"])
    # without RCA the agreement estimate is clipped to the same bounds
    alone = QualityMonitor(tiny_segmenter(), n_samples=3, n_tiles=3, n_corruptions=2, n_estimators=10,
                           normalize="none", combine="bounded", random_state=0).fit(p)
    r2 = alone.assess(img, mask, axes="ZYX")
    lo2, hi2 = r2["signals"]["bounds"]
    assert r2["estimated_dice"] == pytest.approx(float(np.clip(r2["signals"]["agreement"], lo2, hi2)))
    # the model's own prediction is bounded to its own estimate; one tile per slice, so the tiles
    # do not overlap and the prediction pasted back is what assess predicts again
    from biodatacentric.monitor._agreement import sample_foreground, sample_tiles

    alone.set_params(n_tiles=2)
    tiles, windows = sample_tiles(img.astype(np.float32), alone.tile_shape_, 2, 0)
    det = sample_foreground(tiny_segmenter().module_, tiles, 1, "flips", 0)[0] > 0.5
    pred = np.zeros_like(mask)
    for (z, y, x, h, w), v in zip(windows, det):
        pred[z, y:y + h, x:x + w] = v
    assert 0 < pred.sum() < pred.size
    own = alone.assess(img, pred, axes="ZYX")["signals"]
    assert own["own_mask_dice"] == 1.0 and own["bounds"] == pytest.approx((own["own"], own["own"]))
