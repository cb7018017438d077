"""Frame tensors in and out of the LGVI pipelines.

Frames travel as (F, H, W, 3) float tensors in [0, 1] (ComfyUI's IMAGE layout; uint8 arrays are
accepted too). The model works at a size whose sides are multiples of 8 (the VAE's factor); the
official code bilinearly resizes every frame to 512x320 ignoring the aspect ratio (spec §1.1), which
``size=(512, 320)`` reproduces. Results can be resized back to the input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import validation

OFFICIAL_SIZE = (512, 320)  # (width, height)


def as_frames(frames) -> torch.Tensor:
    """(F, H, W, 3) float32 in [0, 1] from a tensor/array (float in [0, 1] or uint8), checked by
    :func:`cococo_core.validation.frames`."""
    return validation.to_float(validation.frames(frames, "frames", single_image=True))


def work_size(height: int, width: int, size: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) the model runs at: ``size`` = (width, height) if given, else the input rounded to multiples of 8."""
    if size is not None:
        width, height = size
        if width % 8 or height % 8 or width < 8 or height < 8:
            raise ValueError(f"working size must be positive multiples of 8, got {width}x{height}")
        return height, width
    return max(8, int(round(height / 8)) * 8), max(8, int(round(width / 8)) * 8)


def resize(frames_nchw: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    if tuple(frames_nchw.shape[-2:]) == (height, width):
        return frames_nchw
    return F.interpolate(frames_nchw, size=(height, width), mode=mode, align_corners=False, antialias=True)


def to_model_input(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1] -> (F, 3, height, width) in [-1, 1]."""
    return resize(frames.permute(0, 3, 1, 2), height, width) * 2.0 - 1.0


def from_model_output(decoded: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(F, 3, h, w) in [-1, 1] -> (F, height, width, 3) in [0, 1] (official ``(x/2+0.5).clamp(0,1)``)."""
    images = (decoded.float() / 2 + 0.5).clamp(0, 1)
    return resize(images, height, width).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
