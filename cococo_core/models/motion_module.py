"""The CoCoCo motion module (``VanillaTemporalModule``, spec §1.3; paper Fig. 2b).

    module(x) = x + proj_out(Block(proj_in(GroupNorm_32,eps=1e-6(x) per frame)))
    Block(h):  h <- h + Attn_j(LayerNorm_j(h)) for j = Self, Self, DGA, TextCross;  h <- h + FF(LayerNorm_ff(h))
    FF = GEGLU(C -> 4C) then Linear(4C -> C)

Parameter names reproduce the official keys (``temporal_transformer.{norm, proj_in, proj_out,
transformer_blocks.0.{attention_blocks.N, norms.N, ff.net.0.proj, ff.net.2, ff_norm}}``, 40 tensors per module);
the position-encoding buffers of the official files are not parameters here (they are computed).
``proj_out`` is zero-initialised, as in the official constructor, so an unloaded module is the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .motion_attention import (
    DampedGlobalAttention,
    TemporalSelfAttention,
    TemporalTextCrossAttention,
    VideoGeometry,
)

GROUPS = 32


class GEGLU(nn.Module):
    """diffusers-0.11.1 GEGLU: ``proj`` to 2·inner, split [hidden, gate], hidden · GELU_exact(gate)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        if gate.device.type == "mps" and gate.dtype == torch.float16:  # as diffusers: MPS fp16 gelu in fp32
            return hidden * F.gelu(gate.float()).to(gate.dtype)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """``net = [GEGLU(C, 4C), Dropout(0), Linear(4C, C)]`` (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalTransformerBlock(nn.Module):
    """Four pre-LayerNorm attention residuals (Self, Self, DGA, TextCross) then the GEGLU feed-forward."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [
                TemporalSelfAttention(dim),
                TemporalSelfAttention(dim),
                DampedGlobalAttention(dim),
                TemporalTextCrossAttention(dim, context_dim=text_dim),
            ]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in self.attention_blocks])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, hidden: torch.Tensor, geometry: VideoGeometry, text: torch.Tensor | None) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            hidden = attn(norm(hidden), geometry, text) + hidden
        return self.ff(self.ff_norm(hidden)) + hidden


class TemporalTransformer3D(nn.Module):
    """GroupNorm per frame -> tokens (H·W row-major) -> proj_in -> block -> proj_out -> + input."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(dim, text_dim)])
        self.proj_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int, text: torch.Tensor | None) -> torch.Tensor:
        frames_batch, dim, height, width = x.shape
        hidden = self.norm(x).permute(0, 2, 3, 1).reshape(frames_batch, height * width, dim)
        hidden = self.proj_in(hidden)
        geometry = VideoGeometry(frames, height, width)
        for block in self.transformer_blocks:
            hidden = block(hidden, geometry, text)
        hidden = self.proj_out(hidden)
        return hidden.view(frames_batch, height, width, dim).permute(0, 3, 1, 2) + x


class MotionModule(nn.Module):
    """One CoCoCo motion module on (B·F, C, H, W) frames of B videos of ``frames`` frames each.

    ``text`` is the video-level prompt encoding (B, 77, text_dim), not repeated per frame.
    """

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        if dim % GROUPS:
            raise ValueError(f"a motion module needs channels divisible by {GROUPS} (GroupNorm), got {dim}")
        self.dim, self.text_dim = dim, text_dim
        self.temporal_transformer = TemporalTransformer3D(dim, text_dim)

    def forward(self, x: torch.Tensor, *, frames: int, text: torch.Tensor | None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] % frames:
            raise ValueError(f"expected (batch*{frames} frames, C, H, W) features, got {tuple(x.shape)}")
        return self.temporal_transformer(x, frames, text).contiguous()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, text_dim={self.text_dim}"
