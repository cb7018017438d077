"""E_warp, the flow warping error (Lai et al. 2018, "Learning Blind Video Temporal Consistency", ECCV;
computed as their ``evaluate_WarpError.py`` does), reported by LGVI (CVPR 2024) as E*_warp = E_warp x 100:

    E_warp = 1 / (T - 1) * sum_{t=1}^{T-1}  sum_i M_t(i) ||V_t(i) - W(V_{t+1}, F_t)(i)||^2 / (3 sum_i M_t(i))

with V in [0, 1] (RGB), F_t the flow from frame t to t + 1, W(V_{t+1}, F_t)(x) = V_{t+1}(x + F_t(x))
(bilinear, coordinates clamped to the frame) and M_t the non-occlusion mask from forward-backward
consistency (Ruder et al. 2016, as Lai et al.'s ``detect_occlusion``): with B_t the flow from t + 1 to t and
B~ = W(B_t, F_t), a pixel is occluded when

    |F + B~|^2 > 0.01 (|F|^2 + |B~|^2) + 0.5      (the flows do not cancel)  or
    |dF_x/du|^2 + |dF_x/dv|^2 + |dF_y/du|^2 + |dF_y/dv|^2 > 0.01 |F|^2 + 0.002   (motion boundary; forward
                                                                                   differences, 0 on the last row/column)

A frame pair whose pixels are all occluded follows the ``warp_occluded`` convention (:mod:`.conventions`):
``all-pixels`` averages its error over every pixel; ``zero`` adds 0 for it (Lai et al.'s script replaces
``N = 0`` by H*W*C while the masked difference is 0), the pair still counting in the 1 / (T - 1) mean.
Lai et al. estimate the flow on the input video; here the caller chooses the video the flow comes from
(``flow_frames``, default the measured video itself).
"""
from __future__ import annotations

import math

import torch

from .frames import as_frames


def warp_frames(frames: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """W(frames, flow): (N, H, W, C) sampled at x + flow(x), bilinear, clamped at the borders."""
    _, height, width, _ = frames.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype), indexing="ij")
    x = (xs + flow[..., 0]).clamp(0, width - 1)
    y = (ys + flow[..., 1]).clamp(0, height - 1)
    grid = torch.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], dim=-1)
    sampled = torch.nn.functional.grid_sample(frames.permute(0, 3, 1, 2).to(flow.dtype), grid, mode="bilinear",
                                              padding_mode="border", align_corners=True)
    return sampled.permute(0, 2, 3, 1)


def _squared(flow: torch.Tensor) -> torch.Tensor:
    return flow[..., 0] ** 2 + flow[..., 1] ** 2


def occlusion_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool, True where occluded in the first frame (module docstring)."""
    backward_warped = warp_frames(backward, forward)
    inconsistent = _squared(forward + backward_warped) > 0.01 * (_squared(forward) + _squared(backward_warped)) + 0.5
    du = torch.zeros_like(forward)
    dv = torch.zeros_like(forward)
    du[:, :, :-1] = forward[:, :, :-1] - forward[:, :, 1:]
    dv[:, :-1, :] = forward[:, :-1, :] - forward[:, 1:, :]
    boundary = (du ** 2 + dv ** 2).sum(-1) > 0.01 * _squared(forward) + 0.002
    return inconsistent | boundary


def warp_error(frames, *, flow=None, flow_frames=None, flows=None, occluded: str = "all-pixels") -> float:
    """E_warp of ``frames`` (module docstring). Flows come from ``flows`` = (forward, backward), each
    (T - 1, H, W, 2), or are estimated by ``flow`` (a :class:`~.flow.FlowEstimator`) on ``flow_frames``
    (default ``frames``). ``occluded``: "all-pixels" or "zero", for fully occluded pairs. NaN for fewer than
    two frames."""
    if occluded not in ("all-pixels", "zero"):
        raise ValueError(f"occluded must be 'all-pixels' or 'zero', not {occluded!r}")
    video = as_frames(frames) / 255.0
    if video.shape[0] < 2:
        return math.nan
    if flows is None:
        if flow is None:
            raise ValueError("warp_error needs a flow estimator (load_flow()) or precomputed flows")
        source = video if flow_frames is None else as_frames(flow_frames) / 255.0
        if source.shape != video.shape:
            raise ValueError(f"flow_frames {tuple(source.shape)} differ from frames {tuple(video.shape)}")
        forward, backward = flow(source[:-1], source[1:]), flow(source[1:], source[:-1])
    else:
        forward, backward = (torch.as_tensor(f, dtype=torch.float64) for f in flows)
    visible = (~occlusion_mask(forward, backward)).to(torch.float64)
    squared = (warp_frames(video[1:], forward) - video[:-1]).pow(2).sum(-1)  # (T-1, H, W), summed over RGB
    counts = visible.sum(dim=(1, 2)) * 3
    errors = (squared * visible).sum(dim=(1, 2))
    if occluded == "zero":
        full = torch.zeros_like(counts)
    else:
        full = squared.sum(dim=(1, 2)) / (3 * squared.shape[1] * squared.shape[2])
    per_frame = torch.where(counts > 0, errors / counts.clamp(min=1), full)
    return float(per_frame.mean())
