"""SAM 2's hole filling of low-resolution mask logits (``sam2/utils/misc.py`` ``fill_holes_in_mask_scores``).

The official video predictor fills the background components (``logit <= 0``, 8-connected) of at most
``fill_hole_area`` = 8 pixels with the logit 0.1 before resizing masks to the video (``build_sam.py``:
``++model.fill_hole_area=8``). It finds components with a CUDA kernel; this is the same rule in plain torch:

labels are propagated by 3x3 max pooling over background pixels for ``max_area`` rounds. A component of at most
``max_area`` pixels spans at most ``max_area - 1`` steps, so after that many rounds all its pixels carry one label
and no other background pixel does; a set of pixels sharing a label is such a whole component exactly when it has
at most ``max_area`` pixels and no background neighbour with another label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

HOLE_LOGIT = 0.1


def small_background_components(masks: torch.Tensor, max_area: int) -> torch.Tensor:
    """bool like ``masks`` ((N, 1, H, W) logits): background pixels in 8-connected components of <= max_area px."""
    background = masks <= 0
    n, _, height, width = masks.shape
    index = torch.arange(1, height * width + 1, device=masks.device, dtype=torch.float64).view(1, 1, height, width)
    labels = torch.where(background, index.expand(n, 1, height, width), torch.zeros((), dtype=torch.float64,
                                                                                  device=masks.device))
    for _ in range(max_area):
        labels = torch.where(background, F.max_pool2d(labels, 3, stride=1, padding=1), labels)
    labels = labels.long()
    flat = labels.view(n, -1)
    size = height * width + 1
    counts = torch.zeros(n, size, dtype=torch.long, device=masks.device).scatter_add_(
        1, flat, torch.ones_like(flat))
    # a background neighbour with another label: the 3x3 max and min of neighbouring background labels differ
    # from one's own (foreground neighbours do not count: max-pool over labels with foreground as 0 / +inf)
    big = float(size + 1)
    neighbour_max = F.max_pool2d(labels.double(), 3, stride=1, padding=1)
    as_min = torch.where(background, labels.double(), torch.full_like(labels, size + 1, dtype=torch.float64))
    neighbour_min = -F.max_pool2d(-as_min, 3, stride=1, padding=1)
    leaks = background & ((neighbour_max != labels) | ((neighbour_min != labels) & (neighbour_min < big)))
    leaked = torch.zeros(n, size, dtype=torch.long, device=masks.device).scatter_add_(
        1, flat, leaks.view(n, -1).long())
    small = (counts <= max_area) & (leaked == 0)
    small[:, 0] = False
    return torch.gather(small, 1, flat).view_as(masks) & background


def fill_small_holes(masks: torch.Tensor, max_area: int = 8) -> torch.Tensor:
    """``masks`` (N, 1, H, W) logits with background components of <= ``max_area`` pixels set to 0.1."""
    if max_area <= 0:
        return masks
    holes = small_background_components(masks, max_area)
    return torch.where(holes, torch.tensor(HOLE_LOGIT, dtype=masks.dtype, device=masks.device), masks)
