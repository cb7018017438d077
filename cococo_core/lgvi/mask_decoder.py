"""LGVI removal-mask decoder (official ``rovi/models/mask_decoder.py``; spec §1.7).

Inputs: the outputs of the three cross-attention up blocks (after their upsamplers), coarse to fine.
Each ``MultiScaleProj`` is conv3x3 -> GN32 -> ReLU -> conv3x3 -> GN32 -> ReLU (per-frame convolutions
without bias; both GroupNorms pool each video's frames, as the official ``nn.GroupNorm`` on 5-D
tensors) -> temporal ``Conv1d(k=3)`` over frames per pixel -> GN32 over (C/G x F) per pixel -> ReLU. The first projection is upsampled x2
(nearest) before the concatenation with the next feature; a 1x1 ``final_conv`` and a sigmoid give the
mask at latent resolution. Frames are batched as (B*F); ``num_frames`` restores the video axis.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .video_norm import FramePooledGroupNorm

REDUCED_CHANNELS = 512


class MultiScaleProj(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.conv_temp = nn.Conv1d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.norm1 = FramePooledGroupNorm(32, channels_out)
        self.norm2 = FramePooledGroupNorm(32, channels_out)
        self.norm_temp = nn.GroupNorm(32, channels_out)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x), num_frames))
        x = F.relu(self.norm2(self.conv2(x), num_frames))
        frames_batch, channels, height, width = x.shape
        batch = frames_batch // num_frames
        # (B*F, C, H, W) -> (B*H*W, C, F): the official "b c f h w -> (b h w) c f"
        seq = x.view(batch, num_frames, channels, height, width).permute(0, 3, 4, 2, 1).reshape(-1, channels, num_frames)
        seq = F.relu(self.norm_temp(self.conv_temp(seq)))
        seq = seq.view(batch, height, width, channels, num_frames).permute(0, 4, 3, 1, 2)
        return seq.reshape(frames_batch, channels, height, width)


class MaskDecoder(nn.Module):
    def __init__(self, in_channels: list[int], reduced_channels: int = REDUCED_CHANNELS):
        super().__init__()
        self.projects = nn.ModuleList(
            MultiScaleProj(channels if i == 0 else reduced_channels + channels, reduced_channels)
            for i, channels in enumerate(in_channels)
        )
        self.final_conv = nn.Conv2d(reduced_channels, 1, 1)

    def forward(self, features: list[torch.Tensor], num_frames: int, *, logits: bool = False) -> torch.Tensor:
        """features: (B*F, C_i, H_i, W_i) coarse to fine -> mask probabilities (B*F, 1, H, W), or the
        pre-sigmoid logits with ``logits`` (training computes the cross-entropy from them, stably)."""
        x = features[0]
        for i, project in enumerate(self.projects):
            x = project(x, num_frames)
            if i + 1 < len(features):
                following = features[i + 1]
                if x.shape[-2:] != following.shape[-2:]:
                    # official: nearest x2 for the first level; an explicit size also covers odd latents
                    x = F.interpolate(x, size=following.shape[-2:], mode="nearest")
                x = torch.cat([x, following.to(x.dtype)], dim=1)
        out = self.final_conv(x)
        return out if logits else torch.sigmoid(out)
