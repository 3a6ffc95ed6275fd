"""Declarative parameter validation (in the style of scikit-learn's ``_parameter_constraints``).

Every estimator declares, for each ``__init__`` parameter, the list of constraints its value
may satisfy; :meth:`biodatacentric.base.BioEstimator._validate_params` checks them all at the
start of ``fit`` (and wherever parameters are used again). A value passes when it satisfies
any one constraint of its list. A constraint is one of

* an :class:`Interval` (``Interval(Integral, 1, None)``: a positive integer; ``bool`` is never
  an integer and ``2.9`` never passes as one, so nothing is truncated silently);
* :class:`Options` (a fixed set of values, usually strings);
* :class:`Shape2D` (a positive integer or a pair of them, never a string);
* :class:`HasMethods` (an object with these methods, e.g. a scikit-learn classifier);
* :class:`Check` (a validating function of the library, e.g. one that parses a normalisation);
* ``None`` (the value ``None``), a type (``isinstance``), or one of the strings ``"boolean"``,
  ``"random_state"``, ``"callable"``, ``"path"`` and ``"device"``;
* ``"no_validation"`` (the estimator validates the value itself).

A failure raises :class:`InvalidParameterError`, a subclass of both ``ValueError`` and
``TypeError``, whose message names the estimator, the parameter, the value and what is
accepted.

Examples
--------
>>> from numbers import Integral, Real
>>> constraints = {"max_epochs": [Interval(Integral, 1, None)],
...                "lr": [Interval(Real, 0, None, closed="neither")],
...                "schedule": [Options({"cosine", "poly"})]}
>>> validate_params({"max_epochs": 3, "lr": 1e-3, "schedule": "poly"}, constraints, "Trainer")
>>> validate_params({"max_epochs": 2.9, "lr": 1e-3, "schedule": "poly"}, constraints, "Trainer")
Traceback (most recent call last):
...
biodatacentric._params.InvalidParameterError: Trainer: max_epochs must be a positive integer; got max_epochs=2.9 (float)
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["InvalidParameterError", "Interval", "Options", "Shape2D", "HasMethods", "Check",
           "validate_params", "check_param", "make_constraint"]


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a type or value that is not accepted (a ``ValueError`` and a ``TypeError``)."""


class _Constraint:
    def is_satisfied_by(self, value: Any) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def __str__(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


class Interval(_Constraint):
    """Numbers of ``type`` (``Integral`` or ``Real``) between ``left`` and ``right``.

    ``None`` bounds are open-ended; ``closed`` is ``"both"``, ``"left"``, ``"right"`` or
    ``"neither"``. ``Real`` accepts integers too, but never ``bool`` or NaN.
    """

    def __init__(self, type: type, left: float | None, right: float | None, *, closed: str = "both") -> None:
        if type not in (Integral, Real):
            raise ValueError("Interval type must be numbers.Integral or numbers.Real")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed={closed!r} is not 'both', 'left', 'right' or 'neither'")
        self.type, self.left, self.right, self.closed = type, left, right, closed

    def is_satisfied_by(self, value: Any) -> bool:
        if not (_is_int(value) if self.type is Integral else _is_real(value)):
            return False
        if self.type is Real and math.isnan(float(value)):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        kind = "integer" if self.type is Integral else "number"
        lo, hi = self.left, self.right
        lo_open = self.closed in ("right", "neither")
        hi_open = self.closed in ("left", "neither")
        if hi is None and lo is not None:
            if self.type is Integral and lo == 1 and not lo_open or lo == 0 and lo_open:
                return f"a positive {kind}"
            if lo == 0 and not lo_open:
                return f"a non-negative {kind}"
            return f"an {kind} {'>' if lo_open else '>='} {lo}" if kind == "integer" else \
                f"a {kind} {'>' if lo_open else '>='} {lo}"
        if lo is None and hi is None:
            return "an integer" if kind == "integer" else "a finite number"
        left = "-inf" if lo is None else lo
        right = "inf" if hi is None else hi
        art = "an" if kind == "integer" else "a"
        return (f"{art} {kind} in {'(' if lo_open or lo is None else '['}{left}, {right}"
                f"{')' if hi_open or hi is None else ']'}")


class Options(_Constraint):
    """One of a fixed set of values (compared with ``==``; strings must match exactly)."""

    def __init__(self, options: Iterable[Any]) -> None:
        self.options = tuple(sorted(options, key=str)) if not isinstance(options, (list, tuple)) else tuple(options)

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, (np.ndarray, list, dict, set)):
            return False
        try:
            return any(type(value) is type(o) and value == o or (isinstance(value, str) and value == o)
                       for o in self.options)
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Shape2D(_Constraint):
    """A 2-D shape: a positive integer (square) or a pair of positive integers ``(height, width)``.

    Strings are refused (``"32"`` is not ``(3, 2)``), and so are floats and ``bool``.
    """

    def is_satisfied_by(self, value: Any) -> bool:
        if _is_int(value):
            return value >= 1
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, np.ndarray)):
            return False
        vals = list(np.asarray(value, dtype=object).ravel()) if isinstance(value, np.ndarray) else list(value)
        if isinstance(value, np.ndarray) and value.ndim != 1:
            return False
        return len(vals) == 2 and all(_is_int(v) and v >= 1 for v in vals)

    def __str__(self) -> str:
        return "a positive integer or a pair of positive integers (height, width)"


def as_shape2d(value: Any, name: str, owner: str = "") -> tuple[int, int]:
    """``value`` validated by :class:`Shape2D` as an ``(int, int)`` pair.

    Examples
    --------
    >>> as_shape2d(32, "patch_shape"), as_shape2d((64, 48), "patch_shape")
    ((32, 32), (64, 48))
    >>> as_shape2d("32", "patch_shape")
    Traceback (most recent call last):
    ...
    biodatacentric._params.InvalidParameterError: patch_shape must be a positive integer or a pair of positive integers (height, width); got patch_shape='32' (str)
    """
    check_param(name, value, [Shape2D()], owner)
    if _is_int(value):
        return int(value), int(value)
    a, b = (int(v) for v in value)
    return a, b


class HasMethods(_Constraint):
    """An object with all of ``methods`` (e.g. ``fit`` and ``predict``)."""

    def __init__(self, methods: Iterable[str]) -> None:
        self.methods = tuple(methods)

    def is_satisfied_by(self, value: Any) -> bool:
        return not isinstance(value, (str, bytes, type)) and \
            all(callable(getattr(value, m, None)) for m in self.methods)

    def __str__(self) -> str:
        return "an object with " + " and ".join(f"{m}()" for m in self.methods)


class Check(_Constraint):
    """Satisfied when ``func(value)`` does not raise ``ValueError``/``TypeError``.

    For values whose grammar a library function already owns (a normalisation spec, a measure
    name with aliases, a sequence of filter scales); the function's own message is kept.
    """

    def __init__(self, func: Callable[[Any], Any], description: str) -> None:
        self.func, self.description = func, description
        self.last_error: str | None = None

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            self.func(value)
        except (ValueError, TypeError) as exc:
            self.last_error = str(exc)
            return False
        return True

    def __str__(self) -> str:
        return self.description


class _InstanceOf(_Constraint):
    def __init__(self, type_: type) -> None:
        self.type = type_

    def is_satisfied_by(self, value: Any) -> bool:
        if self.type in (int, float) and isinstance(value, (bool, np.bool_)):
            return False
        return isinstance(value, self.type)

    def __str__(self) -> str:
        names = {str: "a string", dict: "a dict", list: "a list", tuple: "a tuple", int: "an integer",
                 float: "a float"}
        name = names.get(self.type)
        return name if name is not None else f"an instance of {self.type.__name__}"


class _NoneConstraint(_Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


class _Named(_Constraint):
    _DESC = {"boolean": "True or False", "random_state": "None or a non-negative integer seed",
             "callable": "a callable", "path": "a path (str or os.PathLike)",
             "device": "a device name such as 'auto', 'cpu' or 'cuda' (or a torch.device)"}

    def __init__(self, name: str) -> None:
        if name not in self._DESC:
            raise ValueError(f"unknown named constraint {name!r}")
        self.name = name

    def is_satisfied_by(self, value: Any) -> bool:
        if self.name == "boolean":
            return isinstance(value, (bool, np.bool_))
        if self.name == "random_state":
            return value is None or isinstance(value, np.random.Generator) or (_is_int(value) and value >= 0)
        if self.name == "callable":
            return callable(value)
        if self.name == "path":
            return isinstance(value, (str, os.PathLike))
        # device
        if isinstance(value, str):
            return bool(value)
        return type(value).__name__ == "device" and type(value).__module__.startswith("torch")

    def __str__(self) -> str:
        return self._DESC[self.name]


def make_constraint(c: Any) -> _Constraint:
    """Turn a declared constraint into a constraint object."""
    if isinstance(c, _Constraint):
        return c
    if c is None:
        return _NoneConstraint()
    if isinstance(c, str):
        return _Named(c)
    if isinstance(c, type):
        return _InstanceOf(c)
    raise TypeError(f"unknown parameter constraint {c!r}")


def _short_repr(value: Any, limit: int = 80) -> str:
    if isinstance(value, np.ndarray) and value.size > 8:
        return f"array of shape {value.shape}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_param(name: str, value: Any, constraints: list, owner: str = "") -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` satisfies one of ``constraints``."""
    if constraints == "no_validation" or "no_validation" in constraints:
        return
    objs = [make_constraint(c) for c in constraints]
    if any(c.is_satisfied_by(value) for c in objs):
        return
    descs = [str(c) for c in objs]
    desc = descs[0] if len(descs) == 1 else ", ".join(descs[:-1]) + " or " + descs[-1]
    detail = next((c.last_error for c in objs if isinstance(c, Check) and c.last_error), None)
    prefix = f"{owner}: " if owner else ""
    msg = (f"{prefix}{name} must be {desc}; got {name}={_short_repr(value)} ({type(value).__name__})"
           + (f" ({detail})" if detail else ""))
    raise InvalidParameterError(msg)


def validate_params(params: dict[str, Any], constraints: dict[str, Any], owner: str = "",
                    skip: Iterable[str] = ()) -> None:
    """Check every parameter of ``params`` that ``constraints`` names (in declaration order)."""
    skipped = set(skip)
    for name, allowed in constraints.items():
        if name in params and name not in skipped:
            check_param(name, params[name], allowed, owner)
