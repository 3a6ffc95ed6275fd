"""Pure torch modules (no scikit-learn): ViT, MAE, TransUNet, and a registry to rebuild them.

Every module here stores its constructor arguments in ``self.config`` (a JSON-able dict) so
that estimators can save weights as plain state dicts and rebuild the module on load.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

_REGISTRY: dict[str, type] = {}

__all__ = ["register_module", "build_module", "module_name"]


def register_module(cls: type) -> type:
    """Class decorator: make ``cls`` rebuildable from ``(name, config)``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def module_name(module: torch.nn.Module) -> str:
    name = type(module).__name__
    if name not in _REGISTRY:
        raise TypeError(f"{name} is not a registered biodatacentric module and cannot be saved")
    if not hasattr(module, "config"):
        raise TypeError(f"{name} has no 'config' attribute and cannot be saved")
    return name


def build_module(name: str, config: dict[str, Any]) -> torch.nn.Module:
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown module class {name!r} in the save folder")
    return _REGISTRY[name](**config)


def _import_all() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
