"""BP, background preservation (CoCoCo, AAAI 2025, Table 1: "L1 distance to measure background preservation",
6.20 on a [0, 255] scale for CoCoCo).

    BP = sum_{f, y, x, c} (1 - M) |I - O| / (3 sum_{f, y, x} (1 - M))

the mean absolute difference between input I and output O over every colour value outside the mask M,
on [0, 255]. A soft mask weighs pixels by 1 - M. Lower is better; identical backgrounds give 0.
"""
from __future__ import annotations

import math

from .frames import as_frames, as_mask, check_pair


def background_preservation(original, result, mask) -> float:
    """Mean |original - result| on [0, 255] outside ``mask`` (module docstring); NaN when the mask covers
    every pixel."""
    original, result = as_frames(original, name="original"), as_frames(result, name="result")
    check_pair(original, result, "background preservation")
    keep = 1.0 - as_mask(mask, *original.shape[:3])
    weight = keep.sum() * 3
    if weight <= 0:
        return math.nan
    return float(((original - result).abs() * keep[..., None]).sum() / weight)
