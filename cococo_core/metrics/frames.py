"""Frames and masks as the metrics take them: ``(F, H, W, 3)`` float64 on [0, 255] and ``(F, H, W)`` in [0, 1].

uint8 input is read as [0, 255]; float input as [0, 1] (ComfyUI IMAGE, the pipelines' float output). Float
frames with NaN or infinite values are refused, naming the video and the frame: the published metric code
would let a NaN through (E2FGVI's ``calculate_psnr`` returns NaN, which its average spreads to the whole
dataset), and a clamp or a cap would turn it into a plausible number.
"""
from __future__ import annotations

import numpy as np
import torch


def _tensor(frames) -> torch.Tensor:
    if isinstance(frames, torch.Tensor):
        return frames.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(frames))


def as_frames(frames, *, name: str = "frames") -> torch.Tensor:
    """``(F, H, W, 3)`` float64 on [0, 255] from uint8 [0, 255] or float [0, 1] frames (a single (H, W, 3)
    frame becomes F = 1)."""
    tensor = _tensor(frames)
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[-1] < 3:
        raise ValueError(f"{name}: expected frames (F, H, W, 3), got shape {tuple(tensor.shape)}")
    tensor = tensor[..., :3]
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float64)
    tensor = tensor.to(torch.float64)
    finite = torch.isfinite(tensor).flatten(1).all(1)
    if not finite.all():
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"{name}: frame {bad[0]} (of {tensor.shape[0]}) has NaN or infinite values"
                         + (f", and {len(bad) - 1} more frame(s)" if len(bad) > 1 else "")
                         + "; metrics of such frames would be meaningless")
    return tensor.clamp(0, 1) * 255.0


def as_mask(mask, frames: int, height: int, width: int) -> torch.Tensor:
    """``(F, H, W)`` float64 in [0, 1] (1 = inpainted region); one (H, W) or (1, H, W) mask is used for every
    frame; uint8 masks are read as [0, 255]."""
    tensor = _tensor(mask)
    if tensor.dtype == torch.uint8:
        tensor = tensor.to(torch.float64) / 255.0
    tensor = tensor.to(torch.float64)
    if tensor.dim() == 4 and tensor.shape[-1] in (1, 3):
        tensor = tensor[..., 0]
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[1:] != (height, width) or tensor.shape[0] not in (1, frames):
        raise ValueError(f"mask of shape {tuple(tensor.shape)} does not fit {frames} frames of {width}x{height}")
    return tensor.expand(frames, height, width).clamp(0, 1)


def check_pair(first: torch.Tensor, second: torch.Tensor, what: str) -> None:
    if first.shape != second.shape:
        raise ValueError(f"{what}: the two videos differ in shape, {tuple(first.shape)} vs {tuple(second.shape)}")
