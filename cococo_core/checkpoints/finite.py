"""NaN / infinity checks on weights as they are read from a file.

One NaN in a U-Net weight spreads through every activation after it and the sampler returns a black (or
grey) masked region with no error. The readers in :mod:`.safe_load` call :func:`check_tensor` on each tensor
as it comes out of the file (streamed: the tensor is checked when it is read, not in a second pass over a
built model); modules that transformers / diffusers ``from_pretrained`` build from a folder are checked with
:func:`check_module`, once per tensor of the loaded state.
"""
from __future__ import annotations

import os

import torch

from .errors import NonFiniteWeightsError


def non_finite_count(tensor: torch.Tensor) -> int:
    """How many NaN / ±inf values ``tensor`` holds (0 for integer and boolean tensors)."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        return 0
    if tensor.is_meta or tensor.numel() == 0:
        return 0
    values = tensor if tensor.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) \
        else torch.view_as_real(tensor) if tensor.is_complex() else tensor.to(torch.float32)  # float8: few kernels
    low, high = torch.aminmax(values)  # both NaN when any value is NaN; one pass, no mask (~18x isfinite().all())
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return 0
    return int((~torch.isfinite(values)).sum())


def check_tensor(tensor: torch.Tensor, source: str | os.PathLike, name: str) -> torch.Tensor:
    """``tensor`` unchanged if every value is finite; else :class:`NonFiniteWeightsError` naming ``source``
    (the file) and ``name`` (the tensor's name in it)."""
    bad = non_finite_count(tensor)
    if bad:
        raise NonFiniteWeightsError(
            f"{source}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; the file is "
            "damaged or was saved from a diverged training run, and a model built from it would produce black "
            "or noise output. Use an intact copy of this model file")
    return tensor


def check_module(module: torch.nn.Module, source: str | os.PathLike) -> torch.nn.Module:
    """``module`` unchanged if every parameter and buffer is finite (a model that ``from_pretrained`` read
    from the folder ``source``); else :class:`NonFiniteWeightsError` naming the folder and the tensor."""
    for name, tensor in module.state_dict(keep_vars=True).items():
        check_tensor(tensor.detach(), source, name)
    return module
