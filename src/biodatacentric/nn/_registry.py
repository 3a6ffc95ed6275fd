"""The registry of rebuildable torch modules (``register_module``, ``build_module``, ``module_name``).

It lives apart from ``nn/__init__.py`` so that the module files register themselves without
importing their own package; ``biodatacentric.nn`` imports them all, by a fixed list.
"""

from __future__ import annotations

from typing import Any

import torch

_REGISTRY: dict[str, type] = {}

__all__ = ["register_module", "build_module", "module_name"]


def register_module(cls: type) -> type:
    """Class decorator: make ``cls`` rebuildable from ``(name, config)``.

    The class must store its constructor arguments in ``self.config`` (a JSON-able dict).

    Examples
    --------
    >>> import torch
    >>> @register_module
    ... class ExampleScale(torch.nn.Module):
    ...     def __init__(self, factor: float = 2.0) -> None:
    ...         super().__init__()
    ...         self.config = dict(factor=factor)
    ...         self.factor = factor
    >>> rebuilt = build_module("ExampleScale", {"factor": 3.0})
    >>> type(rebuilt).__name__, rebuilt.factor
    ('ExampleScale', 3.0)
    """
    _REGISTRY[cls.__name__] = cls
    return cls


def module_name(module: torch.nn.Module) -> str:
    """The registry name under which ``module`` is saved (its class name).

    Raises ``TypeError`` when the class is not registered with :func:`register_module` or the
    instance has no ``config`` attribute, so it could not be rebuilt on load.

    Examples
    --------
    >>> import torch
    >>> from biodatacentric.nn.vit import ViTEncoder
    >>> module_name(ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2))
    'ViTEncoder'
    >>> module_name(torch.nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    TypeError: Linear is not a registered biodatacentric module and cannot be saved
    """
    name = type(module).__name__
    if name not in _REGISTRY:
        raise TypeError(f"{name} is not a registered biodatacentric module and cannot be saved")
    if not hasattr(module, "config"):
        raise TypeError(f"{name} has no 'config' attribute and cannot be saved")
    return name


def build_module(name: str, config: dict[str, Any]) -> torch.nn.Module:
    """A new, freshly initialised module of the registered class ``name``, built as ``cls(**config)``.

    Only classes in the registry can be built: the modules of :mod:`biodatacentric.nn` and
    those registered with :func:`register_module`. Nothing is imported by name; an unknown
    name raises ``ValueError``. Load the saved state dict into the result to restore the
    weights.

    Examples
    --------
    >>> from biodatacentric.nn.vit import ViTEncoder
    >>> enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    >>> copy = build_module(module_name(enc), enc.config)
    >>> copy.load_state_dict(enc.state_dict())
    <All keys matched successfully>
    >>> type(copy).__name__, copy.config == enc.config
    ('ViTEncoder', True)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown module class {name!r}: not one of the registered modules {sorted(_REGISTRY)}")
    return _REGISTRY[name](**config)
