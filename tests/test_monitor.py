"""Tests of stage 4: the RCA quality monitor, its feature bank and the drift score."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from biodatacentric import make_vessels
from biodatacentric.metrics import dice
from biodatacentric.monitor import (DEFAULT_SIGMAS, EmbeddingDrift, RCAMonitor, decide, evaluate_estimates,
                                    feature_names, pixel_features, plot_rca_scatter)
from biodatacentric.monitor._sampling import plan_regions, training_sample
from biodatacentric.monitor.features import feature_margin


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def refs():
    pairs = [make_vessels((64, 64), random_state=s) for s in range(4)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module")
def query():
    return make_vessels((2, 80, 80), random_state=21)


def small(**kw):
    params = dict(classifier="extra_trees", n_pixels=2000, n_estimators=20, normalize="none", random_state=0,
                  n_jobs=1)
    params.update(kw)
    return RCAMonitor(**params)


# ---------------------------------------------------------------------- feature bank
def test_features_match_scipy_and_skimage_reference_filters():
    from skimage.feature import hessian_matrix_eigvals, structure_tensor_eigenvalues

    rng = np.random.default_rng(0)
    img = (ndi.gaussian_filter(rng.random((70, 62)), 1.2) * 4).astype(np.float32)
    feats = pixel_features(img)
    names = feature_names()
    assert feats.shape == (49, 70, 62) and feats.dtype == np.float32 and len(names) == 49
    x = img.astype(np.float64)
    ref = {"gaussian_0.3": ndi.gaussian_filter(x, 0.3)}
    sig = DEFAULT_SIGMAS
    for prev, s in zip(sig, sig[1:]):
        def g(order, s=s):
            return ndi.gaussian_filter(x, s, order=order)
        ix, iy = g((0, 1)), g((1, 0))
        hrr, hrc, hcc = g((2, 0)), g((1, 1)), g((0, 2))
        ev_h = hessian_matrix_eigvals([hrr, hrc, hcc])
        st = [ndi.gaussian_filter(a, s / 2) for a in (iy * iy, iy * ix, ix * ix)]
        ev_s = structure_tensor_eigenvalues(st)
        ref.update({
            f"gaussian_{s:g}": g(0),
            f"log_{s:g}": ndi.gaussian_laplace(x, s),
            f"gradmag_{s:g}": ndi.gaussian_gradient_magnitude(x, s),
            f"dog_{s:g}": ndi.gaussian_filter(x, prev) - g(0),
            f"hess_eig1_{s:g}": ev_h[0], f"hess_eig2_{s:g}": ev_h[1],
            f"st_eig1_{s:g}": ev_s[0], f"st_eig2_{s:g}": ev_s[1],
        })
    assert set(ref) == set(names)
    for i, name in enumerate(names):
        scale = np.abs(ref[name]).max() + 1e-12
        err = np.abs(feats[i] - ref[name]).max() / scale
        assert err < 1e-4, f"{name}: relative error {err:.2e}"
    # DoG is not the gradient magnitude (pitfall R3) and large scales differ (R2)
    assert not np.allclose(feats[names.index("dog_3.5")], feats[names.index("gradmag_3.5")])
    assert np.abs(feats[names.index("gaussian_10")] - feats[names.index("gaussian_5")]).max() > 1e-3


def test_features_of_a_crop_with_margin_equal_the_full_image():
    img = make_vessels((160, 150), random_state=3)[0]
    m = feature_margin()
    full = pixel_features(img)
    y0, y1, x0, x1 = 70, 90, 65, 80
    crop = img[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m]
    part = pixel_features(crop)[:, y0 - max(0, y0 - m):y1 - max(0, y0 - m), x0 - max(0, x0 - m):x1 - max(0, x0 - m)]
    np.testing.assert_allclose(part, full[:, y0:y1, x0:x1], rtol=1e-4, atol=1e-5)


def test_feature_stack_and_threads_agree():
    st = make_vessels((3, 40, 40), random_state=1)[0]
    a = pixel_features(st, sigmas=(0.7, 2.0), n_jobs=1)
    b = pixel_features(st, sigmas=(0.7, 2.0), n_jobs=2)
    assert a.shape == (3, 9, 40, 40)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="increase"):
        pixel_features(st[0], sigmas=(2.0, 1.0))


# ---------------------------------------------------------------------- RCA behaviour
def test_estimate_follows_segmentation_quality(refs, query):
    img, truth = query
    mon = small().fit(refs)
    good = mon.score(img, truth, axes="ZYX")
    eroded = np.stack([ndi.binary_erosion(t, iterations=2) for t in truth]).astype(np.uint8)
    shifted = np.roll(truth, 9, axis=2)
    inverted = 1 - truth
    est = {k: mon.score(img, m, axes="ZYX")["estimated_dice"]
           for k, m in (("eroded", eroded), ("shifted", shifted), ("inverted", inverted))}
    assert good["estimated_dice"] > 0.75 and good["passed"]
    assert good["estimated_dice"] > est["eroded"] > est["inverted"]
    assert good["estimated_dice"] > est["shifted"] + 0.1
    assert est["inverted"] < 0.3 and not mon.score(img, inverted, axes="ZYX")["passed"]
    r = good
    assert r["per_reference_dice"].shape == (4,) and r["reference_indices"].tolist() == [0, 1, 2, 3]
    assert r["best_reference"] == int(np.argmax(r["per_reference_dice"]))
    assert r["estimated_dice"] == pytest.approx(r["per_reference_dice"].max())
    assert set(r["timings"]) == {"features", "training", "references", "total"}


def test_aggregates(refs, query):
    img, truth = query
    mon = small().fit(refs)
    per = mon.score(img, truth, axes="ZYX")["per_reference_dice"]
    mean = mon.set_params(aggregate="mean").score(img, truth, axes="ZYX")["estimated_dice"]
    top2 = mon.set_params(aggregate="top_k", top_k=2).score(img, truth, axes="ZYX")["estimated_dice"]
    assert mean == pytest.approx(per.mean())
    assert top2 == pytest.approx(np.sort(per)[-2:].mean())


def test_same_seed_same_estimate(refs, query):
    img, truth = query
    noisy = np.where(np.random.default_rng(0).random(truth.shape) < 0.1, 1 - truth, truth)
    a = small(classifier="random_forest", n_estimators=10, random_state=5).fit(refs).score(img, noisy, axes="ZYX")
    b = small(classifier="random_forest", n_estimators=10, random_state=5).fit(refs).score(img, noisy, axes="ZYX")
    assert a["estimated_dice"] == b["estimated_dice"]
    np.testing.assert_array_equal(a["per_reference_dice"], b["per_reference_dice"])


def test_pixel_sample_is_class_balanced_and_spans_all_slices():
    # each slice has its own intensity offset, so the smoothed feature tells the slice
    img, truth = make_vessels((5, 60, 60), random_state=4)
    img = img + np.arange(5, dtype=np.float32)[:, None, None] * 10
    mon = small(n_pixels=1000, feature_scaling="none").fit((img[:1], truth[:1]))
    X, y = training_sample(mon, img, truth, seed=0)
    assert len(X) == 1000 and y.mean() == pytest.approx(0.5)
    slice_of = np.rint((X[:, 0] - 0.5) / 10).astype(int)
    counts = np.bincount(np.clip(slice_of, 0, 4), minlength=5)
    assert np.all(counts > 100), counts     # never only the first pixels (pitfall R1)


def test_tiles_cover_every_slice_and_respect_margin():
    mask = np.zeros((4, 300, 300), np.uint8)
    mask[:, 100:110, :] = 1
    mon = small(tile_size=64, n_tiles=8)
    regions = plan_regions(mon, mask, np.random.default_rng(0))
    assert len(regions) == 8 and {r[0] for r in regions} == {0, 1, 2, 3}
    m = feature_margin()
    for z, y0, y1, x0, x1, cy0, cy1, cx0, cx1 in regions:
        assert y1 - y0 == 64 and x1 - x0 == 64
        assert cy0 == max(0, y0 - m) and cy1 == min(300, y1 + m)
        assert cx0 == max(0, x0 - m) and cx1 == min(300, x1 + m)
    # small stacks use whole slices
    assert len(plan_regions(small(n_tiles=8).fit((mask[:1, :64, :64].astype(np.float32), mask[:1, :64, :64])),
                            mask[:2, :64, :64], np.random.default_rng(0))) == 2


def test_retrieval_uses_the_nearest_references_not_the_first(refs, query):
    img, truth = query
    imgs, masks = refs
    ref_emb = np.eye(4, 8, dtype=np.float32)                 # reference i points along axis i
    img_emb = np.array([[0, 0, 0.2, 1, 0, 0, 0, 0], [0, 0, 1, 0.1, 0, 0, 0, 0]], np.float32)
    mon = small(n_references=2).fit(refs, embeddings=ref_emb)
    r = mon.score(img, truth, axes="ZYX", embeddings=img_emb)
    assert sorted(r["reference_indices"].tolist()) == [2, 3]
    assert r["per_reference_dice"].shape == (2,)
    assert r["best_reference"] in (2, 3)
    with pytest.raises(ValueError, match="embeddings"):
        mon.score(img, truth, axes="ZYX")
    with pytest.raises(ValueError, match="reference embeddings"):
        small(n_references=2).fit(refs).score(img, truth, axes="ZYX", embeddings=img_emb)


def test_embedder_and_drift(refs, query):
    img, truth = query

    def embedder(patches):          # mean and std of each patch: a toy embedding
        flat = patches.reshape(len(patches), -1)
        return np.stack([flat.mean(1), flat.std(1), flat.max(1)], axis=1)

    train = embedder(refs[0])
    rng = np.random.default_rng(0)
    train = np.concatenate([train + rng.normal(0, 0.01, train.shape) for _ in range(5)])
    mon = small(embedder=embedder, n_references=2).fit(refs, training_embeddings=train)
    r = mon.score(img, truth, axes="ZYX")
    assert len(r["reference_indices"]) == 2
    assert 0.0 <= r["drift"]["percentile"] <= 100.0
    dark = mon.score(img * 0 + (img > 0.5) * 0.01, truth, axes="ZYX")
    assert dark["drift"]["median_distance"] >= r["drift"]["median_distance"]


def test_embedding_drift_percentile():
    rng = np.random.default_rng(1)
    train = np.abs(rng.normal(size=(400, 6)))
    d = EmbeddingDrift(k=5, random_state=0).fit(train)
    near = d.score(np.abs(rng.normal(size=(30, 6))))
    far = d.score(-np.abs(rng.normal(size=(30, 6))))
    assert near["percentile"] < 90 < far["percentile"]
    with pytest.raises(ValueError, match="dimensions"):
        d.score(np.ones((3, 4)))


# ---------------------------------------------------------------------- conventions and errors
class _Oracle(RCAMonitor):
    """Reverse 'classifier' returning fixed masks, to test the Dice bookkeeping."""

    def _reverse_scores(self, image, mask, ref_idx, seed, timings):
        return np.zeros((len(ref_idx), *self.reference_masks_.shape[1:]), np.uint8), {}


def test_empty_mask_dice_convention(query):
    img, truth = query
    ref_img = np.zeros((3, 32, 32), np.float32)
    ref_msk = np.zeros((3, 32, 32), np.uint8)
    ref_msk[1, 5:9, 5:9] = 1
    r = _Oracle(normalize="none").fit((ref_img, ref_msk)).score(img, truth, axes="ZYX")
    # empty prediction vs empty reference: 1.0; vs a reference with foreground: 0.0
    np.testing.assert_array_equal(r["per_reference_dice"], [1.0, 0.0, 1.0])
    assert dice(np.zeros(4), np.zeros(4)) == 1.0
    # blank predicted masks: an error by default, a constant prediction on request
    with pytest.raises(ValueError, match="only background"):
        small().fit((ref_img, ref_msk)).score(img, np.zeros_like(truth), axes="ZYX")
    blank = small(single_class="constant").fit((ref_img, ref_msk)).score(img, np.zeros_like(truth), axes="ZYX")
    np.testing.assert_array_equal(blank["per_reference_dice"], [1.0, 0.0, 1.0])
    full = small(single_class="constant").fit((ref_img, ref_msk)).score(img, np.ones_like(truth), axes="ZYX")
    assert full["per_reference_dice"][1] == pytest.approx(2 * 16 / (16 + 1024))


class _Fixed(RCAMonitor):
    """Predicts everything on reference 0 and half of the reference mask on reference 1."""

    def _reverse_scores(self, image, mask, ref_idx, seed, timings):
        out = np.ones((len(ref_idx), *self.reference_masks_.shape[1:]), np.uint8)
        half = self.reference_masks_[1].copy()
        half[:, : half.shape[1] // 2] = 0
        out[1] = half
        return out, {}


def test_max_corrected_ignores_references_covered_by_foreground(query):
    img, truth = query
    ref_img = np.zeros((2, 20, 20), np.float32)
    ref_msk = np.zeros((2, 20, 20), np.uint8)
    ref_msk[0, :18] = 1                       # 90 % foreground: predicting everything scores 0.947
    ref_msk[1, :, 5:15] = 1
    ref_msk[1, :6] = 0
    plain = _Fixed(normalize="none").fit((ref_img, ref_msk)).score(img, truth, axes="ZYX")
    corr = _Fixed(normalize="none", aggregate="max_corrected").fit((ref_img, ref_msk)).score(img, truth, axes="ZYX")
    assert plain["best_reference"] == 0 and plain["estimated_dice"] == pytest.approx(2 * 0.9 / 1.9)
    assert corr["best_reference"] == 1
    assert corr["estimated_dice"] == pytest.approx(corr["per_reference_dice"][1]) and corr["estimated_dice"] < 0.8


def test_prior_correction_punishes_missed_vessels(refs, query):
    img, truth = query
    missed = truth.copy()
    missed[:, :, :55] = 0                     # most vessels left out of the mask
    plain = small().fit(refs)
    prior = small(prior_correction=True).fit(refs)
    assert prior.score(img, missed, axes="ZYX")["estimated_dice"] < \
        plain.score(img, missed, axes="ZYX")["estimated_dice"] - 0.05
    assert prior.score(img, truth, axes="ZYX")["estimated_dice"] > \
        prior.score(img, missed, axes="ZYX")["estimated_dice"] + 0.1


def test_bad_input_gets_clear_errors(refs, query):
    img, truth = query
    mon = small().fit(refs)
    with pytest.raises(ValueError, match="shape"):
        mon.score(img, truth[:, :-1], axes="ZYX")
    with pytest.raises(ValueError, match="only foreground"):
        mon.score(img, np.ones_like(truth), axes="ZYX")
    bad = img.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mon.score(bad, truth, axes="ZYX")
    with pytest.raises(ValueError, match="binary"):
        mon.score(img, truth * 3, axes="ZYX")
    with pytest.raises(ValueError, match="axes"):
        mon.score(img, truth, axes="YX")
    with pytest.raises(ValueError, match="aggregate"):
        small(aggregate="median").fit(refs)
    with pytest.raises(ValueError, match="classifier"):
        small(classifier="svm").fit(refs)
    with pytest.raises(ValueError, match="masks"):
        small().fit((refs[0], refs[1][:2]))
    with pytest.raises(ValueError, match="rows"):
        small().fit(refs, embeddings=np.ones((3, 4)))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="RCAMonitor"):
        small().score(img, truth, axes="ZYX")


# ---------------------------------------------------------------------- extension, API
class _ThresholdRCA(RCAMonitor):
    """A trivial reverse classifier: threshold the smoothed intensity (feature 0)."""

    def _fit_reverse(self, features, labels, seed):
        fg, bg = features[labels == 1, 1].mean(), features[labels == 0, 1].mean()
        cut, sign = 0.5 * (fg + bg), np.sign(fg - bg)
        return lambda f: (sign * (f[:, 1] - cut) > 0).astype(np.uint8)


def test_one_hook_subclass(refs, query):
    img, truth = query
    mon = _ThresholdRCA(normalize="none", random_state=0).fit(refs)
    good = mon.score(img, truth, axes="ZYX")["estimated_dice"]
    bad = mon.score(img, 1 - truth, axes="ZYX")["estimated_dice"]
    assert good > 0.6 > bad
    # a scikit-learn classifier instance works as well
    from sklearn.linear_model import LogisticRegression

    lr = small(classifier=LogisticRegression(max_iter=200)).fit(refs).score(img, truth, axes="ZYX")
    assert lr["estimated_dice"] > 0.5


def test_score_many_and_2d(refs, query):
    img, truth = query
    mon = small().fit(refs)
    out = mon.score_many([img[0], img[1]], [truth[0], truth[1]], axes="YX")
    assert len(out) == 2 and all(0.0 <= r["estimated_dice"] <= 1.0 for r in out)
    with pytest.raises(ValueError, match="masks"):
        mon.score_many([img[0]], [], axes="YX")


def test_evaluate_metrics():
    true = [0.9, 0.8, 0.75, 0.3, 0.1, 0.65]
    est = [0.85, 0.6, 0.8, 0.4, 0.2, 0.75]
    m = RCAMonitor(threshold=0.7).evaluate(true, est)
    # failures (true < 0.7): indices 3, 4, 5 -> flagged: 3, 4 ; passes 0, 1, 2 -> passed: 0, 2
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mae"] == pytest.approx(np.mean(np.abs(np.subtract(true, est))))
    assert m["pearson_r"] == pytest.approx(np.corrcoef(true, est)[0, 1])
    assert m["n"] == 6
    with pytest.raises(ValueError, match="values"):
        evaluate_estimates([0.1, 0.2], [0.1])


def test_review_band_decisions_and_their_evaluation(refs, query):
    # the band is [threshold - margin, threshold + margin): below fails, at or above the top passes
    assert [decide(d, 0.7, 0.1) for d in (0.59, 0.61, 0.7, 0.79, 0.81)] == ["fail", "review", "review", "review",
                                                                           "pass"]
    assert [decide(d, 0.7) for d in (0.69, 0.7)] == [decide(d, 0.7, 0.0) for d in (0.69, 0.7)] == ["fail", "pass"]
    true = np.array([0.9, 0.8, 0.75, 0.3, 0.1, 0.65])
    est = np.array([0.85, 0.6, 0.8, 0.4, 0.2, 0.75])
    m = evaluate_estimates(true, est, 0.7, review_margin=0.1)
    decided = np.array([decide(e, 0.7, 0.1) != "review" for e in est])     # 0.6 and 0.75 are in the band
    assert decided.tolist() == [True, False, True, True, True, False]
    assert m["review_share"] == pytest.approx(2 / 6) and m["decided_accuracy"] == 1.0
    assert m["accuracy"] == pytest.approx(4 / 6)                            # every estimate, as without a band
    assert "review_share" not in evaluate_estimates(true, est, 0.7)
    assert np.isnan(evaluate_estimates(true, np.full(6, 0.7), 0.7, review_margin=0.1)["decided_accuracy"])
    mon = small(review_margin=0.5, threshold=0.5).fit(refs)                 # every estimate is in [0, 1)
    img, truth = query
    r = mon.score(img, truth, axes="ZYX")
    assert r["decision"] == "review" and r["passed"] == (r["estimated_dice"] >= 0.5)
    assert mon.evaluate(true, est)["review_margin"] == 0.5
    assert "decision" in small().fit(refs).score(img, truth, axes="ZYX")
    for bad in (-0.1, 0.6, "0.1", True):
        with pytest.raises(ValueError, match="review_margin"):
            RCAMonitor(review_margin=bad).fit(refs)


def test_plot_scatter(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_rca_scatter([0.9, 0.4, 0.2], [0.8, 0.5, 0.1], groups=["a", "b", "b"], title="t")
    path = tmp_path / "scatter.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
    assert len(ax.lines) >= 3   # identity + two threshold lines


def test_patches_references_and_save_load(tmp_path, query):
    from biodatacentric import Patches

    img, truth = query
    stack, mask = make_vessels((2, 96, 96), random_state=8)
    p = Patches.from_arrays(stack, axes="ZYX", patch_shape=(48, 48), masks=mask, normalize="none")
    mon = small(n_references=3).fit(p, embeddings=np.random.default_rng(0).normal(size=(len(p), 5)))
    assert mon.n_references_ == 8 and mon.reference_sources_[0] == "array0:0:0:0"
    emb = np.random.default_rng(1).normal(size=(4, 5))
    r1 = mon.score(img, truth, axes="ZYX", embeddings=emb)
    mon.save(tmp_path / "m")
    loaded = RCAMonitor.load(tmp_path / "m")
    r2 = loaded.score(img, truth, axes="ZYX", embeddings=emb)
    np.testing.assert_array_equal(r1["reference_indices"], r2["reference_indices"])
    assert r1["estimated_dice"] == r2["estimated_dice"]


def test_reference_agreement_finds_the_group_annotated_differently(tmp_path):
    pairs = [make_vessels((64, 64), random_state=s) for s in range(6)]
    img = np.stack([p[0] for p in pairs])
    msk = np.stack([p[1] for p in pairs])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    off = msk.copy()
    off[4:] = np.stack([ndi.binary_erosion(m, iterations=2) for m in msk[4:]])   # group c: thinner vessels
    mon = small(calibration="forest", calibration_size=3).fit((img, off), groups=groups)
    assert mon.reference_groups_ == groups.tolist()
    rows = mon.reference_agreement()                        # the groups of fit by default
    assert [r["group"] for r in rows] == ["a", "b", "c"] and [r["n_references"] for r in rows] == [2, 2, 2]
    agree = {r["group"]: r["agreement"] for r in rows}
    assert agree["c"] < min(agree["a"], agree["b"]) - 0.1
    for r in rows:                                          # each group is scored against the others only
        best = int(r["best_reference_source"].split(":")[1])  # sources of plain arrays: "reference:<i>"
        assert groups[best] != r["group"]
        assert 0.0 <= r["calibrated_estimate"] <= 1.0 and 0.0 <= r["balanced_max"] <= 1.0
    mon.save(tmp_path / "m")
    again = RCAMonitor.load(tmp_path / "m").reference_agreement()
    assert [r["agreement"] for r in again] == [r["agreement"] for r in rows]
    blank = msk.copy()
    blank[:2] = 0                                           # a group without foreground cannot be scored
    rows = small().fit((img, blank), groups=groups).reference_agreement()
    assert np.isnan(rows[0]["agreement"]) and rows[0]["calibrated_estimate"] is None
    assert small().fit((img, msk)).reference_agreement(groups=groups)[0]["calibrated_estimate"] is None
    with pytest.raises(ValueError, match="2 groups"):
        small().fit((img, msk)).reference_agreement(groups=np.zeros(6))
    with pytest.raises(ValueError, match="groups has 2 entries"):
        small().fit((img, msk)).reference_agreement(groups=[0, 1])
