"""The three attention types of the CoCoCo motion block (spec §1.3-§1.4; paper "Better Motion Module Design").

Every block sees the LayerNorm output ``n`` as (B·F, H·W, C) tokens, row-major over (H, W), and returns a
tensor of the same shape that the block adds to its residual. All use 8 heads of width C/8, ``to_q/to_k/to_v``
without bias and ``to_out.0`` with bias (diffusers-0.11.1 ``CrossAttention`` names, so the official state-dict
keys load as they are), and run through :func:`cococo_core.attention.attention`.

* :class:`TemporalSelfAttention` ("Temporal_Self"): per spatial location, attention over the F frames, with the
  frame-index sinusoidal encoding added to q, k and v's input.
* :class:`DampedGlobalAttention` ("Temporal_Light_down_resize", paper Eq. 2): nearest-resize each frame to
  ``dga_grid(H, W)``, attend over all F·h'·w' tokens of one video with a 1-D encoding of the flattened
  (frame, row, col) position, nearest-resize back.
* :class:`TemporalTextCrossAttention` ("Temporal_Text_Cross"): every (frame, location) token, with the frame
  encoding on the query only, attends to the video's text tokens. The official code repeats the text once per
  location; K and V are computed once per video here, which gives the same numbers.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention, merge_heads, split_heads
from .position import position_encoding

HEADS = 8
DGA_HEIGHT = 12


class VideoGeometry(NamedTuple):
    """What a motion block needs to know about the (B·F, H·W, C) tokens it gets."""

    frames: int
    height: int
    width: int


def dga_grid(height: int, width: int, damped_height: int | None = DGA_HEIGHT) -> tuple[int, int]:
    """The grid damped global attention works on for a (height, width) latent level.

    Official rule (``motion_module.py:614-618``): only when the *height* exceeds 12, resize to
    ``(12, int(12 / H * W))`` computed in Python floats (float64, truncated): 64x64 -> 12x12, 45x80 -> 12x21,
    96x64 -> 12x8, 12x20 and 8x8 unchanged. Where the official width would truncate to 0 (W < H/12, where the
    official code crashes) one column is used. ``damped_height=None`` never resizes (full 3-D attention).
    """
    if damped_height is None or height <= damped_height:
        return height, width
    return damped_height, max(1, int(damped_height / height * width))


class _MotionAttention(nn.Module):
    """Projections shared by the three types; ``context_dim`` is the width K/V are projected from."""

    def __init__(self, dim: int, context_dim: int | None = None):
        super().__init__()
        if dim % HEADS:
            raise ValueError(f"motion attention needs channels divisible by {HEADS} heads, got {dim}")
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def _attend(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Multi-head softmax attention of (N, Lq, C) query inputs over (N, Lk, C') context, then ``to_out``."""
        q = split_heads(self.to_q(queries), HEADS)
        k = split_heads(self.to_k(context), HEADS)
        v = split_heads(self.to_v(context), HEADS)
        out = merge_heads(attention(q, k, v))
        return self.to_out[1](self.to_out[0](out))


def _with_encoding(tokens: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """``tokens + pe[position]`` as a new contiguous tensor, channels last, with the position running over the
    axes ``start:stop`` (default: one axis) flattened row-major. ``tokens`` may be a permuted view: the layout
    change and the add are then one pass (``add(..., out=)``) instead of a copy followed by an add (when no
    gradient is recorded: ``out=`` is not differentiable). Under ``torch.compile`` the plain add is used: the
    compiler fuses the add and the copy itself, and does not keep the layout of an ``out=`` buffer."""
    stop = start + 1 if stop is None else stop
    positions, dim = tokens.shape[start:stop], tokens.shape[-1]
    table = position_encoding(math.prod(positions), dim, device=tokens.device, dtype=tokens.dtype)
    table = table.view(*positions, *[1] * (tokens.dim() - 1 - stop), dim)
    if (torch.is_grad_enabled() and tokens.requires_grad) or torch.compiler.is_compiling():
        return (tokens + table).contiguous()
    return torch.add(tokens, table, out=torch.empty(tokens.shape, device=tokens.device, dtype=tokens.dtype))


class TemporalSelfAttention(_MotionAttention):
    """Attention over the frames of each spatial location; PE[0:F] added to the input of q, k and v."""

    def forward(self, hidden: torch.Tensor, geometry: VideoGeometry, text: torch.Tensor | None = None) -> torch.Tensor:
        frames_batch, tokens, dim = hidden.shape
        batch = frames_batch // geometry.frames
        # (b f) d c -> (b d) f c, + PE[f]
        seq = _with_encoding(hidden.view(batch, geometry.frames, tokens, dim).transpose(1, 2), 2)
        seq = seq.view(batch * tokens, geometry.frames, dim)
        out = self._attend(seq, seq)
        return out.view(batch, tokens, geometry.frames, dim).transpose(1, 2).reshape(frames_batch, tokens, dim)


class DampedGlobalAttention(_MotionAttention):
    """Damped global attention (DGA): full spatio-temporal attention on a grid damped to height 12.

    ``damped_height`` (class default 12, the official value) may be set to None on an instance to get full
    3-D attention over all F·H·W tokens, the variant the paper compares against (Fig. 5).
    """

    damped_height: int | None = DGA_HEIGHT

    def forward(self, hidden: torch.Tensor, geometry: VideoGeometry, text: torch.Tensor | None = None) -> torch.Tensor:
        frames_batch, tokens, dim = hidden.shape
        frames, height, width = geometry
        batch = frames_batch // frames
        grid = dga_grid(height, width, self.damped_height)
        resized = grid != (height, width)
        planes = hidden.view(frames_batch, height, width, dim).permute(0, 3, 1, 2)
        if resized:
            planes = F.interpolate(planes, size=grid, mode="nearest")
        # (b f) c h' w' -> b (f h' w') c, position = f*h'*w' + row*w' + col
        seq = _with_encoding(planes.permute(0, 2, 3, 1).view(batch, frames, grid[0], grid[1], dim), 1, 4)
        seq = seq.view(batch, frames * grid[0] * grid[1], dim)
        out = self._attend(seq, seq)
        planes = out.view(frames_batch, grid[0], grid[1], dim).permute(0, 3, 1, 2)
        if resized:
            planes = F.interpolate(planes, size=(height, width), mode="nearest")
        return planes.permute(0, 2, 3, 1).reshape(frames_batch, tokens, dim)


class TemporalTextCrossAttention(_MotionAttention):
    """Each (frame, location) token, plus PE[frame] on the query only, attends to the video's text tokens."""

    def forward(self, hidden: torch.Tensor, geometry: VideoGeometry, text: torch.Tensor | None = None) -> torch.Tensor:
        if text is None:
            raise ValueError("the motion module's text cross-attention needs encoder_hidden_states (the prompt)")
        frames_batch, tokens, dim = hidden.shape
        batch = frames_batch // geometry.frames
        if text.shape[0] != batch:
            raise ValueError(f"text batch {text.shape[0]} does not match the video batch {batch}")
        queries = _with_encoding(hidden.view(batch, geometry.frames, tokens, dim), 1)  # PE[f] on the queries only
        out = self._attend(queries.reshape(batch, geometry.frames * tokens, dim), text.to(hidden.dtype))
        return out.view(frames_batch, tokens, dim)
