"""The estimator checks over every public estimator of the library -- the only place they run.

The public estimators are discovered from ``biodatacentric.__all__``; their cheap
configurations live in ``tests/estimator_cases.py`` (test code, not library code), so a new
estimator fails here until it has cases. The checks themselves are the public
:mod:`biodatacentric.utils.estimator_checks`.
"""

import inspect

import numpy as np
import pytest
from estimator_cases import CASES, cases_for, tiny_segmenter
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator as sklearn_check_estimator
from sklearn.utils.validation import check_is_fitted

import biodatacentric
from biodatacentric import KCenterSelector, KCoverSelector, MAEPretrainer, MCDropoutHunter, RandomSelector
from biodatacentric.base import BaseSelector, BioEstimator
from biodatacentric.utils.estimator_checks import EstimatorCase, check_estimator, run_case


def _public_estimators():
    out = []
    for name in biodatacentric.__all__:
        obj = getattr(biodatacentric, name)
        if inspect.isclass(obj) and issubclass(obj, BioEstimator) and not inspect.isabstract(obj) \
                and obj is not BioEstimator:
            out.append(obj)
    return out


def _cases():
    params = []
    for cls in _public_estimators():
        for case in cases_for(cls):
            params.append(pytest.param(cls, case, id=f"{cls.__name__}-{case.name}"))
    return params


def test_every_public_estimator_has_cases():
    estimators = _public_estimators()
    assert len(estimators) >= 9
    for cls in estimators:
        assert cls in CASES or hasattr(cls, "_test_cases"), \
            f"{cls.__name__} needs cheap cases in tests/estimator_cases.py"
        assert len(cases_for(cls)) >= 1


@pytest.mark.parametrize("cls,case", _cases())
def test_estimator_contract(cls, case):
    run_case(cls, case)


@pytest.mark.parametrize("cls", [KCoverSelector, KCenterSelector, RandomSelector])
def test_selectors_pass_scikit_learns_check_estimator(cls):
    """Selectors take a plain array, so every scikit-learn API check applies to them."""
    results = sklearn_check_estimator(cls(n_select=3, random_state=0), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert len(results) > 20
    assert not failed, failed


def test_prefitted_inner_estimators_survive_clone():
    seg = tiny_segmenter()
    hunter = clone(MCDropoutHunter(seg, n_samples=2, random_state=0))
    assert hunter.segmenter is seg
    check_is_fitted(hunter.segmenter)
    # an unfitted inner estimator is still cloned (a fresh copy, as scikit-learn does)
    raw = MAEPretrainer(preset="tiny", random_state=0)
    assert clone(biodatacentric.RCAMonitor(embedder=raw)).embedder is not raw


class _Broken(BaseSelector):
    def __init__(self, n_select=1, random_state=None, mode="return_none"):
        self.n_select = n_select
        self.random_state = random_state
        self.mode = mode
        if mode == "attribute_in_init":
            self.seen_ = True

    def _select(self, X, n_select, exclude, seed):
        return np.flatnonzero(~exclude)[:n_select]

    def fit(self, X, y=None, *, exclude=None):
        super().fit(X, exclude=exclude)
        if self.mode == "overwrite_param":
            self.n_select = 2
        return None if self.mode == "return_none" else self


@pytest.mark.parametrize("mode,message", [("return_none", "must return self"),
                                          ("overwrite_param", "changed the parameters"),
                                          ("attribute_in_init", "should not set any attribute")])
def test_check_estimator_catches_broken_estimators(mode, message):
    """The checks must fail for an estimator that breaks the contract."""
    X = np.eye(3)
    case = EstimatorCase(make=lambda: _Broken(random_state=0, mode=mode), fit=lambda e: e.fit(X),
                         use=lambda e: e.selected_indices_ if e.__sklearn_is_fitted__() else e._check_is_fitted(),
                         result=lambda e: e.selected_indices_)
    with pytest.raises(AssertionError, match=message):
        check_estimator(_Broken, [case])


def test_extending_guide_examples_run():
    """Every complete example of docs/extending.md (selector, hunter, monitor) runs and passes
    the estimator checks it calls."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "check_estimator(" in b]
    assert len(blocks) == 3
    for code in blocks:
        n_lines = len([line for line in code.splitlines() if line.strip()])
        assert 15 <= n_lines <= 35, f"an example of {n_lines} lines"
        namespace = {"__name__": "docs_extending_example"}
        exec(compile(code, "docs/extending.md", "exec"), namespace)


def test_type_hints_resolve_and_say_patches():
    """Every public method's hints resolve, a patches argument is hinted as Patches, and the
    package ships py.typed."""
    import typing
    from pathlib import Path

    checked = 0
    for cls in _public_estimators():
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if (name.startswith("_") and name != "__init__") or not fn.__module__.startswith("biodatacentric"):
                continue
            hints = typing.get_type_hints(fn)
            for arg in ("patches", "new", "replay", "validation", "references"):
                if arg in hints:
                    checked += 1
                    assert "Patches" in str(hints[arg]), f"{cls.__name__}.{name}({arg}: {hints[arg]})"
    assert checked >= 10
    assert (Path(biodatacentric.__file__).parent / "py.typed").is_file()
