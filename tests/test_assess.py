"""Stage 2: core-set selectors, kNN graphs, the dataset audit and its plots."""

import importlib
import itertools
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from biodatacentric.assess import (DatasetAuditor, KCenterSelector, KCoverSelector, RandomSelector,
                                   evaluate_selection, ivf_knn_search, knn_search, l2_normalize,
                                   similarity_graph, suggest_n_select)
from biodatacentric.assess.audit import diversity_summary
from biodatacentric.assess.plots import plot_coverage_curve, plot_embedding_map, plot_montage

ROOT = Path(__file__).resolve().parents[1]


def mixture(n, d=32, n_clusters=12, spread=1.0, seed=0):
    """Gaussian mixture on the sphere with unequal cluster sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    w = rng.dirichlet(np.full(n_clusters, 1.0))
    lab = rng.choice(n_clusters, size=n, p=w)
    X = centres[lab] + rng.normal(size=(n, d)) * spread / np.sqrt(d)
    return X.astype(np.float32), lab


def dense_greedy_reference(X, k):
    """Plain greedy facility location on the full similarity matrix (small n only)."""
    E = l2_normalize(X).astype(np.float64)
    S = np.maximum(E @ E.T, 0)
    c = np.zeros(len(E))
    picks = []
    for _ in range(k):
        g = np.maximum(S - c[:, None], 0).sum(0)
        g[picks] = -np.inf
        j = int(np.argmax(g))
        picks.append(j)
        c = np.maximum(c, S[:, j])
    return picks, c.sum()


# ---------------------------------------------------------------------- kNN graph
def test_knn_search_matches_brute_force_and_ivf_recall():
    X, _ = mixture(1500, seed=1)
    E = l2_normalize(X)
    sims, idx = knn_search(E, 15, precision="fp32", chunk_size=256)
    S = E @ E.T
    truth = np.argsort(-S, axis=1, kind="stable")[:, :15]
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(idx, truth)]) > 14.9
    np.testing.assert_allclose(sims, np.take_along_axis(S, idx, 1), atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # sorted
    _, idx_ivf = ivf_knn_search(E, 15, n_cells=20, n_probe=4, precision="fp32")
    recall = np.mean([len(np.intersect1d(a, b)) / 15 for a, b in zip(idx_ivf, truth)])
    assert recall > 0.9, recall
    W = similarity_graph(sims, idx, len(E))
    assert (abs(W - W.T) > 1e-6).nnz == 0  # symmetric
    assert W.format == "csc"


# ---------------------------------------------------------------------- facility location
def test_dense_mode_equals_plain_numpy_greedy():
    X, _ = mixture(300, seed=2)
    ref_picks, ref_value = dense_greedy_reference(X, 8)
    for lazy in (True, False):
        sel = KCoverSelector(whiten=False, n_select=8, n_neighbors=None, lazy=lazy, random_state=0).fit(X)
        assert sel.selected_indices_.tolist() == ref_picks
        assert sel.objective_value_ == pytest.approx(ref_value, rel=1e-5)
        assert sel.coverage_curve_[-1] == pytest.approx(sel.objective_value_)
        np.testing.assert_allclose(np.cumsum(sel.gains_), sel.coverage_curve_, rtol=1e-6)


@pytest.mark.parametrize("objective", ["facility_location", "threshold_cover"])
def test_lazy_and_plain_greedy_pick_identical_sets(objective):
    X, _ = mixture(1500, seed=3)
    kw = dict(n_select=20, objective=objective, n_neighbors=30, precision="fp32", random_state=0)
    lazy = KCoverSelector(lazy=True, **kw).fit(X, exclude=np.arange(0, 1500, 7))
    plain = KCoverSelector(lazy=False, **kw).fit(X, exclude=np.arange(0, 1500, 7))
    assert lazy.selected_indices_.tolist() == plain.selected_indices_.tolist()
    assert lazy.n_evaluations_ < plain.n_evaluations_ / 5  # lazy re-evaluates few candidates


def test_sparse_close_to_dense_and_beats_random_on_every_seed():
    X, _ = mixture(2000, d=48, n_clusters=30, seed=4)
    dense = KCoverSelector(whiten=False, n_select=25, n_neighbors=None).fit(X)
    sparse = KCoverSelector(whiten=False, n_select=25, n_neighbors=50, random_state=0).fit(X)
    exact_sparse = evaluate_selection(X, sparse.selected_indices_)["facility_location"]
    assert exact_sparse == pytest.approx(sparse.objective_value_, rel=1e-5)  # objective is exact
    assert exact_sparse >= 0.99 * dense.objective_value_
    for seed in range(5):
        rnd = RandomSelector(n_select=25, random_state=seed).fit(X)
        assert evaluate_selection(X, rnd.selected_indices_)["facility_location"] < exact_sparse


def test_threshold_cover_counts_covered_samples():
    X, _ = mixture(800, seed=5)
    sel = KCoverSelector(whiten=False, n_select=10, objective="threshold_cover", n_neighbors=20, random_state=0).fit(X)
    assert sel.threshold_ is not None and -1 <= sel.threshold_ <= 1
    best = l2_normalize(X) @ l2_normalize(X)[sel.selected_indices_].T
    assert sel.objective_value_ == int((best.max(1) >= sel.threshold_ - 1e-6).sum())
    fixed = KCoverSelector(whiten=False, n_select=3, objective="threshold_cover", threshold=0.5, n_neighbors=None).fit(X)
    assert fixed.threshold_ == 0.5
    assert np.all(np.diff(fixed.coverage_curve_) >= 0)


def test_ties_broken_by_index_and_duplicates():
    base = np.eye(4, dtype=np.float32)
    X = np.repeat(base, [3, 3, 2, 2], axis=0)  # identical rows in blocks
    sel = KCoverSelector(n_select=4, n_neighbors=None).fit(X)
    # biggest blocks first, lowest index within a block and between equal blocks
    assert sel.selected_indices_.tolist() == [0, 3, 6, 8]
    sp = KCoverSelector(n_select=4, n_neighbors=4, precision="fp32").fit(X)
    assert sp.selected_indices_.tolist() == [0, 3, 6, 8]


def test_exclude_kept_in_coverage_and_already_selected():
    X, lab = mixture(600, n_clusters=4, seed=6)
    big = np.bincount(lab).argmax()
    excl = np.flatnonzero(lab == big)
    sel = KCoverSelector(whiten=False, n_select=3, n_neighbors=30, random_state=0).fit(X, exclude=excl)
    assert not np.isin(sel.selected_indices_, excl).any()
    assert sel.coverage_.shape == (600,)
    assert sel.objective_value_ == pytest.approx(float(sel.coverage_.sum()), rel=1e-5)
    # a sample of the biggest cluster already annotated: the first new pick goes elsewhere
    free = KCoverSelector(whiten=False, n_select=1, n_neighbors=30).fit(X)
    assert lab[free.selected_indices_[0]] == big
    anchored = KCoverSelector(whiten=False, n_select=1, n_neighbors=30).fit(X, already_selected=[excl[0]])
    assert lab[anchored.selected_indices_[0]] != big
    assert anchored.objective_initial_ > 0
    assert anchored.already_selected_.tolist() == [excl[0]]


@pytest.mark.parametrize("cls, params", [(KCoverSelector, dict(n_neighbors=25)),
                                         (KCoverSelector, dict(n_neighbors=None)),
                                         (KCenterSelector, dict(init="random"))])
def test_extend_equals_longer_fit_and_survives_save_load(cls, params, tmp_path):
    X, _ = mixture(700, seed=7)
    long = cls(n_select=9, random_state=3, **params).fit(X)
    short = cls(n_select=4, random_state=3, **params).fit(X)
    assert short.selected_indices_.tolist() == long.selected_indices_[:4].tolist()  # nested
    short.extend(5)
    assert short.selected_indices_.tolist() == long.selected_indices_.tolist()
    np.testing.assert_allclose(short.coverage_curve_, long.coverage_curve_, rtol=1e-6)
    part = cls(n_select=4, random_state=3, **params).fit(X)
    part.save(tmp_path / "sel")
    loaded = cls.load(tmp_path / "sel")
    with pytest.raises(ValueError, match="extend needs X"):
        loaded.extend(5)
    loaded.extend(5, X=X)
    assert loaded.selected_indices_.tolist() == long.selected_indices_.tolist()


def test_random_selector_extend_is_nested():
    X = np.zeros((50, 2))
    a = RandomSelector(n_select=10, random_state=4).fit(X, exclude=[1, 2])
    b = RandomSelector(n_select=4, random_state=4).fit(X, exclude=[1, 2]).extend(6)
    assert a.selected_indices_.tolist() == b.selected_indices_.tolist()
    assert not np.isin(a.selected_indices_, [1, 2]).any()


def test_determinism_same_seed_same_picks():
    X, _ = mixture(500, seed=8)
    for cls, kw in ((KCenterSelector, {}), (KCoverSelector, dict(knn="ivf", n_neighbors=20))):
        a = cls(n_select=7, random_state=11, **kw).fit(X).selected_indices_
        b = cls(n_select=7, random_state=11, **kw).fit(X).selected_indices_
        assert a.tolist() == b.tolist()
    r1 = KCenterSelector(n_select=7, random_state=1).fit(X).selected_indices_
    r2 = KCenterSelector(n_select=7, random_state=2).fit(X).selected_indices_
    assert r1[:3].tolist() != r2[:3].tolist()  # random seeding does depend on the seed


# ---------------------------------------------------------------------- k-center
def test_k_center_radius_against_brute_force():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(12, 3))
    E = l2_normalize(X).astype(np.float64)
    D = np.sqrt(np.maximum(0, 2 - 2 * E @ E.T))
    k = 3
    opt = min(D[:, list(S)].min(1).max() for S in itertools.combinations(range(12), k))
    for init in ("medoid", "random"):
        sel = KCenterSelector(n_select=k, init=init, n_init_random=1, random_state=0).fit(X)
        radius = D[:, sel.selected_indices_].min(1).max()
        assert sel.objective_value_ == pytest.approx(radius, abs=1e-5)
        assert radius <= 2 * opt + 1e-9  # Gonzalez's 2-approximation
        # farthest-first with the full matrix (the authors' approach) picks the same set
        picks = list(sel.selected_indices_[:1])
        while len(picks) < k:
            picks.append(int(np.argmax(D[:, picks].min(1))))
        assert picks == sel.selected_indices_.tolist()
    assert np.isnan(sel.gains_[0]) and np.all(np.diff(sel.coverage_curve_) <= 1e-12)


@pytest.mark.parametrize("init", ["random", "medoid"])
def test_kcover_k_center_is_deprecated_and_picks_what_kcenter_picks(init):
    X, _ = mixture(300, seed=12)
    with pytest.warns(FutureWarning, match="KCenterSelector"):
        old = KCoverSelector(n_select=8, objective="k_center", init=init, whiten=False, random_state=5).fit(X)
    new = KCenterSelector(n_select=8, init=init, random_state=5).fit(X)
    assert old.selected_indices_.tolist() == new.selected_indices_.tolist()
    np.testing.assert_array_equal(old.coverage_curve_, new.coverage_curve_)
    with pytest.warns(FutureWarning):   # whiten (default True) does not change k-center's picks
        default = KCoverSelector(n_select=8, objective="k_center", init=init, random_state=5).fit(X)
    assert default.selected_indices_.tolist() == new.selected_indices_.tolist()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        KCoverSelector(n_select=3, n_neighbors=20).fit(X)              # the other objectives do not warn


def test_k_center_picks_outliers_first_facility_location_does_not():
    X, _ = mixture(400, n_clusters=3, seed=10)
    m = l2_normalize(X.mean(0, keepdims=True))
    rng = np.random.default_rng(0)
    out = -m + 0.5 * l2_normalize(rng.normal(size=(3, X.shape[1])))  # opposite to all the data
    X = np.concatenate([X, out.astype(np.float32)])
    kc = KCenterSelector(n_select=3, init="medoid").fit(X)
    fl = KCoverSelector(n_select=3, n_neighbors=30).fit(X)
    assert kc.selected_indices_[1] >= 400  # the first farthest-first pick is an outlier
    assert np.sum(fl.selected_indices_ >= 400) == 0
    ev_fl = evaluate_selection(X, fl.selected_indices_)
    ev_kc = evaluate_selection(X, kc.selected_indices_)
    assert ev_fl["mean_coverage"] > ev_kc["mean_coverage"]


# ---------------------------------------------------------------------- choosing K
def test_suggest_n_select_rules():
    curve = np.array([10.0, 18.0, 24.0, 25.0, 25.5, 25.7])
    assert suggest_n_select(curve, fraction=0.2) == 3
    assert suggest_n_select(curve, rule="knee") == 3
    assert suggest_n_select(curve, fraction=0.01) == 6  # never below: fit more
    X, _ = mixture(900, n_clusters=5, spread=0.6, seed=12)
    sel = KCoverSelector(whiten=False, n_select=15, n_neighbors=40).fit(X)
    assert 3 <= sel.suggest_n_select() <= 8
    with pytest.raises(ValueError, match="rule"):
        suggest_n_select(curve, rule="elbow")


def test_parameter_errors_name_the_parameter():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="objective"):
        KCoverSelector(n_select=2, objective="max_cover").fit(X)
    with pytest.raises(ValueError, match="n_neighbors"):
        KCoverSelector(n_select=2, n_neighbors=1).fit(X)
    with pytest.raises(ValueError, match="n_select"):
        KCoverSelector(n_select=19).fit(X, exclude=[0, 1])
    with pytest.raises(ValueError, match="n_more"):
        KCoverSelector(n_select=2, n_neighbors=5).fit(X).extend(0)


# ---------------------------------------------------------------------- audit
def _audit_patches():
    from biodatacentric import make_vessels

    imgs = []
    for s in range(24):
        img, _ = make_vessels((48, 48), random_state=s)
        imgs.append((img - img.min()) / (img.max() - img.min()))
    imgs = np.stack(imgs).astype(np.float32)
    from scipy.ndimage import gaussian_filter

    imgs[3] = 0.15                                   # blank
    imgs[5] = np.clip(imgs[5] * 4, 0, 1)              # saturated
    imgs[8] = gaussian_filter(imgs[8], 3)             # blurry
    imgs[11] = imgs[10]                               # exact duplicate
    return imgs


def test_audit_flags_each_artefact_and_feeds_the_selector():
    imgs = _audit_patches()
    audit = DatasetAuditor(n_clusters=5, n_neighbors=5, random_state=0).fit(imgs)
    assert np.flatnonzero(audit.flags("blank")).tolist() == [3]
    assert np.flatnonzero(audit.flags("saturated")).tolist() == [5]
    assert np.flatnonzero(audit.flags("blurry")).tolist() == [8]
    assert np.flatnonzero(audit.flags("duplicate")).tolist() == [11]
    assert audit.duplicate_of_[11] == 10
    assert audit.exclude_[[3, 5, 8, 11]].all() and audit.exclude_.sum() == 4
    table = audit.summary_table()
    assert "blank" in table and "effective clusters" in table
    assert [r["check"] for r in audit.summary()][:2] == ["duplicate", "blank"]
    emb = imgs.reshape(len(imgs), -1)[:, ::7] + 0.01 * np.arange(len(imgs))[:, None]
    sel = KCoverSelector(n_select=5, n_neighbors=8).fit(emb, exclude=audit.exclude_)
    assert not audit.exclude_[sel.selected_indices_].any()
    div = audit.selection_diversity(sel.selected_indices_, embeddings=emb)
    assert 1 <= div["selection_clusters_hit"] <= 5 and 0 < div["selection_mass_covered"] <= 1


def test_audit_on_embeddings_only_and_outliers():
    X, _ = mixture(500, seed=13)
    X[7] = -X[7] * 10                                  # far from everything
    X[20] = X[19]                                      # duplicate embedding
    audit = DatasetAuditor(outlier_percentile=99.5, n_clusters=6, random_state=0).fit(embeddings=X)
    assert audit.flag_names_ == ["duplicate", "outlier"]
    assert audit.flags("outlier")[7] and audit.flags("duplicate")[20]
    assert np.isnan(audit.stats_[:, 0]).all() and np.isfinite(audit.stats_[:, 6]).all()
    with pytest.raises(ValueError, match="embeddings"):
        DatasetAuditor().fit(np.zeros((5, 8, 8)), embeddings=np.zeros((4, 3)))
    with pytest.raises(KeyError, match="blank"):
        audit.flags("blank")


def test_diversity_summary_counts_clusters():
    X, lab = mixture(1200, n_clusters=4, spread=0.3, seed=14)
    d = diversity_summary(X, indices=np.flatnonzero(lab == 0)[:5], n_clusters=4)
    assert d["effective_n_clusters"] == pytest.approx(np.exp(-(np.bincount(lab) / 1200 * np.log(np.bincount(lab) / 1200)).sum()), rel=0.05)
    assert d["selection_clusters_hit"] == 1


# ---------------------------------------------------------------------- plots and docs
def test_plots_render(tmp_path):
    X, _ = mixture(300, seed=15)
    fig = plot_embedding_map(X, {"K-cover": [0, 1, 2], "k-center": [3, 4]}, flagged=[5, 6])
    fig.savefig(tmp_path / "map.png")
    fig = plot_montage(np.random.default_rng(0).random((7, 16, 16)), [0, 2, 4], ncols=2, suptitle="x")
    fig.savefig(tmp_path / "montage.png")
    fig = plot_coverage_curve({"a": [1, 2, 2.5]}, suggested={"a": 2})
    fig.savefig(tmp_path / "curve.png")
    for name in ("map.png", "montage.png", "curve.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_docs_extending_selector_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "extending_selector.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "docs_selector_example.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("docs_selector_example", None)
    mod = importlib.import_module("docs_selector_example")
    assert len(mod.sel.selected_indices_) == 10
    assert not np.isin(mod.sel.selected_indices_, [0, 1]).any()
    assert "[" in capsys.readouterr().out


def test_audit_says_why_when_it_would_exclude_most_of_the_data():
    from biodatacentric import Patches
    from biodatacentric.assess.audit import AuditWarning

    rng = np.random.default_rng(0)
    imgs = rng.random((60, 16, 16)).astype(np.float32)
    base = rng.normal(size=8)
    emb = base + 1e-4 * rng.normal(size=(60, 8))       # every patch a near-copy of the others
    patches = Patches.from_arrays(imgs, axes="ZYX", normalize="none")
    with pytest.warns(AuditWarning, match=r"removes \d+ of 60 patches .* duplicate: \d+ .*raise duplicate_threshold"):
        audit = DatasetAuditor(n_clusters=4, random_state=0).fit(patches, embeddings=emb)
    assert audit.exclude_.mean() > 0.5
    spread = rng.normal(size=(60, 8))                  # distinct patches: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditWarning)
        DatasetAuditor(n_clusters=4, random_state=0).fit(patches, embeddings=spread)


# ---------------------------------------------------------------- groups= and whiten=
def test_kcover_groups_weigh_every_group_equally():
    # group A: 200 samples in two clusters; group B: 10 samples in a third cluster
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.05, size=(n, 3)) for c, n in zip(np.eye(3), [100, 100, 10])])
    groups = np.repeat(["A", "B"], [200, 10])
    plain = KCoverSelector(n_select=2, n_neighbors=None, random_state=0).fit(X)
    balanced = KCoverSelector(n_select=2, n_neighbors=None, random_state=0).fit(X, groups=groups)
    assert sorted(groups[plain.selected_indices_]) == ["A", "A"]     # the big group's two clusters
    assert sorted(groups[balanced.selected_indices_]) == ["A", "B"]  # each group counts once
    w = balanced.sample_weight_
    assert w[:200].sum() == pytest.approx(w[200:].sum()) and w.mean() == pytest.approx(1.0)
    assert plain.sample_weight_ is None
    # the sparse (kNN graph) mode agrees with the dense one
    sparse = KCoverSelector(n_select=2, n_neighbors=50, random_state=0).fit(X, groups=groups)
    assert sorted(groups[sparse.selected_indices_]) == ["A", "B"]


def test_kcover_groups_survive_save_load_and_extend(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 6))
    groups = np.repeat([0, 1, 2], [80, 30, 10])
    a = KCoverSelector(n_select=3, n_neighbors=30, random_state=0).fit(X, groups=groups)
    a.save(tmp_path / "sel")
    b = KCoverSelector.load(tmp_path / "sel")
    np.testing.assert_array_equal(b.extend(2, X=X).selected_indices_, a.extend(2).selected_indices_)
    fresh = KCoverSelector(n_select=5, n_neighbors=30, random_state=0).fit(X, groups=groups)
    np.testing.assert_array_equal(fresh.selected_indices_, a.selected_indices_)


def test_groups_errors_name_the_problem():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="one label per sample"):
        KCoverSelector(n_select=2).fit(X, groups=np.zeros(19))
    with pytest.raises(ValueError, match="k-center"):
        KCenterSelector(n_select=2).fit(X, groups=np.zeros(20))


def test_kcover_whiten_covers_structure_under_a_dominant_brightness_direction():
    # one direction (brightness) has 14x the variance of the four structure clusters: on raw
    # cosine the cover follows brightness; after soft whitening it finds every cluster
    found = {False: 0, True: 0}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        lab = np.repeat([0, 1, 2, 3], 50)
        X = rng.normal(0, 0.3, (200, 64))
        X[:, 0] += rng.normal(0, 30, 200)
        X[np.arange(200), 1 + lab] += 8.0
        for w in (False, True):
            s = KCoverSelector(n_select=4, n_neighbors=None, whiten=w, random_state=0).fit(X)
            found[w] += len(set(lab[s.selected_indices_])) == 4
    assert found[True] == 10
    assert found[False] <= 3


def test_soft_whiten_damps_weak_directions_and_equalises_strong_ones():
    from biodatacentric.assess.knn import soft_whiten

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 4)) * [100.0, 30.0, 1.0, 1.0] + 5.0
    W = soft_whiten(X)
    sd = W.std(axis=0)
    assert np.allclose(W.mean(axis=0), 0, atol=1e-3)
    assert 0.5 < sd[1] / sd[0] < 1.0          # strong directions brought closer (were 0.3)
    assert sd[2] < 0.05 and sd[3] < 0.05      # weak ones are damped, not amplified
    # chunked covariance = one-shot
    np.testing.assert_allclose(soft_whiten(X, chunk_size=333), W, rtol=1e-4, atol=1e-5)
