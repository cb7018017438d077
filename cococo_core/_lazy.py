"""Lazy package exports (PEP 562 module ``__getattr__``): a public name is imported on first use, so
importing a package stays cheap and a missing optional dependency only fails the feature that needs it."""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__, __all__`` for ``package``; ``exports`` maps a public name to its module (relative)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, sorted(exports)
