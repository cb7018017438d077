"""GroupNorm over the frames of each video, as the official LGVI U-Net normalises (spec §1.4).

The official ``RoviModel`` keeps features as 5-D ``(b, c, f, h, w)`` tensors and applies a plain
``torch.nn.GroupNorm`` to them in every ResNet block (``norm1``, ``norm2``), in ``conv_norm_out`` and in
the mask decoder's ``norm1`` / ``norm2``. For group g of video b that is

    y = (x - mu_bg) / sqrt(var_bg + eps) * gamma_c + beta_c,

with mu_bg, var_bg (biased) taken over the C/G x F x H x W values of the group in **all frames of the
video together**, not per frame. (AnimateDiff's ``InflatedGroupNorm`` is the per-frame variant; LGVI
does not use it.) This port carries frames batched as (B*F, C, H, W), so :class:`FramePooledGroupNorm`
takes ``num_frames`` to restore the video axis. It subclasses ``nn.GroupNorm``: same parameters and
state-dict keys. Half-precision inputs are normalised in float32 (statistics accumulated in float32 on
every device) and cast back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_HALF = (torch.float16, torch.bfloat16)


class FramePooledGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` of each (C, F, H, W) video; ``forward(frames, num_frames)`` on (B*F, C, H, W)."""

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        frames_batch, channels = x.shape[:2]
        if frames_batch % num_frames:
            raise ValueError(f"{frames_batch} frames do not split into videos of {num_frames} frames")
        compute = torch.float32 if x.dtype in _HALF else x.dtype
        # (B*F, C, H, W) -> (B, C, F, H*W): a 3-D+ GroupNorm input whose trailing dims are one video's frames
        video = x.reshape(frames_batch // num_frames, num_frames, channels, -1).transpose(1, 2)
        weight = None if self.weight is None else self.weight.to(compute)
        bias = None if self.bias is None else self.bias.to(compute)
        out = F.group_norm(video.to(compute), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype).transpose(1, 2).reshape(x.shape)
