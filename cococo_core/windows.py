"""Overlapping temporal context windows, for videos longer than a model can attend over at once.

At every denoising step the frames are split into windows of ``length`` frames that overlap by
at least ``overlap`` frames; the model predicts each window on its own and the predictions are
blended frame by frame with trapezoid weights (linear ramps across each overlap), so memory is
flat in the frame count and neighbouring windows agree at their seams. One window covering the
whole video is exactly the plain path (the prediction is returned untouched).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def plan_windows(num_frames: int, length: int, overlap: int) -> list[list[int]]:
    """Frame indices of each window; the last window is aligned to the end of the video."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    if length < 1:
        raise ValueError(f"context window length must be >= 1, got {length}")
    if not 0 <= overlap < length:
        raise ValueError(f"context overlap must be in [0, length), got overlap={overlap} for length={length}")
    if num_frames <= length:
        return [list(range(num_frames))]
    stride = length - overlap
    starts = list(range(0, num_frames - length, stride)) + [num_frames - length]
    return [list(range(start, start + length)) for start in starts]


def window_weights(windows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per-frame blending weight of every window: 1 inside, a linear ramp over each overlap."""
    weights = []
    for n, window in enumerate(windows):
        size = len(window)
        left = windows[n - 1][-1] - window[0] + 1 if n > 0 else 0
        right = window[-1] - windows[n + 1][0] + 1 if n + 1 < len(windows) else 0
        position = torch.arange(size, dtype=torch.float64)
        weight = torch.ones(size, dtype=torch.float64)
        if left > 0:
            weight = torch.minimum(weight, (position + 1) / (left + 1))
        if right > 0:
            weight = torch.minimum(weight, (size - position) / (right + 1))
        weights.append(weight)
    return weights


def blend_windows(
    num_frames: int,
    windows: Sequence[Sequence[int]],
    predict: Callable[[list[int]], torch.Tensor],
    frame_dim: int = 2,
) -> torch.Tensor:
    """Run ``predict(frame_indices)`` per window and blend the results along ``frame_dim``."""
    if len(windows) == 1 and len(windows[0]) == num_frames:
        return predict(list(windows[0]))
    total = None
    weight_sum = torch.zeros(num_frames, dtype=torch.float64)
    for window, weight in zip(windows, window_weights(windows)):
        prediction = predict(list(window))
        if total is None:
            shape = list(prediction.shape)
            shape[frame_dim] = num_frames
            # accumulate in at least float32 (float64 predictions stay float64)
            total = torch.zeros(shape, dtype=torch.promote_types(prediction.dtype, torch.float32), device=prediction.device)
        view = [1] * prediction.dim()
        view[frame_dim] = len(window)
        index = torch.tensor(window, device=prediction.device)
        total.index_add_(frame_dim, index, prediction.to(total.dtype) * weight.to(total).view(view))
        weight_sum[list(window)] += weight
    view = [1] * total.dim()
    view[frame_dim] = num_frames
    return (total / weight_sum.to(total).view(view)).to(prediction.dtype)
