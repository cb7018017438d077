"""Refuse NaN / infinity: a merge with one non-finite weight produces a model that renders black."""
from __future__ import annotations

from typing import Optional

import torch

from ..checkpoints.finite import non_finite_count


class NonFiniteError(ValueError):
    """An input tensor, a LoRA delta or a merged weight holds NaN or infinite values."""


def is_finite(tensor: torch.Tensor) -> bool:
    """True for non-floating tensors and for floating ones without NaN / ±inf."""
    return non_finite_count(tensor) == 0


def require_finite(tensor: torch.Tensor, what: str, dtype: Optional[torch.dtype] = None) -> None:
    """NonFiniteError naming ``what`` unless ``tensor`` (cast to ``dtype`` when given) is finite."""
    cast = tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)
    bad = non_finite_count(cast)
    if bad:
        where = "" if dtype is None or dtype == tensor.dtype else f" once stored as {str(dtype).replace('torch.', '')}"
        raise NonFiniteError(f"{what} holds {bad} NaN or infinite values{where}; nothing was merged")
