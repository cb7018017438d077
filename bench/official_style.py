"""An official-style CoCoCo U-Net step, for comparing with what users of the official code run.

The official code (``zibojia/COCOCO@9ebe984``, diffusers 0.11.1) computes the same function as the pack but
structures it differently; this module re-creates that structure on the pack's own modules and weights so
both can be timed side by side:

* every attention builds its score matrix explicitly: ``baddbmm(empty, q, kᵀ, beta=0, alpha=d^-½)``, softmax,
  ``bmm`` on (batch·heads, tokens, head_dim) tensors (``CrossAttention._attention`` of diffusers 0.11.1). For the
  spatial attention of the 2-D blocks that is diffusers' classic ``AttnProcessor``;
* the motion module's attentions follow ``cococo/models/motion_module.py``: ``Temporal_Self`` and
  ``Temporal_Text_Cross`` rearrange ``(b f) d c -> (b d) f c`` and add the ``PositionalEncoding`` buffer
  (``max_len`` 64); the text cross-attention repeats the prompt once per spatial location
  (``repeat(text, "b n c -> (b d) n c")``) and projects K/V for every copy; ``Temporal_Light_down_resize``
  (damped global attention) resizes to ``(12, int(12 / H * W))`` when H > 12, adds a ``max_len`` 10000 buffer;
* classifier-free guidance runs as two batch-1 U-Net calls per step (the pipeline's default branch).

Written from the official code's structure; nothing is imported from it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import types

import torch
import torch.nn.functional as F

from cococo_core.models.motion_attention import (
    DGA_HEIGHT,
    HEADS,
    DampedGlobalAttention,
    TemporalSelfAttention,
    TemporalTextCrossAttention,
)

TEMPORAL_MAX_LEN = 64
DGA_MAX_LEN = 10000


@functools.lru_cache(maxsize=None)
def _pe_buffer(max_len: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The official ``PositionalEncoding.pe`` buffer, (1, max_len, d_model)."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe.to(device, dtype)


def _add_pe(x: torch.Tensor, max_len: int) -> torch.Tensor:
    return x + _pe_buffer(max_len, x.shape[-1], x.device, x.dtype)[:, : x.shape[1]]


def _heads_to_batch(x: torch.Tensor) -> torch.Tensor:
    batch, tokens, dim = x.shape
    return x.reshape(batch, tokens, HEADS, dim // HEADS).permute(0, 2, 1, 3).reshape(batch * HEADS, tokens, dim // HEADS)


def _batch_to_heads(x: torch.Tensor) -> torch.Tensor:
    batch_heads, tokens, dim = x.shape
    batch = batch_heads // HEADS
    return x.reshape(batch, HEADS, tokens, dim).permute(0, 2, 1, 3).reshape(batch, tokens, dim * HEADS)


def _explicit_attention(layer, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """diffusers-0.11.1 ``CrossAttention``: projections, explicit score matrix, softmax, ``to_out``."""
    q = _heads_to_batch(layer.to_q(queries))
    k = _heads_to_batch(layer.to_k(context))
    v = _heads_to_batch(layer.to_v(context))
    empty = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device)
    scores = torch.baddbmm(empty, q, k.transpose(-1, -2), beta=0, alpha=q.shape[-1] ** -0.5)
    out = _batch_to_heads(torch.bmm(scores.softmax(dim=-1), v))
    return layer.to_out[1](layer.to_out[0](out))


def _per_location(hidden: torch.Tensor, frames: int) -> torch.Tensor:
    """``(b f) d c -> (b d) f c``."""
    frames_batch, tokens, dim = hidden.shape
    return hidden.reshape(frames_batch // frames, frames, tokens, dim).permute(0, 2, 1, 3).reshape(-1, frames, dim)


def _per_frame(hidden: torch.Tensor, tokens: int) -> torch.Tensor:
    """``(b d) f c -> (b f) d c``."""
    batch_tokens, frames, dim = hidden.shape
    return hidden.reshape(batch_tokens // tokens, tokens, frames, dim).permute(0, 2, 1, 3).reshape(-1, tokens, dim)


def temporal_self(self, hidden, geometry, text=None):
    seq = _add_pe(_per_location(hidden, geometry.frames), TEMPORAL_MAX_LEN)
    return _per_frame(_explicit_attention(self, seq, seq), hidden.shape[1])


def temporal_text_cross(self, hidden, geometry, text=None):
    tokens = hidden.shape[1]
    seq = _add_pe(_per_location(hidden, geometry.frames), TEMPORAL_MAX_LEN)
    repeated = text.to(hidden.dtype).repeat_interleave(tokens, dim=0)  # "b n c -> (b d) n c"
    return _per_frame(_explicit_attention(self, seq, repeated), tokens)


def damped_global(self, hidden, geometry, text=None):
    frames, height, width = geometry
    frames_batch, tokens, dim = hidden.shape
    batch = frames_batch // frames
    planes = hidden.reshape(frames_batch, height, width, dim).permute(0, 3, 1, 2)  # (b f) c w h
    if height > DGA_HEIGHT:
        grid = (DGA_HEIGHT, int(DGA_HEIGHT / height * width))
        planes = F.interpolate(planes, grid)
    else:
        grid = (height, width)
    seq = planes.reshape(batch, frames, dim, grid[0] * grid[1]).permute(0, 1, 3, 2).reshape(batch, -1, dim)
    out = _explicit_attention(self, *(_add_pe(seq, DGA_MAX_LEN),) * 2)
    planes = out.reshape(batch, frames, grid[0], grid[1], dim).permute(0, 1, 4, 2, 3).reshape(frames_batch, dim, *grid)
    if height > DGA_HEIGHT:
        planes = F.interpolate(planes, (height, width))
    return planes.permute(0, 2, 3, 1).reshape(frames_batch, tokens, dim)


_FORWARDS = {TemporalSelfAttention: temporal_self, TemporalTextCrossAttention: temporal_text_cross,
             DampedGlobalAttention: damped_global}


@contextlib.contextmanager
def official_structure(video_unet):
    """Run ``video_unet`` with the official code's attention structure inside the ``with`` block."""
    from diffusers.models.attention_processor import AttnProcessor  # noqa: PLC0415

    unet = video_unet.unet
    processors = unet.attn_processors
    patched = []
    try:
        unet.set_attn_processor(AttnProcessor())
        for module in unet.modules():
            forward = _FORWARDS.get(type(module))
            if forward is not None:
                module.forward = types.MethodType(forward, module)
                patched.append(module)
        yield video_unet
    finally:
        for module in patched:
            del module.forward
        unet.set_attn_processor(processors)


def guided_noise(video_unet, sample, timestep, negative, positive, guidance_scale):
    """Classifier-free guidance as the official pipeline's default branch: two batch-1 U-Net calls."""
    uncond = video_unet(sample, timestep, negative)
    cond = video_unet(sample, timestep, positive)
    return uncond + guidance_scale * (cond - uncond)
