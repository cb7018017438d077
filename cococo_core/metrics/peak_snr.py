"""PSNR, frame-wise and averaged over frames, as the video inpainting evaluations that LGVI (CVPR 2024,
Tables 2-3) follows (E2FGVI ``core/metrics.py`` ``calculate_psnr``):

    PSNR_f = 20 log10(255 / sqrt(MSE_f)),   MSE_f = mean over (y, x, c) of (R - O)^2 on [0, 255]

Identical frames have an infinite PSNR; each frame is capped at :data:`MAX_PSNR` dB so that the average
stays finite (an identical frame contributes 100 dB).
"""
from __future__ import annotations

import math

from .frames import as_frames, check_pair

MAX_PSNR = 100.0


def psnr(reference, result, *, max_db: float = MAX_PSNR) -> float:
    """Mean over frames of the per-frame PSNR (module docstring), each capped at ``max_db``."""
    reference, result = as_frames(reference, name="reference"), as_frames(result, name="result")
    check_pair(reference, result, "PSNR")
    mse = (reference - result).pow(2).flatten(1).mean(1)
    values = [max_db if m == 0 else min(max_db, 20 * math.log10(255.0 / math.sqrt(m))) for m in mse.tolist()]
    return sum(values) / len(values)
