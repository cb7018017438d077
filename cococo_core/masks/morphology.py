"""Mask post-processing on (F, H, W) tensors: boxes to masks, grow/shrink, hole filling, feathering, de-flicker.

All operations are exact and deterministic on binary input:

* :func:`grow` with ``pixels=N > 0`` dilates by a (2N+1)x(2N+1) square, so an axis-aligned square grows by exactly
  N pixels on each side; ``N < 0`` erodes by the same square (outside the frame counts as foreground, so a mask
  touching the border is not eaten from the border).
* :func:`fill_holes` sets every background pixel that is not 4-connected to the frame border.
* :func:`temporal_majority` keeps a pixel when it is set in more than half of the frames of a centred window
  (the window is cut at the clip ends), which removes one-frame flicker without moving stable edges.
* :func:`feather` blurs with a Gaussian of sigma ``radius / 3`` truncated at ``radius`` (the soft edge spans about
  ``radius`` pixels on each side of the original edge).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) float mask, 1 on every pixel whose centre lies inside one of the ``(n, 4)`` xyxy pixel boxes."""
    mask = torch.zeros(height, width)
    if boxes.numel() == 0:
        return mask
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    boxes = boxes.float().cpu()
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] <= boxes[:, 3:4])  # (n, H)
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] <= boxes[:, 2:3])  # (n, W)
    return (inside_y[:, :, None] & inside_x[:, None, :]).any(0).float()


def grow(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (``pixels > 0``) or erode (``pixels < 0``) (F, H, W) masks by a square of radius ``|pixels|``."""
    if pixels == 0:
        return masks
    radius = abs(int(pixels))
    x = masks[:, None].float()
    if pixels > 0:
        out = F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)
    else:  # erosion = complement of the dilated complement; max_pool pads with -inf, i.e. "outside = foreground"
        out = 1 - F.max_pool2d(1 - x, 2 * radius + 1, stride=1, padding=radius)
    return out[:, 0]


def _neighbours4(x: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x, (1, 1, 1, 1))
    return torch.maximum(torch.maximum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]),
                         torch.maximum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]))


def fill_holes(masks: torch.Tensor) -> torch.Tensor:
    """Fill background regions of (F, H, W) binary masks that do not touch the frame border (4-connectivity)."""
    solid = masks > 0.5
    background = ~solid
    reached = torch.zeros_like(solid)
    reached[:, 0, :], reached[:, -1, :], reached[:, :, 0], reached[:, :, -1] = (
        background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1])
    reached_f, background_f = reached.float(), background.float()
    count = reached_f.sum()
    while True:  # flood the background from the border; growth is monotone, so an unchanged count means done
        reached_f = torch.maximum(reached_f, _neighbours4(reached_f)) * background_f
        new_count = reached_f.sum()
        if new_count == count:
            return (reached_f < 0.5).float()
        count = new_count


def temporal_majority(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-pixel majority vote over frames ``t - radius .. t + radius`` (cut at the ends) of (F, H, W) masks."""
    if radius <= 0 or masks.shape[0] < 2:
        return masks
    binary = (masks > 0.5).float()
    frames = binary.shape[0]
    cumulative = torch.cat([torch.zeros_like(binary[:1]), binary.cumsum(0)])
    index = torch.arange(frames)
    lo, hi = (index - radius).clamp(min=0), (index + radius + 1).clamp(max=frames)
    votes = cumulative[hi] - cumulative[lo]
    counts = (hi - lo).float().view(-1, 1, 1)
    return (votes * 2 > counts).float()


def feather(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur (sigma = radius / 3, kernel 2*radius+1, edges replicated) of (F, H, W) masks."""
    if radius <= 0:
        return masks
    sigma = radius / 3.0
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets ** 2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(masks.device)
    x = masks[:, None].float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0].clamp(0, 1)

