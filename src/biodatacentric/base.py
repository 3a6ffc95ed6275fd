"""Estimator mixins and the abstract bases that method developers subclass.

Every public estimator follows the scikit-learn contract: ``__init__`` only stores its
keyword arguments, validation happens in ``fit``, ``fit`` returns ``self`` and learned
state ends with an underscore. On top of that :class:`BioEstimator` adds ``save``/``load``
folders that never unpickle code.

Extension follows the template-method pattern: a base class owns one public method that
validates input and calls one abstract private hook:

* :class:`BaseSelector` -- ``fit(embeddings)`` calls ``_select``;
* :class:`BaseHunter` -- ``fit(patches)`` calls ``_score_patches``;
* :class:`BaseMonitor` -- ``score(image, mask)`` calls ``_score``.
"""

from __future__ import annotations

import inspect
import json
import platform
import re
from abc import ABC, abstractmethod
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ._io import MARKER, atomic_replace_dir, to_jsonable, torch_load_safe
from ._params import Interval, validate_params
from ._utils import check_random_state_int
from ._validation import as_index_mask, check_embeddings, check_image_and_mask
from ._version import __version__
from .data import Patches, as_patches
from .data._references import _as_references
from .nn import build_module, module_name

__all__ = ["BioEstimator", "BaseSelector", "BaseHunter", "BaseMonitor", "NotFittedError", "register_estimator",
           "registered_estimators"]

# ---------------------------------------------------------------------- the estimator registry
# load() turns the "class" name in config.json into a class only through this table: nothing
# is ever imported by name. The library's estimators register themselves when their module is
# imported (``import biodatacentric`` imports them all); extensions register explicitly.
_ESTIMATORS: dict[str, type] = {}

# fitted attribute / module names accepted from a config.json: public names ending in "_"
_FITTED_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*_$")


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_estimator(cls: type) -> type:
    """Class decorator: let :meth:`BioEstimator.load` rebuild ``cls`` from a save folder.

    A save folder names its class in ``config.json`` (``"module.QualName"``); ``load`` looks
    that name up in a fixed registry and never imports anything by name, so a file planted in
    a model folder cannot run. The library's estimators are registered already; register your
    own estimator once, where it is defined, to load it through a base class
    (``BioEstimator.load(folder)``). ``YourEstimator.load(folder)`` also works unregistered.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import BaseSelector, BioEstimator, register_estimator
    >>> @register_estimator
    ... class EveryOther(BaseSelector):
    ...     def __init__(self, n_select=2, random_state=None):
    ...         self.n_select = n_select
    ...         self.random_state = random_state
    ...     def _select(self, X, n_select, exclude, seed):
    ...         return np.flatnonzero(~exclude)[::2][:n_select]
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = EveryOther().fit(np.eye(6)).save(pathlib.Path(tmp.name) / "sel")
    >>> type(BioEstimator.load(folder)).__name__
    'EveryOther'
    >>> tmp.cleanup()
    """
    if not (isinstance(cls, type) and issubclass(cls, BioEstimator)):
        raise TypeError(f"register_estimator takes a BioEstimator subclass, got {cls!r}")
    name = _dotted(cls)
    old = _ESTIMATORS.get(name)
    if old is not None and old is not cls and old.__module__.startswith("biodatacentric."):
        # a library estimator is never replaced (re-running a notebook cell replaces its own class)
        raise ValueError(f"{name!r} is a biodatacentric estimator; give your class another name or module")
    _ESTIMATORS[name] = cls
    return cls


def registered_estimators() -> dict[str, type]:
    """A copy of the registry: ``{"module.QualName": class}`` of every loadable estimator."""
    return dict(_ESTIMATORS)


class BioEstimator(BaseEstimator):
    """Mixin for all biodatacentric estimators: fitted checks and save/load folders.

    Subclasses name the attribute that exists only after fitting in
    ``_fitted_attribute``. Fitted attributes (names ending in ``_``) are saved by type:
    NumPy arrays to ``arrays.npz``, torch modules (which carry a ``config`` dict and are
    registered in :mod:`biodatacentric.nn`) to ``weights/<name>.pt``, and JSON-able values to
    ``config.json``. Subclasses with other state override ``_save_extra``/``_load_extra``.

    Examples
    --------
    Every estimator of the library saves and loads the same way:

    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from biodatacentric import KCoverSelector
    >>> sel = KCoverSelector(n_select=2, random_state=0).fit(np.eye(5, dtype=np.float32))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = sel.save(pathlib.Path(tmp.name) / "selector")
    >>> again = KCoverSelector.load(folder)
    >>> again.n_select, bool(np.array_equal(again.selected_indices_, sel.selected_indices_))
    (2, True)
    >>> tmp.cleanup()
    """

    _fitted_attribute: str = ""

    # ------------------------------------------------------------------ fitted checks
    def __sklearn_is_fitted__(self) -> bool:
        """Fitted once ``fit`` set ``_fitted_attribute``; without one, once it set any public
        attribute ending in ``_`` (scikit-learn's own rule)."""
        if self._fitted_attribute:
            return hasattr(self, self._fitted_attribute)
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def __sklearn_clone__(self) -> "BioEstimator":
        """An unfitted copy with the same parameters; a fitted estimator passed as a parameter is kept.

        :func:`sklearn.base.clone` would otherwise clone, and so un-fit, the fitted segmenter of
        an :class:`~biodatacentric.MCDropoutHunter` or the fitted embedder of an
        :class:`~biodatacentric.RCAMonitor`. Like scikit-learn's ``FrozenEstimator``, a pre-fitted
        inner estimator is used as it is (the same object); every other parameter is cloned.
        """
        params = {}
        for key, value in self.get_params(deep=False).items():
            params[key] = value if _is_fitted_estimator(value) else clone(value, safe=False)
        return type(self)(**params)

    def _check_is_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator.")

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Save the fitted estimator to the folder ``path`` (written atomically).

        An existing biodatacentric save folder at ``path`` is replaced; any other existing
        folder raises ``FileExistsError`` and is left untouched.
        """
        self._check_is_fitted()

        params, unsaved = {}, []
        for key, value in self.get_params(deep=False).items():
            try:
                params[key] = to_jsonable(value)
            except TypeError:
                params[key] = None
                unsaved.append(key)
        fitted, arrays, modules = {}, {}, {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise TypeError(f"fitted attribute {key} is an object array and cannot be saved")
                arrays[key] = value
            elif isinstance(value, torch.nn.Module):
                modules[key] = value
            else:
                try:
                    fitted[key] = to_jsonable(value)
                except TypeError:
                    pass  # subclasses save such attributes in _save_extra
        config = {
            "format": MARKER,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": params,
            "unsaved_params": unsaved,
            "fitted": fitted,
            "modules": {k: {"class": module_name(m), "config": to_jsonable(m.config)}
                        for k, m in modules.items()},
            "versions": {"biodatacentric": _version(), "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
        }

        def fill(tmp: Path) -> None:
            if arrays:
                np.savez(tmp / "arrays.npz", **arrays)
            if modules:
                (tmp / "weights").mkdir()
                for key, module in modules.items():
                    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
                    torch.save(state, tmp / "weights" / f"{key}.pt")
            self._save_extra(tmp)
            (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

        return atomic_replace_dir(path, fill)

    @classmethod
    def load(cls, path: str | Path, **params_override: Any) -> "BioEstimator":
        """Rebuild an estimator saved with :meth:`save`.

        Parameters that could not be stored as JSON (modules, other estimators) come back
        as ``None`` unless given in ``params_override``. The class named in ``config.json`` is
        looked up in a fixed registry (the library's estimators, those registered with
        :func:`register_estimator`, and ``cls`` itself); nothing is imported by name and no
        code in the folder runs. Weights are read with ``torch.load(..., weights_only=True)``,
        arrays with ``allow_pickle=False``. A folder that is damaged, edited to another
        architecture or of another class raises an error naming the file.
        """
        path = Path(path)
        cfg_path = path / "config.json"
        if path.is_file():
            raise NotADirectoryError(f"{path} is a file, not a save folder; pass the folder written by save()")
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist; pass the folder written by save()")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{path} is not a biodatacentric save folder (no config.json)")
        config = _read_config(cfg_path)
        klass = _resolve_class(config["class"], cls, cfg_path)
        if not issubclass(klass, cls):
            raise TypeError(f"{path} holds a {klass.__name__}, not a {cls.__name__}; use {klass.__name__}.load")
        params = dict(config["params"])
        params.update(params_override)
        try:
            est = klass(**params)
        except TypeError as exc:
            raise ValueError(f"{cfg_path}: the saved parameters do not fit {klass.__name__} ({exc}); the file "
                             "was edited or written by another version") from None
        unsaved = set(config.get("unsaved_params", [])) - set(params_override)
        try:
            est._validate_params(skip=unsaved)
        except ValueError as exc:
            raise ValueError(f"{cfg_path}: {exc}") from None
        for key, value in config["fitted"].items():
            setattr(est, _fitted_name(key, cfg_path), value)
        npz_path = path / "arrays.npz"
        if npz_path.is_file():
            try:
                with np.load(npz_path, allow_pickle=False) as npz:
                    for key in npz.files:
                        setattr(est, _fitted_name(key, npz_path), npz[key])
            except (ValueError, OSError, EOFError) as exc:
                raise ValueError(f"could not read {npz_path} ({exc}); it is corrupt, or holds pickled objects "
                                 "that biodatacentric refuses to load") from None
            except Exception as exc:  # zipfile.BadZipFile and similar
                raise ValueError(f"could not read {npz_path} ({type(exc).__name__}: {exc}); it is corrupt") \
                    from None
        for key, spec in config["modules"].items():
            key = _fitted_name(key, cfg_path)
            weights = path / "weights" / f"{key}.pt"
            if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) \
                    or not isinstance(spec.get("config"), dict):
                raise ValueError(f"{cfg_path}: modules.{key} must hold a 'class' name and a 'config' dict")
            try:
                module = build_module(spec["class"], spec["config"])
            except Exception as exc:
                raise ValueError(f"{cfg_path}: cannot build module {key} ({spec['class']}) from its saved "
                                 f"config ({type(exc).__name__}: {exc}); the file was edited or written by "
                                 "another version") from None
            if not weights.is_file():
                raise FileNotFoundError(f"{weights} is missing: {cfg_path} lists the module {key}; copy the "
                                        "whole save folder")
            state = torch_load_safe(weights)
            _load_state_checked(module, state, weights, cfg_path)
            module.eval()
            setattr(est, key, module)
        est._load_extra(path, config)
        return est

    # ------------------------------------------------------------------ parameters
    #: ``{parameter: [constraint, ...]}``; see :mod:`biodatacentric._params`. A value is
    #: accepted when it satisfies any constraint of its list.
    _parameter_constraints: dict = {}

    def _validate_params(self, skip: Any = ()) -> None:
        """Check the parameters against ``_parameter_constraints`` (raises ``InvalidParameterError``,
        a ``ValueError`` and ``TypeError`` naming the parameter, the value and what is accepted)."""
        validate_params(self.get_params(deep=False), self._parameter_constraints, type(self).__name__, skip)

    def _save_extra(self, folder: Path) -> None:
        """Hook: write state that is neither an array, a module nor JSON."""

    def _load_extra(self, folder: Path, config: dict) -> None:
        """Hook: read what :meth:`_save_extra` wrote."""


def _read_config(cfg_path: Path) -> dict:
    """The parsed and shape-checked ``config.json`` of a save folder."""
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{cfg_path} is not UTF-8 text ({exc}); it is not a biodatacentric config") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
                         "restore the file from the original save folder") from None
    if not isinstance(config, dict) or config.get("format") != MARKER:
        raise ValueError(f"{cfg_path} was not written by biodatacentric's save()")
    expected = {"class": str, "params": dict, "fitted": dict}
    for key, typ in expected.items():
        if not isinstance(config.get(key), typ):
            raise ValueError(f"{cfg_path}: the entry {key!r} is missing or not a {typ.__name__}; the file was "
                             "edited or is damaged")
    config.setdefault("modules", {})
    if not isinstance(config["modules"], dict):
        raise ValueError(f"{cfg_path}: the entry 'modules' is not a dict; the file was edited or is damaged")
    return config


def _resolve_class(name: str, cls: type, cfg_path: Path) -> type:
    """The class ``name`` from the registry (or ``cls`` itself); never imports anything."""
    if name == _dotted(cls) and cls is not BioEstimator and not inspect.isabstract(cls):
        return cls  # the caller named the class: nothing to look up
    klass = _ESTIMATORS.get(name)
    if klass is None:
        raise ValueError(
            f"{cfg_path} names the class {name!r}, which is not a registered biodatacentric estimator. "
            "Nothing is imported from a save folder: if this is your own estimator, import the module that "
            "defines it and decorate the class with @biodatacentric.register_estimator (or call "
            "YourClass.load(...)); otherwise the file was edited")
    return klass


def _fitted_name(key: Any, where: Path) -> str:
    if not isinstance(key, str) or not _FITTED_NAME.match(key):
        raise ValueError(f"{where}: {key!r} is not a fitted attribute name (public, ending in '_'); the file "
                         "was edited or is damaged")
    return key


def _load_state_checked(module: torch.nn.Module, state: Any, weights: Path, cfg_path: Path) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error that names the files and tensors."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights} does not hold a state dict of tensors; the file was replaced or is damaged")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} in the weights, {tuple(own[k].shape)} in the config"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:4])}{'; ...' if len(shapes) > 4 else ''})")
        if missing:
            parts.append(f"{len(missing)} tensors missing from the weights (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        raise ValueError(
            f"{weights} does not fit the architecture described in {cfg_path}: {', '.join(parts)}. The config "
            "and the weights do not belong together (one of them was edited or copied from another model); "
            "restore the save folder as written by save()")
    module.load_state_dict(state, strict=True)


def _is_fitted_estimator(value: Any) -> bool:
    if inspect.isclass(value) or not isinstance(value, BaseEstimator):
        return False
    try:
        check_is_fitted(value)
    except NotFittedError:
        return False
    return True


def _version() -> str:
    return __version__


# ---------------------------------------------------------------------- selectors
class BaseSelector(BioEstimator, ABC):
    """Base class of core-set selectors working on an ``(n, d)`` embedding array.

    A subclass defines ``__init__`` (storing ``n_select``, ``random_state`` and its own
    parameters) and :meth:`_select`. :meth:`fit` validates the embeddings and the
    ``exclude`` set, calls the hook and stores ``selected_indices_`` in pick order.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric.base import BaseSelector
    >>> class FirstSelector(BaseSelector):
    ...     def __init__(self, n_select=2, random_state=None):
    ...         self.n_select = n_select
    ...         self.random_state = random_state
    ...     def _select(self, X, n_select, exclude, seed):
    ...         return np.flatnonzero(~exclude)[:n_select]
    >>> FirstSelector(n_select=2).fit(np.eye(4), exclude=[0]).selected_indices_
    array([1, 2])
    """

    _fitted_attribute = "selected_indices_"
    _parameter_constraints: dict = {"n_select": [Interval(Integral, 1, None)], "random_state": ["random_state"]}

    def fit(self, X: Any, y: None = None, *, exclude: Any = None) -> "BaseSelector":
        """Select ``n_select`` samples of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embeddings (finite values).
        y : None
            Ignored; present for scikit-learn compatibility.
        exclude : array-like of int or bool, optional
            Samples that must not be picked (already annotated, or flagged by
            :class:`~biodatacentric.DatasetAuditor`). They still count for coverage
            where the objective has a notion of coverage.
        """
        X, excl, n_select, seed = self._prepare_fit(X, exclude)
        return self._finish_fit(self._select(X, n_select, excl, seed), X, excl, n_select)

    def _prepare_fit(self, X: Any, exclude: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Validated parameters, float32 embeddings, the exclusion mask, ``n_select`` and the seed."""
        self._validate_params()
        X = check_embeddings(X)
        n = X.shape[0]
        excl = as_index_mask(exclude, n, name="exclude")
        n_select = getattr(self, "n_select")
        available = int(n - excl.sum())
        if n_select > available:
            raise ValueError(
                f"n_select={n_select} but only {available} of {n} samples can be picked "
                f"({int(excl.sum())} excluded); lower n_select")
        seed = check_random_state_int(getattr(self, "random_state", None))
        return X, excl, int(n_select), seed

    def _finish_fit(self, picks: Any, X: np.ndarray, excl: np.ndarray, n_select: int) -> "BaseSelector":
        """Check the picks of the hook and store the fitted attributes."""
        idx = np.asarray(picks, dtype=np.int64)
        if idx.shape != (n_select,) or len(np.unique(idx)) != n_select:
            raise RuntimeError(f"{type(self).__name__}._select must return {n_select} distinct indices")
        if np.any(excl[idx]):
            raise RuntimeError(f"{type(self).__name__}._select picked an excluded sample")
        self.selected_indices_ = idx
        self.n_features_in_ = X.shape[1]
        self.n_samples_fit_ = X.shape[0]
        return self

    @abstractmethod
    def _select(self, X: np.ndarray, n_select: int, exclude: np.ndarray, seed: int) -> np.ndarray:
        """Return ``n_select`` distinct indices into ``X`` in pick order.

        ``X`` is float32 ``(n, d)``; ``exclude`` a boolean mask of forbidden samples;
        ``seed`` an integer derived from ``random_state``.
        """


# ---------------------------------------------------------------------- hunters
class BaseHunter(BioEstimator, ABC):
    """Base class of mistake hunters that score every patch (high = look at it first).

    A subclass defines :meth:`_score_patches`; :meth:`fit` stores ``scores_`` and
    ``ranking_`` (descending score, ties broken by index).

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import Patches, make_vessels
    >>> from biodatacentric.base import BaseHunter
    >>> class DarkestHunter(BaseHunter):       # dim patches first
    ...     def _score_patches(self, patches):
    ...         return -patches.images().mean(axis=(1, 2))
    >>> img, _ = make_vessels((2, 64, 64), random_state=0)
    >>> hunter = DarkestHunter().fit(Patches.from_arrays([img], axes="ZYX", patch_shape=(32, 32)))
    >>> hunter.scores_.shape, hunter.select(3).shape
    ((8,), (3,))
    """

    _fitted_attribute = "scores_"

    def fit(self, patches: Patches | np.ndarray, y: None = None) -> "BaseHunter":
        """Score every patch of ``patches`` (a :class:`~biodatacentric.Patches`)."""
        self._validate_params()
        patches = as_patches(patches, name="patches")
        return self._finish_fit(self._score_patches(patches), patches)

    def _finish_fit(self, scores: Any, patches: Patches) -> "BaseHunter":
        """Check the scores of the hook and store ``scores_`` and ``ranking_``."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(patches),):
            raise RuntimeError(f"{type(self).__name__}._score_patches must return one score per patch")
        if not np.all(np.isfinite(scores)):
            raise RuntimeError(f"{type(self).__name__}._score_patches returned non-finite scores")
        self.scores_ = scores
        self.ranking_ = np.lexsort((np.arange(len(scores)), -scores)).astype(np.int64)
        return self

    @abstractmethod
    def _score_patches(self, patches: Patches) -> np.ndarray:
        """Return a float score per patch; larger means more likely wrong."""

    def select(self, n: int, exclude: Any = None) -> np.ndarray:
        """The ``n`` highest-scoring patch indices, skipping ``exclude``."""
        self._check_is_fitted()
        excl = as_index_mask(exclude, len(self.scores_), name="exclude")
        order = self.ranking_[~excl[self.ranking_]]
        if n > len(order):
            raise ValueError(f"n={n} but only {len(order)} patches are not excluded")
        return order[:n].copy()


# ---------------------------------------------------------------------- monitors
class BaseMonitor(BioEstimator, ABC):
    """Base class of quality monitors that estimate segmentation quality without ground truth.

    A subclass defines :meth:`_score` and, when it learns from annotated references,
    :meth:`_fit`. The public :meth:`fit` validates the references (a
    :class:`~biodatacentric.Patches` with masks, or an ``(images, masks)`` pair) and calls
    ``_fit``; the public :meth:`score` checks that the monitor is fitted and validates the
    image and the predicted mask before calling ``_score``.

    Attributes
    ----------
    n_references_ : int
        Number of reference patches :meth:`fit` saw; its presence is what
        :func:`sklearn.utils.validation.check_is_fitted` checks.

    Examples
    --------
    >>> import numpy as np
    >>> from biodatacentric import make_vessels
    >>> from biodatacentric.base import BaseMonitor
    >>> class ShareMonitor(BaseMonitor):        # flags masks whose foreground share is off
    ...     def _fit(self, images, masks):
    ...         self.share_ = float(np.mean(masks))
    ...     def _score(self, image, mask):
    ...         return {"passed": bool(abs(mask.mean() - self.share_) < 0.1)}
    >>> img, mask = make_vessels((3, 64, 64), random_state=0)
    >>> mon = ShareMonitor().fit((img, mask))
    >>> mon.score(img[0], mask[0])["passed"], mon.score(img[0], 1 - mask[0])["passed"]
    (True, False)
    """

    _fitted_attribute = "n_references_"

    def fit(self, references: Patches | tuple[np.ndarray, np.ndarray], y: None = None) -> "BaseMonitor":
        """Learn from annotated references.

        Parameters
        ----------
        references : Patches or (images, masks)
            A :class:`~biodatacentric.Patches` with masks, or a pair of ``(n, h, w)`` arrays
            (finite numeric images, binary masks of the same shape).
        y : None
            Ignored; present for scikit-learn compatibility.
        """
        self._validate_params()
        images, masks, _ = _as_references(references)
        self._fit(images, masks)
        self.n_references_ = int(len(images))
        return self

    def _fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Learn from float32 ``(n, h, w)`` reference images and uint8 binary masks.

        The default learns nothing (a monitor that needs no references).
        """

    def score(self, image: Any, predicted_mask: Any, axes: str = "YX") -> dict:
        """Estimate the quality of ``predicted_mask`` as a segmentation of ``image``.

        Parameters
        ----------
        image : array-like
            A 2-D image (``axes="YX"``) or a z-stack (``axes="ZYX"``), finite values.
        predicted_mask : array-like
            Binary mask of the same shape (0 = background, 1 = foreground).
        axes : {"YX", "ZYX"}
            Axis order of both arrays.
        """
        self._check_is_fitted()
        self._validate_params()
        img, mask = check_image_and_mask(image, predicted_mask, axes=axes)
        return self._score(img, mask)

    @abstractmethod
    def _score(self, image: np.ndarray, mask: np.ndarray) -> dict:
        """Score a validated float32 ``(Z, Y, X)`` image and uint8 ``(Z, Y, X)`` binary mask."""
