"""The LGVI ResNet block (official ``ResnetBlock3D``, ``rovi/models/resnet.py``; spec §1.4), on frames
batched as (B*F, C, H, W).

GN -> SiLU -> conv3x3 -> + time_emb_proj(SiLU(temb)) -> GN -> SiLU -> dropout -> conv3x3, plus a 1x1
``conv_shortcut`` when the channel count changes, divided by ``output_scale_factor``. The official
convolutions are per-frame ``Conv2d`` (``InflatedConv3d``); both GroupNorms pool the statistics over
all frames of the video (:class:`~.video_norm.FramePooledGroupNorm`). State-dict keys are the official
(and diffusers ``ResnetBlock2D``) ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .video_norm import FramePooledGroupNorm


class VideoResnetBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = FramePooledGroupNorm(groups, channels_in, eps=eps)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, channels_out)
        self.norm2 = FramePooledGroupNorm(groups, channels_out, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (B*F, C_in, H, W); temb: (B*F, temb_channels) (the video's embedding repeated per frame)."""
        h = self.conv1(F.silu(self.norm1(x, num_frames)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h, num_frames))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor
