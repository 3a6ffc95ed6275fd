"""Pure torch modules (no scikit-learn): ViT, MAE, TransUNet, and a registry to rebuild them.

Every module here stores its constructor arguments in ``self.config`` (a JSON-able dict) so
that estimators can save weights as plain state dicts and rebuild the module on load.
"""

from __future__ import annotations

# the library's modules register themselves on import, by this fixed list (never a directory listing)
from . import mae, transunet, vit  # noqa: F401
from ._registry import _REGISTRY, build_module, module_name, register_module  # noqa: F401

__all__ = ["register_module", "build_module", "module_name"]
