"""SSIM (Wang et al. 2004), frame-wise and averaged, computed exactly as the video inpainting evaluations
that LGVI (CVPR 2024, Tables 2-3) follows: E2FGVI/ProPainter call scikit-image's ``structural_similarity``
with ``data_range=255, multichannel=True, win_size=65`` on float64 frames. That is, per colour channel:

* local statistics over a **uniform 65 x 65 window** (not the Gaussian of the SSIM paper), covariances with
  the sample normalisation ``N / (N - 1)``, ``N = 65^2``;
* ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``,
  ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``;
* averaged over the positions where the window lies inside the frame (scikit-image crops ``(win - 1) / 2``
  pixels on each side), then over the three channels, then over frames.

Frames smaller than the window use the largest odd window that fits (scikit-image would refuse them).
Window sums come from integral images in float64, which gives the same numbers as scikit-image's
separable filter without its cost (O(1) per pixel for any window).
"""
from __future__ import annotations

import torch

from .frames import as_frames, check_pair

WINDOW = 65
K1, K2 = 0.01, 0.03


def _window_means(planes: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over every size x size window lying inside (..., H, W) planes: (..., H - size + 1, W - size + 1)."""
    integral = torch.nn.functional.pad(planes.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    sums = (integral[..., size:, size:] - integral[..., :-size, size:]
            - integral[..., size:, :-size] + integral[..., :-size, :-size])
    return sums / (size * size)


def window_size(height: int, width: int, window: int = WINDOW) -> int:
    """``window``, or the largest odd size that fits a smaller frame."""
    fit = min(window, height, width)
    return fit if fit % 2 else fit - 1


def ssim_frames(reference, result, *, window: int = WINDOW, data_range: float = 255.0) -> torch.Tensor:
    """Per-frame SSIM (F,) float64 (module docstring)."""
    x, y = as_frames(reference, name="reference"), as_frames(result, name="result")
    check_pair(x, y, "SSIM")
    size = window_size(x.shape[1], x.shape[2], window)
    if size < 1:
        raise ValueError(f"frames of {x.shape[2]}x{x.shape[1]} are too small for SSIM")
    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)  # (F, 3, H, W)
    count = size * size
    norm = count / (count - 1) if count > 1 else 1.0
    mean_x, mean_y = _window_means(x, size), _window_means(y, size)
    var_x = norm * (_window_means(x * x, size) - mean_x * mean_x)
    var_y = norm * (_window_means(y * y, size) - mean_y * mean_y)
    cov = norm * (_window_means(x * y, size) - mean_x * mean_y)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(-1, -2)).mean(-1)


def ssim(reference, result, *, window: int = WINDOW) -> float:
    """Mean over frames of the per-frame SSIM (module docstring); 1 for identical videos."""
    return float(ssim_frames(reference, result, window=window).mean())
