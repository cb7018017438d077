"""VFID (video FID; Wang et al. 2018, "Video-to-Video Synthesis"), as the video inpainting evaluations that
LGVI (CVPR 2024, Tables 2-3) follows compute it (E2FGVI ``core/metrics.py``):

* per video, the I3D feature (:meth:`InceptionI3d.features`: ``Mixed_5c`` averaged over time and space) of
  the whole clip, fed as (1, 3, T, H, W) in **[0, 1]** at the evaluation size (E2FGVI's ``to_tensors``
  divides by 255 and does not rescale to I3D's training range [-1, 1]; kept for comparable numbers);
* the BatchNorm statistics follow the ``i3d_norm`` convention (:mod:`.conventions`): ``running`` (eval
  mode) or ``per-video`` (each clip normalised with its own statistics, as E2FGVI's ``init_i3d_model``
  leaves the model in train mode; that needs more than one value per channel at every layer: more than
  8 frames or a side longer than 32 pixels);
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
def i3d_features(frames, model, *, norm: str = "running") -> np.ndarray:
    """The (C,) float64 I3D feature of one video (module docstring); ``norm``: "running" or "per-video"."""
    if norm not in ("running", "per-video"):
        raise ValueError(f"norm must be 'running' or 'per-video', not {norm!r}")
    video = (as_frames(frames) / 255.0).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    parameter = next(model.parameters())
    try:
        features = model.features(video.to(parameter.device, parameter.dtype), per_video_statistics=norm == "per-video")
    except ValueError as error:
        if "more than 1 value per channel" not in str(error):
            raise
        frames_, height, width = video.shape[2:]
        raise ValueError(f"a clip of {frames_} frames of {width}x{height} is too small for I3D with per-video "
                         "BatchNorm statistics (a layer is left with one value per channel); use longer or larger "
                         "clips, or --i3d-norm running") from error
    return features.double().cpu().numpy()[0]


def vfid(reference_features, result_features) -> float:
    """Fréchet distance between the two sets of per-video I3D features, each (N, C)."""
    mu1, sigma1 = gaussian_statistics(reference_features)
    mu2, sigma2 = gaussian_statistics(result_features)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
