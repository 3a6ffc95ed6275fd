"""The shared estimator checks, usable by method developers in their own tests.

Each public estimator class provides ``_test_cases()``: a list of cheap
:class:`EstimatorCase` objects (two tiny configurations that run in seconds on a CPU).
:func:`check_estimator` runs the scikit-learn contract checks on every case: clone,
get/set_params, ``__init__`` stores parameters untouched, ``fit`` returns ``self``, unfitted
use raises ``NotFittedError`` naming the class, the same seed gives the same result, and a
save/load round trip gives the same result.

Examples
--------
>>> from biodatacentric._testing import check_estimator
>>> from biodatacentric.base import BaseSelector
>>> # check_estimator(MySelector)   # raises AssertionError on the first broken rule
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

__all__ = ["EstimatorCase", "check_estimator", "assert_same_result"]


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
    """Run every shared check on every test case of ``cls``."""
    cases = cases if cases is not None else cls._test_cases()
    assert len(cases) >= 1, f"{cls.__name__}._test_cases() returned no cases"
    for case in cases:
        run_case(cls, case)


def run_case(cls: type, case: EstimatorCase) -> None:
    est = case.make()
    assert isinstance(est, cls)
    # __init__ stores parameters unchanged; get/set_params round-trip; clone keeps them
    params = est.get_params(deep=False)
    import inspect

    sig = inspect.signature(cls.__init__)
    names = [p for p in sig.parameters if p != "self"]
    assert set(params) == set(names), f"get_params keys {sorted(params)} != __init__ args {sorted(names)}"
    cloned = clone(est)
    for k, v in params.items():
        cv = cloned.get_params(deep=False)[k]
        if isinstance(v, (int, float, str, bool, tuple, type(None))):
            assert cv == v, f"clone changed parameter {k}"
    est2 = case.make()
    est2.set_params(**params)
    for k, v in params.items():
        if isinstance(v, (int, float, str, bool, tuple, type(None))):
            assert est2.get_params(deep=False)[k] == v
    # unfitted use raises NotFittedError naming the class
    try:
        case.use(case.make())
    except NotFittedError as exc:
        assert cls.__name__ in str(exc), f"NotFittedError must name {cls.__name__}: {exc}"
    else:
        raise AssertionError(f"{cls.__name__}: using an unfitted estimator did not raise NotFittedError")
    # fit returns self; torch modules are not built in __init__
    assert not any(isinstance(v, torch.nn.Module) for k, v in vars(est).items() if k.endswith("_")), \
        "fitted modules must be built in fit, not __init__"
    returned = case.fit(est)
    assert returned is est, f"{cls.__name__}.fit must return self"
    case.use(est)
    first = case.result(est)
    # same seed, same result
    other = case.make()
    case.fit(other)
    assert_same_result(first, case.result(other), case.rtol, case.atol, path=f"{cls.__name__} refit")
    # save / load round trip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        est.save(path)
        loaded = cls.load(path, **_unsaved_params(est))
        assert type(loaded) is type(est)
        assert_same_result(first, case.result(loaded), case.rtol, case.atol, path=f"{cls.__name__} save/load")
        case.use(loaded)


def _unsaved_params(est: Any) -> dict:
    """Parameters that save() cannot store as JSON (modules, estimators) are passed back."""
    from ._io import to_jsonable

    out = {}
    for k, v in est.get_params(deep=False).items():
        try:
            to_jsonable(v)
        except TypeError:
            out[k] = v
    return out
