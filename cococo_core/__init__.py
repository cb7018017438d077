"""cococo_core: CoCoCo and LGVI video inpainting as a plain torch/diffusers library.

Nothing here imports ComfyUI. Public names are resolved lazily so that ``import cococo_core``
stays cheap and a missing optional dependency only fails the feature that needs it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> defining module (relative to this package)
_EXPORTS = {
    "Cancelled": ".hooks",
    "attention_backend": ".attention",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cococo_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
