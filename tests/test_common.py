"""Shared estimator checks over every public estimator of the library.

Each public estimator class provides ``_test_cases()`` (see ``biodatacentric._testing``);
this file discovers them from ``biodatacentric.__all__`` so a new estimator is checked as soon
as it is exported.
"""

import inspect

import pytest

import biodatacentric
from biodatacentric._testing import check_estimator, run_case
from biodatacentric.base import BioEstimator


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
        for case in cls._test_cases():
            params.append(pytest.param(cls, case, id=f"{cls.__name__}-{case.name}"))
    return params


def test_every_public_estimator_has_cases():
    for cls in _public_estimators():
        assert hasattr(cls, "_test_cases"), f"{cls.__name__} must define _test_cases()"
        assert len(cls._test_cases()) >= 1


@pytest.mark.parametrize("cls,case", _cases())
def test_estimator_contract(cls, case):
    run_case(cls, case)


def test_check_estimator_catches_a_broken_fit():
    """The checks must fail for an estimator whose fit does not return self."""
    import numpy as np

    from biodatacentric._testing import EstimatorCase
    from biodatacentric.base import BaseSelector

    class Broken(BaseSelector):
        def __init__(self, n_select=1, random_state=None):
            self.n_select = n_select
            self.random_state = random_state

        def _select(self, X, n_select, exclude, seed):
            return np.flatnonzero(~exclude)[:n_select]

        def fit(self, X, y=None, *, exclude=None):
            super().fit(X, exclude=exclude)
            return None

    X = np.eye(3)
    case = EstimatorCase(make=lambda: Broken(random_state=0), fit=lambda e: e.fit(X),
                         use=lambda e: e.selected_indices_ if e.__sklearn_is_fitted__() else e._check_is_fitted(),
                         result=lambda e: e.selected_indices_)
    with pytest.raises(AssertionError, match="must return self"):
        check_estimator(Broken, [case])
