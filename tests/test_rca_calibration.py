"""Tests of RCAMonitor's self-calibration, its statistics and the mask corruptions."""

from __future__ import annotations

import numpy as np
import pytest

from biodatacentric import make_vessels
from biodatacentric.metrics import dice
from biodatacentric.monitor import RCAMonitor
from biodatacentric.monitor.corruptions import CORRUPTIONS, corrupt_mask, drop_branches, random_corruptions
from biodatacentric.monitor._statistics import STATISTICS, reference_mask_values


@pytest.fixture(scope="module")
def refs():
    pairs = [make_vessels((48, 48), random_state=s) for s in range(6)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module")
def query():
    return make_vessels((2, 64, 64), random_state=21)


def small(**kw):
    params = dict(classifier="extra_trees", n_pixels=1000, n_estimators=10, max_samples=0.5, normalize="none",
                  random_state=0, n_jobs=1, calibration="forest", calibration_size=4)
    params.update(kw)
    return RCAMonitor(**params)


# ---------------------------------------------------------------------- corruptions
def test_corruptions_do_what_they_say():
    img, m = make_vessels((2, 64, 64), random_state=3)
    rng = np.random.default_rng(0)
    g = m.astype(bool)
    out = {k: corrupt_mask(m, k, {"erode": 1, "dilate": 2, "shift": 5, "drop": 0.5, "noise": 0.1,
                                  "threshold": 2.0}.get(k, 0), rng, image=img) for k in CORRUPTIONS}
    for k, o in out.items():
        assert o.shape == m.shape and o.dtype == np.uint8 and set(np.unique(o)) <= {0, 1}, k
    np.testing.assert_array_equal(out["identity"], m)
    assert not np.any(out["erode"] & ~g) and out["erode"].sum() < g.sum()
    assert not np.any(g & ~out["dilate"].astype(bool)) and out["dilate"].sum() > g.sum()
    assert out["shift"].sum() == g.sum() and dice(out["shift"], m) < 0.9
    assert not np.any(out["drop"] & ~g) and 0.3 < 1 - out["drop"].sum() / g.sum() < 0.9
    assert abs(np.mean(out["noise"] != m) - 0.1) < 0.02
    assert abs(out["threshold"].mean() / g.mean() - 2.0) < 0.1
    np.testing.assert_array_equal(out["inverted"], 1 - m)
    assert drop_branches(m[0], 1.0, rng).sum() < m[0].sum()  # 2-D works too
    with pytest.raises(ValueError, match="needs the image"):
        corrupt_mask(m, "otsu", 0, rng)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_mask(m, "blur", 1, rng)
    kinds = [k for k, _ in random_corruptions(img, m, 2 * len(CORRUPTIONS), np.random.default_rng(1))]
    assert sorted(kinds) == sorted(list(CORRUPTIONS) * 2)   # every family, each twice


# ---------------------------------------------------------------------- statistics
def test_statistics_and_self_consistency(refs, query):
    img, truth = query
    mon = small(calibration=None).fit(refs)
    good = mon.score(img, truth, axes="ZYX")
    assert list(good["statistics"]) == list(STATISTICS) and not good["calibrated"]
    assert good["estimated_dice"] == good["raw_estimated_dice"] == good["statistics"]["balanced_max"]
    # flipped labels cannot be learned from the image: the out-of-bag agreement drops by
    # about the flipped share, while the classifier still segments the references well
    noisy = np.where(np.random.default_rng(0).random(truth.shape) < 0.25, 1 - truth, truth)
    bad = mon.score(img, noisy, axes="ZYX")
    assert good["statistics"]["self_prior"] > 0.8
    assert bad["statistics"]["self_prior"] < good["statistics"]["self_prior"] - 0.2
    assert all(np.isfinite(v) for v in good["statistics"].values())


def test_intensity_statistics_match_brute_force(query):
    from scipy import ndimage as ndi
    from sklearn.metrics import roc_auc_score

    from biodatacentric.monitor._statistics import _intensity_fit

    img, truth = query
    sm = ndi.gaussian_filter(img.astype(np.float32), (0, 1.0, 1.0))
    for mask in (truth, np.roll(truth, 3, axis=2), (sm > np.quantile(sm, 0.8)).astype(np.uint8)):
        auc, best = _intensity_fit(img, mask)
        # 256 histogram bins: ties inside a bin cost a little precision
        assert auc == pytest.approx(roc_auc_score(mask.ravel(), sm.ravel()), abs=0.01)
        brute = max(dice((sm >= t).astype(np.uint8), mask) for t in np.quantile(sm, np.linspace(0, 1, 400)))
        assert best == pytest.approx(brute, abs=0.02)
    # a mask that IS a brightness threshold is explained (almost: 256 bins) perfectly, a shifted one is not
    auc_thr, best_thr = _intensity_fit(img, (sm > np.quantile(sm, 0.8)).astype(np.uint8))
    auc_sh, best_sh = _intensity_fit(img, np.roll(truth, 3, axis=2))
    assert auc_thr > 0.99 and best_thr > 0.97 and best_sh < best_thr - 0.2 and auc_sh < auc_thr - 0.03
    assert np.isnan(_intensity_fit(img, np.zeros_like(truth))[0])
    mon = small(calibration=None).fit(make_vessels((3, 48, 48), random_state=5))
    st = mon.score(img, truth, axes="ZYX")["statistics"]
    ref = reference_mask_values(mon)
    ref_auc, ref_best = ref["intensity_auc"], ref["intensity_dice"]
    assert st["intensity_auc_excess"] == pytest.approx(st["intensity_auc"] - np.nanmedian(ref_auc))
    assert st["intensity_dice_excess"] == pytest.approx(st["intensity_dice"] - np.nanmedian(ref_best))


def test_shape_statistics(query):
    from scipy import ndimage as ndi
    from sklearn.metrics import roc_auc_score

    from biodatacentric.monitor._statistics import _boundary_share, _fragment_share, _ridge_auc

    img, truth = query
    # the ridge AUC against sklearn's on the same 2x2-binned ridge map, computed independently
    half = img.astype(np.float32).reshape(2, 32, 2, 32, 2).mean(axis=(2, 4))
    hm = truth.astype(np.float32).reshape(2, 32, 2, 32, 2).mean(axis=(2, 4)) >= 0.5
    ridge = []
    for sl in half:
        e = np.linalg.eigvalsh(np.stack([[ndi.gaussian_filter(sl, 1.0, order=(2, 0)),
                                          ndi.gaussian_filter(sl, 1.0, order=(1, 1))],
                                         [ndi.gaussian_filter(sl, 1.0, order=(1, 1)),
                                          ndi.gaussian_filter(sl, 1.0, order=(0, 2))]]).transpose(2, 3, 0, 1))
        ridge.append(np.maximum(-e[..., 0], 0))
    assert _ridge_auc(img, truth) == pytest.approx(roc_auc_score(hm.ravel(), np.stack(ridge).ravel()), abs=0.01)
    # vessels sit on ridges; a thick blob around them or a shifted copy much less so
    blob = ndi.binary_dilation(truth, np.ones((1, 9, 9), bool))
    assert _ridge_auc(img, truth) > _ridge_auc(img, blob) + 0.1
    assert _ridge_auc(img, truth) > _ridge_auc(img, np.roll(truth, 6, axis=2)) + 0.1
    assert np.isnan(_ridge_auc(img, np.zeros_like(truth)))
    # fragments: two 2x2 specks (8 pixels) beside one 4x10 bar (40 pixels)
    m = np.zeros((1, 20, 20), np.uint8)
    m[0, 1:3, 1:3] = m[0, 10:12, 1:3] = 1
    m[0, 5:9, 5:15] = 1
    assert _fragment_share(m) == pytest.approx(8 / 48)
    assert np.isnan(_fragment_share(np.zeros_like(m)))
    # each excess is the value minus the references' median
    mon = small(calibration=None).fit(make_vessels((3, 48, 48), random_state=5))
    st = mon.score(img, truth, axes="ZYX")["statistics"]
    ref = reference_mask_values(mon)
    assert st["ridge_auc_excess"] == pytest.approx(_ridge_auc(img, truth) - np.nanmedian(ref["ridge_auc"]))
    assert st["boundary_share_excess"] == pytest.approx(_boundary_share(truth) - np.nanmedian(ref["boundary_share"]))
    assert st["fragment_share_excess"] == pytest.approx(_fragment_share(truth) - np.nanmedian(ref["fragment_share"]))


# ---------------------------------------------------------------------- calibration
class _Spy(RCAMonitor):
    calls: list = []

    def _reverse_scores(self, image, mask, ref_idx, seed, timings):
        type(self).calls.append((image.copy(), np.asarray(ref_idx).copy()))
        return super()._reverse_scores(image, mask, ref_idx, seed, timings)


def test_calibration_scores_each_group_against_other_groups_only(refs):
    groups = np.array([0, 0, 1, 1, 2, 2])
    _Spy.calls = []
    mon = _Spy(**{**small().get_params(), "calibration_size": 2}).fit(refs, groups=groups)
    assert len(_Spy.calls) == len(mon.calibration_y_) >= 5
    for image, ref_idx in _Spy.calls:
        # which references were stacked as the calibration image
        inside = [i for i in range(len(refs[0])) if any(np.array_equal(refs[0][i], s) for s in image)]
        assert len(inside) == len(image) == 2
        assert set(groups[inside]) & set(groups[ref_idx]) == set()
        assert len(ref_idx) == 4
    with pytest.raises(ValueError, match="groups"):
        small().fit(refs, groups=np.zeros(6))      # one group: nothing to calibrate against
    with pytest.raises(ValueError, match="entries"):
        small().fit(refs, groups=np.arange(3))


def test_calibrated_estimate(refs, query, tmp_path):
    img, truth = query
    mon = small(calibration_size=10).fit(refs)   # every corruption family in every fold
    assert mon.calibration_ == "forest" and mon.calibration_X_.shape == (len(mon.calibration_y_), len(STATISTICS))
    assert np.all((mon.calibration_y_ >= 0) & (mon.calibration_y_ <= 1)) and mon.calibration_seconds_ > 0
    good = mon.score(img, truth, axes="ZYX")
    bad = {k: mon.score(img, m, axes="ZYX")["estimated_dice"]
           for k, m in (("shifted", np.roll(truth, 9, axis=2)), ("inverted", 1 - truth))}
    assert good["calibrated"] and 0.0 <= good["estimated_dice"] <= 1.0
    assert good["raw_estimated_dice"] == good["statistics"]["balanced_max"]
    assert good["estimated_dice"] > bad["shifted"] and good["estimated_dice"] > bad["inverted"]
    assert good["passed"] == (good["estimated_dice"] >= mon.threshold)
    # the other maps work on the same calibration set
    for kind in ("linear", "isotonic"):
        m2 = small(calibration=kind, calibration_size=10).fit(refs)
        np.testing.assert_array_equal(m2.calibration_y_, mon.calibration_y_)   # same seed, same set
        assert 0.0 <= m2.score(img, truth, axes="ZYX")["estimated_dice"] <= 1.0
    # saved and loaded: same calibrated estimate, without pickling the regressor
    mon.save(tmp_path / "m")
    loaded = RCAMonitor.load(tmp_path / "m")
    assert loaded.score(img, truth, axes="ZYX")["estimated_dice"] == good["estimated_dice"]
    # a calibration saved by a version with other statistics is refused with a clear message
    old = mon.calibration_X_
    try:
        mon.calibration_X_ = old[:, :-4]
        mon.save(tmp_path / "older")
    finally:
        mon.calibration_X_ = old
    with pytest.raises(ValueError, match="fit the monitor again"):
        RCAMonitor.load(tmp_path / "older")
    # single-class masks keep the raw constant estimate
    blank = mon.set_params(single_class="constant").score(img, np.zeros_like(truth), axes="ZYX")
    assert blank["estimated_dice"] == blank["raw_estimated_dice"] == 0.0


def test_calibration_parameters_are_checked(refs):
    with pytest.raises(ValueError, match="calibration="):
        small(calibration="spline").fit(refs)
    with pytest.raises(ValueError, match="calibration_folds"):
        small(calibration_folds=1).fit(refs)
    with pytest.raises(ValueError, match="calibration_size"):
        small(calibration_size=0).fit(refs)


def test_calibration_scores_each_fold_against_the_references_score_would_retrieve(refs, monkeypatch):
    # 6 references in 3 groups, reference i pointing along axis i, except that reference 2 leans
    # towards 0 and reference 5 towards 1: the group {0, 1} is scored against {2, 5}, not {2, 3};
    # {2, 3} against 0 (near 2) and then 1 (first of the ties); {4, 5} against 1 (near 5) and 0
    emb = np.eye(6, 8, dtype=np.float32)
    emb[2, 0] = emb[5, 1] = 0.9
    groups = np.array([0, 0, 1, 1, 2, 2])
    expected = {0: {2, 5}, 1: {0, 1}, 2: {0, 1}}
    images = refs[0]
    used = []
    run = RCAMonitor._reverse_scores

    def spy(self, img, mask, ref_idx, seed, timings):
        first = next(i for i in range(len(images)) if np.array_equal(images[i], img[0]))
        used.append((int(groups[first]), {int(i) for i in ref_idx}))
        return run(self, img, mask, ref_idx, seed, timings)

    monkeypatch.setattr(RCAMonitor, "_reverse_scores", spy)
    small(n_references=2, calibration_folds=3).fit(refs, embeddings=emb, groups=groups)
    assert {g for g, _ in used} == {0, 1, 2}
    for g, ref in used:
        assert ref == expected[g], (g, ref)
    used.clear()
    small(calibration_folds=3).fit(refs, groups=groups)   # without retrieval: every other group's reference
    for g, ref in used:
        assert ref == set(np.flatnonzero(groups != g).tolist())
    with pytest.raises(ValueError, match="reference embeddings"):
        small(n_references=2, calibration_folds=3).fit(refs, groups=groups)


def test_out_of_bag_probability_matches_scikit_learn_and_fitting_never_warns(refs, query):
    import warnings

    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    from biodatacentric.monitor._statistics import _out_of_bag_probability

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(np.uint8)
    for klass in (ExtraTreesClassifier, RandomForestClassifier):
        kw = dict(n_estimators=30, bootstrap=True, max_samples=0.5, min_samples_leaf=5, random_state=3)
        sk = klass(oob_score=True, **kw).fit(X, y).oob_decision_function_[:, 1]
        np.testing.assert_array_equal(_out_of_bag_probability(klass(**kw).fit(X, y), X), sk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # scikit-learn would warn: rows without out-of-bag trees
        one = ExtraTreesClassifier(n_estimators=1, bootstrap=True, max_samples=0.5, random_state=0).fit(X, y)
        p = _out_of_bag_probability(one, X)
        img, truth = query
        RCAMonitor(classifier="random_forest", n_estimators=2, n_pixels=1000, normalize="none", n_jobs=1,
                   random_state=0).fit(refs).score(img, truth, axes="ZYX")
    assert np.any(p == 0.5) and set(np.unique(p)) <= {0.0, 0.5, 1.0}
    assert _out_of_bag_probability(ExtraTreesClassifier(n_estimators=3, random_state=0).fit(X, y), X) is None
