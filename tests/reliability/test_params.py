"""Parameters are validated once, declaratively, before anything runs (issue 19, part A).

``patch_shape="32"`` used to become ``(3, 2)`` and ``max_epochs=2.9`` trained 2 epochs. Every
case below passes one wrong parameter to a public estimator (or to ``Patches``) and checks the
exception type, that the message names the estimator, the parameter and the value, and that
nothing was written (no checkpoint folder, no file of the user changed).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import biodatacentric as bdc
from biodatacentric import (DatasetAuditor, EmbeddingDrift, KCenterSelector, KCoverSelector, MAEPretrainer,
                            MCDropoutHunter, Patches, RandomSelector, RCAMonitor, TransUNetSegmenter, make_vessels)
from biodatacentric._params import InvalidParameterError, Interval, Options, Shape2D, check_param
from biodatacentric._train import TrainSettings, train

from .conftest import untouched

PUBLIC = [MAEPretrainer, KCoverSelector, KCenterSelector, RandomSelector, DatasetAuditor, TransUNetSegmenter,
          MCDropoutHunter, RCAMonitor, EmbeddingDrift]


def _patches() -> Patches:
    img, mask = make_vessels((2, 64, 64), random_state=0)
    return Patches.from_arrays(img, axes="ZYX", patch_shape=(32, 32), masks=mask)


def _refs():
    img, mask = make_vessels((2, 64, 64), random_state=0)
    return img, mask


def _fit(est):
    """Call the estimator's fit with small valid data of the right kind."""
    if isinstance(est, (KCoverSelector, KCenterSelector, RandomSelector, EmbeddingDrift)):
        return est.fit(np.random.default_rng(0).normal(size=(20, 4)))
    if isinstance(est, DatasetAuditor):
        return est.fit(np.random.default_rng(0).random((10, 16, 16)).astype(np.float32))
    if isinstance(est, RCAMonitor):
        return est.fit(_refs())
    return est.fit(_patches())


def _assert_names(err, owner: str, name: str, value_repr: str) -> None:
    msg = str(err.value)
    assert msg.startswith(f"{owner}: {name} must be "), msg
    assert f"got {name}={value_repr}" in msg, msg


MAE = dict(preset="tiny", img_size=32, max_epochs=1, batch_size=8, precision="fp32", device="cpu", progress=False)
SEG = dict(preset="tiny", feature_size=4, max_epochs=1, batch_size=4, precision="fp32", device="cpu", progress=False)

CASES = [
    # (estimator class, base kwargs, bad parameter, bad value, repr of the value in the message)
    (MAEPretrainer, MAE, "max_epochs", 2.9, "2.9"),
    (MAEPretrainer, MAE, "batch_size", "8", "'8'"),
    (MAEPretrainer, MAE, "mask_ratio", 1.0, "1.0"),
    (MAEPretrainer, MAE, "augment", "yes", "'yes'"),
    (MAEPretrainer, MAE, "n_components", 0.5, "0.5"),
    (MAEPretrainer, MAE, "preset", "huge", "'huge'"),
    (MAEPretrainer, MAE, "checkpoint_every", 0, "0"),
    (MAEPretrainer, MAE, "random_state", -1, "-1"),
    (TransUNetSegmenter, SEG, "max_epochs", 2.9, "2.9"),
    (TransUNetSegmenter, SEG, "n_classes", 2.0, "2.0"),
    (TransUNetSegmenter, SEG, "lr", -1e-3, "-0.001"),
    (TransUNetSegmenter, SEG, "decoder_dropout", 1.0, "1.0"),
    (TransUNetSegmenter, SEG, "layer_decay", 0.0, "0.0"),
    (TransUNetSegmenter, SEG, "augment", "no", "'no'"),
    (TransUNetSegmenter, SEG, "batch_size", True, "True"),
    (KCoverSelector, {}, "n_select", 2.5, "2.5"),
    (KCoverSelector, {}, "lazy", "yes", "'yes'"),
    (KCoverSelector, {}, "n_neighbors", 1, "1"),
    (KCoverSelector, {}, "threshold", 2, "2"),
    (KCoverSelector, {}, "knn_options", [("n_cells", 10)], "[('n_cells', 10)]"),
    (KCenterSelector, {}, "n_init_random", 0, "0"),
    (KCenterSelector, {}, "init", "far", "'far'"),
    (RandomSelector, {}, "n_select", "3", "'3'"),
    (RandomSelector, {}, "random_state", 1.5, "1.5"),
    (DatasetAuditor, {}, "n_clusters", 0, "0"),
    (DatasetAuditor, {}, "exclude_checks", "blank", "'blank'"),
    (DatasetAuditor, {}, "exclude_checks", ("blurr",), "('blurr',)"),
    (DatasetAuditor, {}, "outlier_percentile", 0, "0"),
    (MCDropoutHunter, {}, "n_samples", 1, "1"),
    (MCDropoutHunter, {}, "top_q", 0, "0"),
    (MCDropoutHunter, {}, "measure", "bogus", "'bogus'"),
    (MCDropoutHunter, {}, "precision", "half", "'half'"),
    (MCDropoutHunter, {}, "batch_size", 2.0, "2.0"),
    (RCAMonitor, {}, "n_pixels", 1.5, "1.5"),
    (RCAMonitor, {}, "threshold", 1.5, "1.5"),
    (RCAMonitor, {}, "prior_correction", "no", "'no'"),
    (RCAMonitor, {}, "classifier", "svm", "'svm'"),
    (RCAMonitor, {}, "normalize", "zscore", "'zscore'"),
    (RCAMonitor, {}, "n_jobs", 1.5, "1.5"),
    (EmbeddingDrift, {}, "k", 0, "0"),
    (EmbeddingDrift, {}, "k", True, "True"),
    (EmbeddingDrift, {}, "max_reference", 1.5, "1.5"),
]


@pytest.mark.parametrize("cls, base, name, value, shown", CASES,
                         ids=[f"{c[0].__name__}-{c[2]}={c[4]}" for c in CASES])
def test_bad_parameter_is_refused_by_fit(tmp_path, cls, base, name, value, shown):
    (tmp_path / "notes.txt").write_text("mine")
    kwargs = dict(base)
    if "checkpoint_dir" in inspect.signature(cls).parameters:
        kwargs["checkpoint_dir"] = str(tmp_path / "ckpt")
    est = cls(**{**kwargs, name: value})
    assert est.get_params()[name] is value                 # __init__ stores it untouched
    with untouched(tmp_path), pytest.raises(InvalidParameterError) as err:
        _fit(est)
    _assert_names(err, cls.__name__, name, shown)
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)
    assert not (tmp_path / "ckpt").exists()                # refused before anything was written
    assert not est.__sklearn_is_fitted__()


@pytest.mark.parametrize("value, shown", [("32", "'32'"), ((32.0, 32), "(32.0, 32)"), ((0, 8), "(0, 8)"),
                                          ((32, 32, 1), "(32, 32, 1)"), ((True, 32), "(True, 32)")],
                         ids=["str", "float", "zero", "three", "bool"])
def test_patch_shape_is_a_pair_of_positive_integers(tmp_path, value, shown):
    import tifffile

    img, _ = make_vessels((1, 64, 64), dtype="uint16", random_state=0)
    tifffile.imwrite(tmp_path / "s.tif", img)
    with untouched(tmp_path), pytest.raises(InvalidParameterError) as err:
        Patches.from_tiff(str(tmp_path / "s.tif"), patch_shape=value)
    _assert_names(err, "Patches", "patch_shape", shown)
    with pytest.raises(InvalidParameterError, match=r"Patches: patch_shape must be .*pair of positive integers"):
        Patches.from_arrays(img[0], patch_shape=value)


def test_stride_uses_the_same_shape_constraint():
    with pytest.raises(InvalidParameterError, match=r"stride must be a positive integer or a pair .*got stride='16'"):
        Patches.from_arrays(np.zeros((64, 64)), patch_shape=32, stride="16")
    assert Patches.from_arrays(np.zeros((64, 64)), patch_shape=np.int64(32), stride=(16, 32)).patch_shape == (32, 32)


def test_max_epochs_2_9_never_trains(tmp_path):
    calls = []

    def step(m, idx, gen):
        calls.append(idx)
        raise AssertionError("must not run")

    import torch

    with untouched(tmp_path), pytest.raises(InvalidParameterError, match=r"TrainSettings: max_epochs must be a "
                                                                          r"positive integer; got max_epochs=2.9"):
        train(torch.nn.Linear(2, 2), step, 4, TrainSettings(max_epochs=2.9, batch_size=2, lr=1e-3))
    assert calls == []


@pytest.mark.parametrize("kw, name, shown", [({"max_epochs": 1.5}, "max_epochs", "1.5"),
                                             ({"lr": 0}, "lr", "0"), ({"n_replay": -1}, "n_replay", "-1")])
def test_fine_tune_arguments_are_validated(kw, name, shown):
    seg = TransUNetSegmenter(**SEG, random_state=0).fit(_patches())
    before = [v.clone() for v in seg.module_.state_dict().values()]
    with pytest.raises(InvalidParameterError) as err:
        seg.fine_tune(_patches()[:2], **kw)
    _assert_names(err, "TransUNetSegmenter.fine_tune", name, shown)
    assert all((a == b).all() for a, b in zip(before, seg.module_.state_dict().values()))
    assert seg.fine_tune_history_ == []


def test_set_params_after_fit_is_checked_where_the_parameter_is_used():
    mon = RCAMonitor(n_pixels=600, n_estimators=5, n_jobs=1, normalize="none", random_state=0).fit(_refs())
    img, mask = _refs()
    mon.set_params(aggregate="best")
    with pytest.raises(InvalidParameterError, match=r"RCAMonitor: aggregate must be one of 'max'.*got aggregate='best'"):
        mon.score(img[0], mask[0])


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_parameter_is_declared(cls):
    """Each public estimator declares a constraint for exactly its __init__ parameters."""
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert sorted(cls._parameter_constraints) == sorted(names)
    defaults = cls().get_params(deep=False)
    for name, value in defaults.items():          # the defaults themselves are accepted
        check_param(name, value, cls._parameter_constraints[name], cls.__name__)


def test_constraint_descriptions_say_what_is_accepted():
    from numbers import Integral, Real

    assert str(Interval(Integral, 1, None)) == "a positive integer"
    assert str(Interval(Integral, 0, None)) == "a non-negative integer"
    assert str(Interval(Integral, 2, None)) == "an integer >= 2"
    assert str(Interval(Real, 0, 1, closed="left")) == "a number in [0, 1)"
    assert str(Interval(Real, 0, None, closed="neither")) == "a positive number"
    assert str(Options(("a", "b"))) == "one of 'a', 'b'"
    assert not Interval(Real, None, None).is_satisfied_by(float("nan"))
    assert not Shape2D().is_satisfied_by("32") and Shape2D().is_satisfied_by(np.array([4, 8]))
    with pytest.raises(InvalidParameterError, match=r"x must be None or a positive integer; got x=0 \(int\)"):
        check_param("x", 0, [None, Interval(Integral, 1, None)])


def test_developer_subclass_without_constraints_is_not_checked_beyond_its_base():
    class Mine(bdc.BaseSelector):
        def __init__(self, n_select=2, colour="red"):
            self.n_select = n_select
            self.colour = colour

        def _select(self, X, n_select, exclude, seed):
            return np.arange(n_select)

    assert Mine(colour=object()).fit(np.eye(3)).selected_indices_.tolist() == [0, 1]
    with pytest.raises(InvalidParameterError, match="Mine: n_select must be a positive integer"):
        Mine(n_select=1.0).fit(np.eye(3))
