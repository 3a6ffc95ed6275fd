"""The estimator checks, public for method developers to run in their own tests.

:func:`check_estimator` runs, on each cheap configuration (:class:`EstimatorCase`) of an
estimator class:

* scikit-learn's API checks that apply to any input type (``check_no_attributes_set_in_init``,
  ``check_get_params_invariance``, ``check_set_params``);
* ``__init__`` stores its parameters untouched; get/set_params round-trip; clone keeps them;
* using an unfitted estimator raises ``NotFittedError`` naming the class, and fitted-ness is
  what scikit-learn's :func:`~sklearn.utils.validation.check_is_fitted` reports;
* ``fit`` returns ``self``, builds torch modules only in ``fit`` and changes no parameter;
* **clone-then-fit**: a clone of the fitted estimator keeps every pre-fitted inner estimator
  (a fitted segmenter handed to a hunter, a fitted embedder handed to a monitor) fitted, and
  refitting the clone gives the same result (same seed, same result);
* a save/load round trip gives the same result.

Estimators whose ``fit`` takes a plain ``(n_samples, n_features)`` array can also go through
scikit-learn's own :func:`sklearn.utils.estimator_checks.check_estimator` (the library's
selectors pass it; see ``tests/test_common.py``).

Examples
--------
>>> import numpy as np
>>> from sklearn.utils.validation import check_is_fitted
>>> from biodatacentric.base import BaseSelector
>>> from biodatacentric.utils.estimator_checks import EstimatorCase, check_estimator
>>> class FirstK(BaseSelector):
...     def __init__(self, n_select=2, random_state=None):
...         self.n_select = n_select
...         self.random_state = random_state
...     def _select(self, X, n_select, exclude, seed):
...         return np.flatnonzero(~exclude)[:n_select]
>>> X = np.random.default_rng(0).normal(size=(10, 3))
>>> case = EstimatorCase(make=lambda: FirstK(n_select=3), fit=lambda e: e.fit(X, exclude=[0]),
...                      use=check_is_fitted, result=lambda e: e.selected_indices_)
>>> check_estimator(FirstK, [case])      # raises AssertionError on the first broken rule
"""

from __future__ import annotations

import inspect
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as _sk
from sklearn.utils.validation import check_is_fitted

from .._io import to_jsonable

__all__ = ["EstimatorCase", "check_estimator", "run_case", "assert_same_result"]


@dataclass
class EstimatorCase:
    """One cheap configuration of an estimator for the shared checks.

    Attributes
    ----------
    make : callable() -> estimator
        Builds a fresh, unfitted estimator (with a fixed ``random_state``).
    fit : callable(estimator) -> Any
        Fits it and returns what ``fit`` returned (must be the estimator itself).
    use : callable(estimator) -> Any
        A method that needs a fitted estimator (``transform``, ``predict``, ``score`` ...).
    result : callable(estimator) -> Any
        A fingerprint of the fitted state compared across refits and save/load (arrays,
        numbers, tuples or dicts of them).
    name : str
        Shown in test ids.
    rtol, atol : float
        Tolerances of the result comparisons.
    """

    make: Callable[[], Any]
    fit: Callable[[Any], Any]
    use: Callable[[Any], Any]
    result: Callable[[Any], Any]
    name: str = "default"
    rtol: float = 1e-5
    atol: float = 1e-6


def assert_same_result(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-6, path: str = "result") -> None:
    """Recursively compare arrays / tensors / numbers / containers."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().float().numpy()
    if isinstance(b, torch.Tensor):
        b = b.detach().cpu().float().numpy()
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_same_result(a[k], b[k], rtol, atol, f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)) and not (a and isinstance(a[0], (int, float)) and not isinstance(a[0], bool)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_result(x, y, rtol, atol, f"{path}[{i}]")
    elif isinstance(a, (str, bool)) or a is None:
        assert a == b, f"{path}: {a!r} != {b!r}"
    else:
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                   rtol=rtol, atol=atol, err_msg=path)


def check_estimator(cls: type, cases: list[EstimatorCase] | None = None) -> None:
    """Run every check on every case of ``cls``.

    Parameters
    ----------
    cls : type
        The estimator class.
    cases : list of EstimatorCase, optional
        Its cheap configurations; when omitted, ``cls._test_cases()`` is called (a classmethod
        an extension may define next to its tests).
    """
    if cases is None:
        if not hasattr(cls, "_test_cases"):
            raise TypeError(f"pass the cases of {cls.__name__} (a list of EstimatorCase), or give the class "
                            "a _test_cases() classmethod returning them")
        cases = cls._test_cases()
    assert len(cases) >= 1, f"no cases for {cls.__name__}"
    for case in cases:
        run_case(cls, case)


def _simple(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, tuple, type(None)))


def _is_fitted(value: Any) -> bool:
    if not hasattr(value, "fit") or inspect.isclass(value):
        return False
    try:
        check_is_fitted(value)
    except (NotFittedError, TypeError):
        return False
    return True


def run_case(cls: type, case: EstimatorCase) -> None:
    """Run every check on one case of ``cls`` (see the module docstring)."""
    est = case.make()
    assert isinstance(est, cls)
    name = cls.__name__
    # scikit-learn's API checks that do not depend on the input type
    for check in (_sk.check_no_attributes_set_in_init, _sk.check_get_params_invariance, _sk.check_set_params):
        check(name, case.make())
    # __init__ stores parameters unchanged; get/set_params round-trip; clone keeps them
    params = est.get_params(deep=False)
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert set(params) == set(names), f"get_params keys {sorted(params)} != __init__ args {sorted(names)}"
    cloned = clone(est)
    for k, v in params.items():
        if _simple(v):
            assert cloned.get_params(deep=False)[k] == v, f"clone changed parameter {k}"
    est2 = case.make()
    est2.set_params(**params)
    for k, v in params.items():
        if _simple(v):
            assert est2.get_params(deep=False)[k] == v
    # unfitted use raises NotFittedError naming the class; check_is_fitted agrees
    unfitted = case.make()
    try:
        case.use(unfitted)
    except NotFittedError as exc:
        assert name in str(exc), f"NotFittedError must name {name}: {exc}"
    else:
        raise AssertionError(f"{name}: using an unfitted estimator did not raise NotFittedError")
    assert not _is_fitted(unfitted), f"{name}: check_is_fitted passes on an unfitted estimator"
    # fit returns self, changes no parameter; torch modules are not built in __init__
    assert not any(isinstance(v, torch.nn.Module) for k, v in vars(est).items() if k.endswith("_")), \
        "fitted modules must be built in fit, not __init__"
    before = {k: (v if _simple(v) else id(v)) for k, v in est.get_params(deep=False).items()}
    returned = case.fit(est)
    assert returned is est, f"{name}.fit must return self"
    after = {k: (v if _simple(v) else id(v)) for k, v in est.get_params(deep=False).items()}
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"{name}.fit changed the parameters {changed}; fit must leave __init__ arguments alone"
    assert _is_fitted(est), f"{name}: check_is_fitted fails after fit"
    case.use(est)
    first = case.result(est)
    # clone-then-fit: pre-fitted inner estimators stay fitted; same seed, same result
    again = clone(est)
    assert not _is_fitted(again), f"{name}: a clone must be unfitted"
    for k, v in est.get_params(deep=False).items():
        if _is_fitted(v):
            inner = again.get_params(deep=False)[k]
            assert _is_fitted(inner), f"clone({name}) un-fitted the pre-fitted {k}={type(v).__name__}"
    case.fit(again)
    assert_same_result(first, case.result(again), case.rtol, case.atol, path=f"{name} clone-then-fit")
    # save / load round trip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        est.save(path)
        loaded = cls.load(path, **_unsaved_params(est))
        assert type(loaded) is type(est)
        assert_same_result(first, case.result(loaded), case.rtol, case.atol, path=f"{name} save/load")
        case.use(loaded)


def _unsaved_params(est: Any) -> dict:
    """Parameters that save() cannot store as JSON (modules, estimators) are passed back."""
    out = {}
    for k, v in est.get_params(deep=False).items():
        try:
            to_jsonable(v)
        except TypeError:
            out[k] = v
    return out
