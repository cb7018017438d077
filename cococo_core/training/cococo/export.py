"""Writing trained motion modules in the two layouts the pack (and the official code) load.

* the official layout (cococo-official.md §2.2): ``model_0.pth … model_3.pth``, plain ``{key: tensor}`` pickles
  (readable with ``torch.load(weights_only=True)``), every key prefixed ``module.`` as written from a DDP-wrapped
  module (the official loader keeps the text after the first ``module.``, so the prefix is required), the keys
  split over the four files in order. No ``pos_encoder.pe`` buffers: the official loader drops them anyway.
* the pack's single ``.safetensors`` (``cococo_core.models.save_motion_safetensors``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ...models.motion_weights import save_motion_safetensors

OFFICIAL_PARTS = 4
SAFETENSORS_NAME = "cococo_motion.safetensors"
OFFICIAL_FOLDER = "official"


def save_official(state: Mapping[str, torch.Tensor], folder: Path, parts: int = OFFICIAL_PARTS,
                  dtype: torch.dtype | None = None) -> list[Path]:
    """``model_0..{parts-1}.pth`` in ``folder``; refuses to overwrite existing files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"model_{i}.pth" for i in range(parts)]
    existing = [p.name for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{folder} already holds {existing}; choose another output folder")
    keys = list(state)
    size = -(-len(keys) // parts)
    for i, path in enumerate(paths):
        chunk = keys[i * size:(i + 1) * size]
        torch.save({"module." + k: _cast(state[k], dtype) for k in chunk}, path)
    return paths


def _cast(tensor: torch.Tensor, dtype) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    return (tensor.to(dtype) if dtype is not None else tensor).contiguous().clone()


def save_both(state: Mapping[str, torch.Tensor], folder: Path, dtype: torch.dtype | None = None) -> list[Path]:
    """``folder/official/model_0..3.pth`` (copy that folder to ``models/cococo/<name>/``) and
    ``folder/cococo_motion.safetensors`` (copy it to ``models/cococo/``)."""
    target = folder / SAFETENSORS_NAME
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another output folder")
    paths = save_official(state, folder / OFFICIAL_FOLDER, dtype=dtype)
    paths.append(save_motion_safetensors({k: _cast(v, None) for k, v in state.items()}, target, dtype=dtype))
    return paths
