"""VFID (video FID; Wang et al. 2018, "Video-to-Video Synthesis"), as the video inpainting evaluations that
LGVI (CVPR 2024, Tables 2-3) follows compute it (E2FGVI ``core/metrics.py``):

* per video, the I3D feature (:meth:`InceptionI3d.features`: ``Mixed_5c`` averaged over time and space) of
  the whole clip, fed as (1, 3, T, H, W) in **[0, 1]** at the evaluation size (E2FGVI's ``to_tensors``
  divides by 255 and does not rescale to I3D's training range [-1, 1]; kept for comparable numbers);
* over the dataset, the Fréchet distance (:mod:`.frechet`) between the Gaussians fitted to the reference
  videos' and the results' features.

VFID needs at least two videos; identical feature sets give 0.
"""
from __future__ import annotations

import numpy as np
import torch

from .frames import as_frames
from .frechet import frechet_distance, gaussian_statistics


@torch.no_grad()
def i3d_features(frames, model) -> np.ndarray:
    """The (C,) float64 I3D feature of one video (module docstring)."""
    video = (as_frames(frames) / 255.0).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    parameter = next(model.parameters())
    return model.features(video.to(parameter.device, parameter.dtype)).double().cpu().numpy()[0]


def vfid(reference_features, result_features) -> float:
    """Fréchet distance between the two sets of per-video I3D features, each (N, C)."""
    mu1, sigma1 = gaussian_statistics(reference_features)
    mu2, sigma2 = gaussian_statistics(result_features)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
