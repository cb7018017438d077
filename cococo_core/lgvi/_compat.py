"""Safe tensor-file loading for the LGVI package.

Uses the shared ``cococo_core.checkpoints.safe_load.load_state_dict`` when it is present; this
fallback does the same: safetensors, or ``torch.load(..., weights_only=True)`` for pickles
(checkpoints are untrusted and never unpickled otherwise).
"""
from __future__ import annotations

import os

import torch


def load_tensor_file(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        from ..checkpoints.safe_load import load_state_dict  # noqa: PLC0415 - shared loader, when available
    except ImportError:
        load_state_dict = None
    if load_state_dict is not None:
        return load_state_dict(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # noqa: PLC0415

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
