"""Sinusoidal position encodings of the CoCoCo motion module (spec §1.5).

``pe[p, 2i] = sin(p * 10000^(-2i/C))`` and ``pe[p, 2i+1] = cos(p * 10000^(-2i/C))``, computed in float32
exactly as the official ``PositionalEncoding`` buffer is (``arange * exp(arange(0, C, 2) * -ln(10000)/C)``)
and then cast to the working dtype, as the official buffer is when the model is cast. The values do not
depend on the official ``max_len`` (24/64 temporal, 4800/10000 DGA), so they are computed for any length
here instead of being loaded: the official limits (64 frames, 10000 DGA tokens) are lifted.
"""
from __future__ import annotations

import math

import torch


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """The (length, dim) float32 table on the CPU."""
    if dim % 2:
        raise ValueError(f"the position encoding needs an even channel count, got {dim}")
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


CACHE_SIZE = 16
_TABLES: dict[tuple, torch.Tensor] = {}


@torch.compiler.disable
def _build(key: tuple) -> torch.Tensor:
    """Compute and cache one table, always eagerly: under ``torch.compile`` a compiled sin/cos/exp may differ
    from ATen's by float32 ulps, which the arguments (up to ~10^4) amplify; the graph reads the cached table."""
    length, dim, device, dtype = key
    if len(_TABLES) >= CACHE_SIZE:
        del _TABLES[next(iter(_TABLES))]
    table = _TABLES[key] = sinusoidal_encoding(length, dim).to(device=device, dtype=dtype)
    return table


def position_encoding(length: int, dim: int, *, device, dtype) -> torch.Tensor:
    """The (length, dim) table on ``device`` in ``dtype`` (cached; never modify the result in place)."""
    key = (int(length), int(dim), torch.device(device), dtype)
    table = _TABLES.get(key)
    return table if table is not None else _build(key)
