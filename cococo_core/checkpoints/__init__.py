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
    "KeyMapping": ".ldm_keys",
    "LDMConversion": ".ldm_keys",
    "SDKeyMap": ".ldm_keys",
    "UNetKeyMap": ".ldm_keys",
    "VAEKeyMap": ".ldm_keys",
    "UnknownKeyError": ".ldm_keys",
    "diffusers_to_ldm": ".ldm_keys",
    "ldm_to_diffusers": ".ldm_keys",
    "ema_key": ".ldm_keys",
    "CheckpointInfo": ".detect",
    "detect_checkpoint": ".detect",
    "detect_state": ".detect",
    "require_sd1": ".detect",
    "SDComponents": ".base",
    "SDState": ".base",
    "load_sd_components": ".base",
    "load_sd_state": ".base",
    "load_tokenizer": ".base",
    "SDStream": ".stream",
    "open_sd": ".stream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
