"""Checkpoint I/O for SD-1.x: safe reading, LDM <-> diffusers key mapping, detection, component loading.

Names are resolved lazily so that reading a file does not import diffusers/transformers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": ".safe_load",
    "UnsafeCheckpointError": ".safe_load",
    "StateReader": ".safe_load",
    "load_state_dict": ".safe_load",
    "open_state": ".safe_load",
    "read_metadata": ".safe_load",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
