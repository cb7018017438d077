"""Multi-head attention kernels behind one signature.

``attention(q, k, v)`` takes (batch, heads, tokens, head_dim) tensors and returns the same layout.
Backends:

* ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention``; flash / memory-efficient
  kernels where torch has them, so no (tokens x tokens) score matrix is materialised.
* ``"xformers"``: ``xformers.ops.memory_efficient_attention``; used only when it imports and the
  tensors are on CUDA (it has no CPU kernels), otherwise SDPA is used.
* ``"naive"``: the explicit score matrix ``softmax(q k^T / sqrt(d)) v`` in the working dtype, which is
  how the official CoCoCo code (diffusers 0.11.1 ``CrossAttention``, baddbmm + softmax) computes it.
  Kept as the reference for tests and benchmarks.

The backend is chosen per call (``backend=``) or process-wide with :func:`attention_backend`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "xformers", "naive")
_state = {"backend": os.environ.get("COCOCO_ATTENTION", "sdpa")}
# CUDA kernels launch one block per (batch x head); past 65535 some kernels fail to launch.
_CUDA_MAX_BATCH_HEADS = 65535


def get_attention_backend() -> str:
    return _state["backend"]


@contextlib.contextmanager
def attention_backend(name: str):
    """Use backend ``name`` inside the ``with`` block (``set_attention_backend`` sets it for good)."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        _state["backend"] = previous


def set_attention_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _state["backend"] = name


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    try:
        import xformers.ops  # noqa: PLC0415 - optional extra
    except Exception as error:  # ImportError, or a build that does not match this torch
        logger.info("xformers is not usable (%s); using torch SDPA", error)
        return None
    return xformers.ops


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(scores.softmax(dim=-1), v)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _xformers(q, k, v):
    ops = _xformers_ops()
    if ops is None or not q.is_cuda:
        return _sdpa(q, k, v)
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


_KERNELS = {"sdpa": _sdpa, "xformers": _xformers, "naive": naive_attention}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Softmax attention of (batch, heads, Lq, d) queries over (batch, heads, Lk, d) keys/values."""
    kernel = _KERNELS[backend or get_attention_backend()]
    batch, heads = q.shape[:2]
    if not q.is_cuda or batch * heads <= _CUDA_MAX_BATCH_HEADS:
        return kernel(q, k, v)
    step = max(1, _CUDA_MAX_BATCH_HEADS // heads)
    return torch.cat([kernel(q[i : i + step], k[i : i + step], v[i : i + step]) for i in range(0, batch, step)])


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads*d) -> (batch, heads, tokens, d)."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, d) -> (batch, tokens, heads*d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)
