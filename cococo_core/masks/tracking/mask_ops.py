"""The two mask operations SAM 3's video post-processing needs, in plain torch: greedy NMS over a mask-IoU matrix and
8-connected component labelling with per-pixel component areas.

transformers' ``Sam3VideoModel`` takes them from a kernel it downloads from the Hugging Face Hub at run time
(``kernels-community/cv-utils``); without it, it silently skips detection NMS, hole filling and sprinkle removal,
which the official ``sam3`` package always runs (on the CPU: ``sam3/perflib/nms.py:generic_nms_cpu`` and
``sam3/perflib/connected_components.py`` via ``skimage.measure.label``, whose default 2-D connectivity is 8).
:func:`install` puts :class:`LocalMaskOps` into that slot, so the pack never fetches code and matches the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def greedy_nms(ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy NMS: take the best remaining score, drop every other detection whose IoU with it
    exceeds ``iou_threshold``, repeat (``generic_nms_cpu``: keep those with IoU <= threshold)."""
    order = torch.argsort(scores.float(), descending=True, stable=True).tolist()
    ious = ious.float().cpu()
    kept: list[int] = []
    while order:
        best = order[0]
        kept.append(best)
        order = [i for i in order[1:] if ious[best, i] <= iou_threshold]
    return torch.tensor(kept, dtype=torch.int64, device=scores.device)


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, areas) for a (B, 1, H, W) mask: 8-connected foreground components get one label each (background
    0) and every foreground pixel the pixel count of its component (background 0).

    Labels spread by repeated 3x3 max-pooling restricted to the foreground until nothing changes, so each component
    ends with the largest start index among its pixels, which names it uniquely."""
    foreground = mask.bool()
    batch, _, height, width = foreground.shape
    start = torch.arange(1, height * width + 1, dtype=torch.float32, device=mask.device)
    labels = torch.where(foreground, start.view(1, 1, height, width), torch.zeros((), device=mask.device))
    while True:
        spread = torch.where(foreground, F.max_pool2d(labels, 3, stride=1, padding=1), labels)
        if torch.equal(spread, labels):
            break
        labels = spread
    labels = labels.long()
    areas = torch.zeros_like(labels)
    for b in range(batch):
        flat = labels[b].flatten()
        counts = torch.bincount(flat, minlength=height * width + 1)
        counts[0] = 0
        areas[b] = counts[flat].view(1, height, width)
    return labels.to(torch.int32), areas.to(torch.int32)


class LocalMaskOps:
    """Stands in for the ``cv-utils`` Hub kernel with the interface transformers calls."""

    @staticmethod
    def generic_nms(ious, scores, iou_threshold, use_iou_matrix=True):
        return greedy_nms(ious, scores, iou_threshold)

    @staticmethod
    def cc_2d(mask, get_counts=True):
        return connected_components(mask)


def install() -> None:
    """Make transformers' SAM 3 video post-processing use :class:`LocalMaskOps` (idempotent)."""
    from transformers.models.sam3_video import modeling_sam3_video

    if not isinstance(modeling_sam3_video.cv_utils_kernel, LocalMaskOps):
        modeling_sam3_video.cv_utils_kernel = LocalMaskOps()
