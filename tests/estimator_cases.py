"""Cheap configurations of every public estimator, for the shared estimator checks.

Test code, not library code: the library's modules carry no test fixtures (and the hunter's
fixture, which trains a segmenter, no longer ties ``hunt/`` to ``segment/``). Method
developers write such cases for their own estimators in their own tests and hand them to
:func:`biodatacentric.utils.estimator_checks.check_estimator`. ``tests/test_common.py`` runs the
checks on :data:`CASES`, and fails if a public estimator has no entry here.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from biodatacentric import (DatasetAuditor, EmbeddingDrift, KCenterSelector, KCoverSelector, MAEPretrainer,
                            MCDropoutHunter, QualityMonitor, RandomSelector, RCAMonitor, TransUNetSegmenter)
from biodatacentric.data import Patches, make_vessels
from biodatacentric.utils.estimator_checks import EstimatorCase


@functools.lru_cache(maxsize=1)
def tiny_segmenter() -> TransUNetSegmenter:
    """A tiny fitted TransUNetSegmenter with BatchNorm and dropout (two short epochs)."""
    img, mask = make_vessels((2, 64, 64), random_state=5)
    train = Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)
    return TransUNetSegmenter(preset="tiny", feature_size=4, max_epochs=2, batch_size=4, norm="batch",
                              decoder_dropout=0.2, mlp_dropout=0.1, precision="fp32", device="cpu",
                              random_state=0, progress=False).fit(train)


@functools.lru_cache(maxsize=1)
def tiny_patches() -> Patches:
    img, mask = make_vessels((3, 64, 64), random_state=0)
    return Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)


def _KCoverSelector_cases() -> list[EstimatorCase]:
    cls = KCoverSelector
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6)).astype(np.float32)

    def use(e: "KCoverSelector") -> Any:
        e._check_is_fitted()
        return e.suggest_n_select()

    def result(e: "KCoverSelector") -> Any:
        return {"idx": e.selected_indices_.astype(float), "cov": e.coverage_,
                "obj": e.objective_value_}

    return [
        EstimatorCase(make=lambda: cls(n_select=5, n_neighbors=15, random_state=0),
                      fit=lambda e: e.fit(X, exclude=[0, 1]), use=use, result=result,
                      name="sparse-facility"),
    ]


def _KCenterSelector_cases() -> list[EstimatorCase]:
    cls = KCenterSelector
    X = np.random.default_rng(1).normal(size=(80, 5)).astype(np.float32)
    return [EstimatorCase(make=lambda: cls(n_select=6, random_state=0), fit=lambda e: e.fit(X),
                          use=lambda e: e.suggest_n_select(rule="knee"),
                          result=lambda e: {"idx": e.selected_indices_.astype(float),
                                            "r": e.objective_value_})]


def _RandomSelector_cases() -> list[EstimatorCase]:
    cls = RandomSelector
    X = np.random.default_rng(2).normal(size=(30, 3))
    return [EstimatorCase(make=lambda: cls(n_select=4, random_state=1), fit=lambda e: e.fit(X, exclude=[3]),
                          use=lambda e: e.extend(1),
                          result=lambda e: e.selected_indices_[:4].astype(float))]


def _DatasetAuditor_cases() -> list[EstimatorCase]:
    cls = DatasetAuditor
    rng = np.random.default_rng(0)
    imgs = rng.random((40, 24, 24)).astype(np.float32)
    imgs[2] = 0.3
    imgs[9] = imgs[4]
    emb = rng.normal(size=(40, 6)).astype(np.float32)
    emb[9] = emb[4]

    def result(e: "DatasetAuditor") -> Any:
        return {"flags": e.flag_matrix_.astype(float), "stats": np.nan_to_num(e.stats_, nan=-1.0),
                "excl": e.exclude_.astype(float)}

    return [
        EstimatorCase(make=lambda: cls(n_clusters=4, random_state=0), fit=lambda e: e.fit(imgs),
                      use=lambda e: e.summary_table(), result=result, name="patches", rtol=1e-4),
        EstimatorCase(make=lambda: cls(n_clusters=3, n_neighbors=5, random_state=0),
                      fit=lambda e: e.fit(embeddings=emb), use=lambda e: e.summary(),
                      result=result, name="embeddings", rtol=1e-4),
    ]


def _EmbeddingDrift_cases() -> list[EstimatorCase]:
    cls = EmbeddingDrift

    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 6)).astype(np.float32)
    new = rng.normal(size=(10, 6)).astype(np.float32) + 1.0
    return [EstimatorCase(make=lambda: cls(k=3, max_reference=50, random_state=0),
                          fit=lambda est: est.fit(train),
                          use=lambda est: est.score(new),
                          result=lambda est: {"ref": est.reference_distances_,
                                              "pct": est.score(new)["percentile"]},
                          name="gaussian")]


def _RCAMonitor_cases() -> list[EstimatorCase]:
    cls = RCAMonitor

    pairs = [make_vessels((48, 48), random_state=s) for s in range(3)]
    ref_img = np.stack([p[0] for p in pairs])
    ref_msk = np.stack([p[1] for p in pairs])
    img, truth = make_vessels((2, 48, 48), random_state=11)

    def result(est: "RCAMonitor") -> tuple:
        r = est.score(img, truth, axes="ZYX")
        return {"estimated": r["estimated_dice"], "per_reference": r["per_reference_dice"]}

    return [
        EstimatorCase(make=lambda: cls(n_pixels=600, n_estimators=5, n_jobs=1, normalize="none",
                                       calibration="forest", calibration_size=3, random_state=0),
                      fit=lambda est: est.fit((ref_img, ref_msk)),
                      use=lambda est: est.score(img, truth, axes="ZYX"),
                      result=result, name="random_forest"),
        EstimatorCase(make=lambda: cls(classifier="extra_trees", n_pixels=600, n_estimators=5, n_jobs=1,
                                       aggregate="top_k", top_k=2, reference_stride=1,
                                       feature_scaling="per_image", sigmas=(0.7, 1.6, 3.5),
                                       random_state=1),
                      fit=lambda est: est.fit((ref_img, ref_msk)),
                      use=lambda est: est.score(img, truth, axes="ZYX"),
                      result=result, name="extra_trees_per_image"),
    ]


def _TransUNetSegmenter_cases() -> list[EstimatorCase]:
    cls = TransUNetSegmenter

    def data() -> Any:
        img, mask = make_vessels((64, 64), random_state=3)
        return Patches.from_arrays(img, patch_shape=(32, 32), stride=16, masks=mask)

    def fit(est: "TransUNetSegmenter") -> "TransUNetSegmenter":
        p = data()
        return est.fit(p[:7], validation=p[7:])

    common = dict(preset="tiny", feature_size=4, max_epochs=2, batch_size=4, precision="fp32", device="cpu",
                  random_state=0, progress=False)
    return [
        EstimatorCase(make=lambda: cls(**common), fit=fit, use=lambda e: e.predict_proba(data()[:2]),
                      result=lambda e: e.predict_proba(data()[:3]), name="tiny-group", atol=1e-5),
        EstimatorCase(make=lambda: cls(**{**common, "norm": "batch", "loss": "ce", "augment": False}),
                      fit=lambda e: e.fit(data()), use=lambda e: e.score(data()),
                      result=lambda e: e.predict_image(np.asarray(data().images([0])[0]), return_proba=True),
                      name="tiny-batchnorm", atol=1e-5),
    ]


def _MAEPretrainer_cases() -> list[EstimatorCase]:
    cls = MAEPretrainer

    def data(seed: int = 0) -> Patches:
        imgs = np.stack([make_vessels((80, 80), random_state=seed + i)[0] for i in range(3)])
        return Patches.from_arrays(imgs, axes="ZYX", patch_shape=(40, 40), stride=20)  # 27 patches

    def make_a() -> "MAEPretrainer":
        return cls(preset="tiny", img_size=32, max_epochs=2, batch_size=8, n_components=16,
                   warmup_epochs=1, precision="fp32", random_state=0)

    def make_b() -> "MAEPretrainer":
        return cls(preset="tiny", img_size=32, max_epochs=1, batch_size=16, n_components=None, pool="cls",
                   norm_pix_loss=True, precision="fp32", random_state=1)

    def result(est: "MAEPretrainer") -> dict:
        return {"embeddings": est.transform(data(5)), "loss": np.asarray(est.history_["loss"])}

    return [
        EstimatorCase(make=make_a, fit=lambda e: e.fit(data()), use=lambda e: e.transform(data(5)),
                      result=result, name="tiny-pca", rtol=1e-4, atol=1e-5),
        EstimatorCase(make=make_b, fit=lambda e: e.fit(data()), use=lambda e: e.reconstruct(data(5)),
                      result=result, name="tiny-cls-normpix", rtol=1e-4, atol=1e-5),
    ]


def _MCDropoutHunter_cases() -> list[EstimatorCase]:
    pool = tiny_patches()

    def fingerprint(h):
        return {"scores": h.scores_, "ranking": h.ranking_.astype(float)}

    return [
        EstimatorCase(make=lambda: MCDropoutHunter(tiny_segmenter(), n_samples=4, batch_size=6, random_state=0),
                      fit=lambda h: h.fit(pool), use=lambda h: h.select(2),
                      result=fingerprint, name="full-mi-topq"),
        EstimatorCase(make=lambda: MCDropoutHunter(tiny_segmenter(), n_samples=3, mode="decoder_only",
                                                   measure="variance", aggregate="structure", radius=1,
                                                   random_state=1),
                      fit=lambda h: h.fit(pool), use=lambda h: h.select(1, diversity="one_per_slice"),
                      result=fingerprint, name="decoder-variance-structure"),
    ]


def _QualityMonitor_cases() -> list[EstimatorCase]:
    img, mask = make_vessels((2, 48, 48), random_state=7)

    def fingerprint(m: "QualityMonitor") -> dict:
        rec = m.assess(img, mask, axes="ZYX")
        return {"y": m.calibration_y_, "oof": m.calibration_oof_, "est": rec["estimated_dice"],
                "q": m.halfwidth_}

    return [
        EstimatorCase(make=lambda: QualityMonitor(tiny_segmenter(), n_samples=3, n_tiles=3, n_corruptions=2,
                                                  n_estimators=10, random_state=0),
                      fit=lambda m: m.fit(tiny_patches()), use=lambda m: m.score(img, mask, axes="ZYX"),
                      result=fingerprint, name="flips-dropout"),
    ]


#: every public estimator class -> a function returning its cheap cases
CASES = {KCoverSelector: _KCoverSelector_cases, KCenterSelector: _KCenterSelector_cases,
         RandomSelector: _RandomSelector_cases, DatasetAuditor: _DatasetAuditor_cases,
         EmbeddingDrift: _EmbeddingDrift_cases, RCAMonitor: _RCAMonitor_cases,
         TransUNetSegmenter: _TransUNetSegmenter_cases, MAEPretrainer: _MAEPretrainer_cases,
         MCDropoutHunter: _MCDropoutHunter_cases, QualityMonitor: _QualityMonitor_cases}


def cases_for(cls: type) -> list[EstimatorCase]:
    """The cheap cases of a public estimator class: from :data:`CASES`, or the class's own
    ``_test_cases()`` classmethod (an estimator may keep them next to its code, built with the
    public :mod:`biodatacentric.utils.estimator_checks`); a KeyError names a class without any."""
    if cls in CASES:
        return CASES[cls]()
    if hasattr(cls, "_test_cases"):
        return cls._test_cases()
    raise KeyError(f"{cls.__name__} has no cheap cases: add them to tests/estimator_cases.py")
