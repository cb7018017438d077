"""Attention layers of the LGVI video U-Net (official ``rovi/models/attention.py``), frames batched as (B*F).

``VideoTransformer`` is the official ``Transformer3DModel`` (GroupNorm eps 1e-6, 1x1 conv ``proj_in`` /
``proj_out``, one block, residual). ``VideoTransformerBlock`` runs, pre-LayerNorm and residual each:

1. ``attn1``: spatial self-attention inside each frame;
2. ``attn2``: cross-attention to the text / MLLM context (repeated per frame, no mask);
3. ``attn_temp``: temporal self-attention, every spatial location attends over all F frames,
   x_p <- x_p + W_o MHA(LN(x_p)) with x_p in R^{F x C} (no positional encoding; spec §1.5-1.6);
4. ``ff``: GEGLU feed-forward (inner 4*dim).

State-dict names equal the official ones (diffusers ``Attention``: ``to_q/to_k/to_v`` without bias,
``to_out.0`` with bias). All attention goes through :func:`cococo_core.attention.attention`.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from ..attention import attention, merge_heads, split_heads


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention with the diffusers key layout."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None, upcast: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.upcast = upcast
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (split_heads(proj(src), self.heads) for proj, src in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        if self.upcast:
            out = attention(q.float(), k.float(), v.float()).to(x.dtype)
        else:
            out = attention(q, k, v)
        return self.to_out[0](merge_heads(out))


class VideoTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int, temporal: bool, upcast: bool = False):
        super().__init__()
        dim_head = dim // heads
        self.attn1 = Attention(dim, heads, dim_head, upcast=upcast)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        if temporal:
            self.attn_temp = Attention(dim, heads, dim_head, upcast=upcast)
            nn.init.zeros_(self.attn_temp.to_out[0].weight)  # official init: identity at start of training
            self.norm_temp = nn.LayerNorm(dim)
        else:
            self.attn_temp = None

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        if self.attn_temp is not None:
            x = temporal_residual(x, num_frames, lambda seq: self.attn_temp(self.norm_temp(seq)))
        return self.ff(self.norm3(x)) + x


def temporal_residual(x: torch.Tensor, num_frames: int, fn) -> torch.Tensor:
    """x + fn(x) where fn sees (B*tokens, F, C) sequences: one sequence per spatial location."""
    frames_batch, tokens, channels = x.shape
    batch = frames_batch // num_frames
    seq = x.view(batch, num_frames, tokens, channels).transpose(1, 2).reshape(batch * tokens, num_frames, channels)
    seq = fn(seq) + seq
    return seq.view(batch, tokens, num_frames, channels).transpose(1, 2).reshape(frames_batch, tokens, channels)


class VideoTransformer(nn.Module):
    """GroupNorm -> 1x1 proj_in -> block -> 1x1 proj_out -> + input, on (B*F, C, H, W) frames."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int, temporal: bool, upcast: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([VideoTransformerBlock(channels, heads, context_dim, temporal, upcast)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        frames_batch, channels, height, width = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(frames_batch, height * width, channels)
        for block in self.transformer_blocks:
            h = block(h, context, num_frames)
        h = h.reshape(frames_batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(h) + x
