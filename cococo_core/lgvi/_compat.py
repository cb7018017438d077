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


def read_weight_folder(folder: str, index_names: tuple[str, ...], file_names: tuple[str, ...]) -> dict:
    """All tensors of a model folder: the shards listed in the first index file found (``weight_map``),
    else the first single weights file found."""
    import json  # noqa: PLC0415

    for name in index_names:
        index_path = os.path.join(folder, name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            state = {}
            for shard in shards:
                if os.path.basename(shard) != shard:  # untrusted index: no paths outside the folder
                    raise ValueError(f"{index_path}: shard name {shard!r} must be a plain file name")
                state.update(load_tensor_file(os.path.join(folder, shard)))
            return state
    for name in file_names:
        if os.path.isfile(os.path.join(folder, name)):
            return load_tensor_file(os.path.join(folder, name))
    raise FileNotFoundError(f"no weights in {folder} (looked for {', '.join(index_names + file_names)})")
