"""Background preservation: put the original pixels back outside the (grown, feathered) hole.

The official code returns every pixel from the VAE/model (cococo-official.md §3.6), so even
untouched background changes. Here the blend weight is

    alpha = box_blur_r( dilate_{d + r}(m > 0) ),   r = feather // 2

which is exactly 1 within ``dilate`` pixels of the hole, ramps linearly to 0 over the next
``feather`` pixels and is exactly 0 beyond, where the original pixel is returned unchanged
(bit-identical, selected with ``where``, not computed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks.morphology import grow


def paste_weights(mask: torch.Tensor, *, dilate: int = 8, feather: int = 8) -> torch.Tensor:
    """(F, H, W) mask in [0, 1] -> (F, H, W) blend weight of the generated frames."""
    if dilate < 0 or feather < 0:
        raise ValueError(f"paste-back dilate and feather must be >= 0, got {dilate} and {feather}")
    radius = feather // 2
    hole = grow((mask > 0).to(torch.float32), dilate + radius)
    if radius == 0:
        return hole
    blurred = F.avg_pool2d(hole[:, None], 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)[:, 0]
    return torch.where(hole > 0, blurred, torch.zeros_like(blurred))


def paste_back(original: torch.Tensor, generated: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Blend (F, H, W, 3) frames of the same dtype (uint8 or float); pixels with weight 0 are ``original``'s."""
    if original.shape != generated.shape or original.dtype != generated.dtype:
        raise ValueError(f"paste-back needs frames of one shape and dtype, got {tuple(original.shape)} {original.dtype} "
                         f"and {tuple(generated.shape)} {generated.dtype}")
    alpha = weights[..., None]
    blend = original.to(torch.float32) * (1 - alpha) + generated.to(torch.float32) * alpha
    if original.dtype == torch.uint8:
        blend = blend.round().clamp(0, 255)
    return torch.where(alpha > 0, blend.to(original.dtype), original)
