"""Video inpainting metrics of the CoCoCo and LGVI papers, one small module per metric.

All take frames ``(F, H, W, 3)`` (uint8 in [0, 255], or float in [0, 1]; numpy or torch), as
:func:`cococo_core.video_io.read_frames` returns them, and masks ``(F, H, W)`` / ``(H, W)`` in [0, 1]
(1 = the inpainted / removed region)::

    background_preservation(original, result, mask)   # BP, CoCoCo Table 1 (L1 on [0, 255] outside the mask)
    psnr(reference, result), ssim(reference, result)  # LGVI Table 2/3 (frame-wise, averaged)
    clip_score(result, prompt, clip)                  # CS (CLIP text-image similarity x 100)
    temporal_consistency(result, clip)                # TC (cosine of consecutive CLIP image embeddings x 100)
    warp_error(result)                                # E_warp (Lai et al. 2018), flow from RAFT or OpenCV DIS
    i3d_features(video, i3d) -> vfid(real, fake)      # VFID over a dataset (Frechet distance of I3D features)

Where correct implementations differ (I3D BatchNorm statistics, fully occluded E_warp pairs, frame- or
video-level averaging, the CS clamp) the choice is a named convention (:class:`Conventions`, presets
``pack`` and ``paper`` in :mod:`.conventions`).

Models are loaded from local files only (:func:`load_clip`, :func:`load_i3d`, :func:`load_flow`); nothing
is downloaded. :class:`MetricSuite` computes every available metric of one video pair (used by the
``evaluate`` command and the ComfyUI node).
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "as_frames": ".frames",
    "as_mask": ".frames",
    "background_preservation": ".background",
    "psnr": ".peak_snr",
    "ssim": ".structural",
    "ClipModel": ".clip_model",
    "load_clip": ".clip_model",
    "clip_score": ".text_alignment",
    "temporal_consistency": ".temporal",
    "InceptionI3d": ".i3d",
    "load_i3d": ".i3d",
    "i3d_features": ".video_fid",
    "vfid": ".video_fid",
    "frechet_distance": ".frechet",
    "FlowEstimator": ".flow",
    "load_flow": ".flow",
    "flow_backends": ".flow",
    "occlusion_mask": ".warping",
    "warp_frames": ".warping",
    "warp_error": ".warping",
    "Conventions": ".conventions",
    "conventions_preset": ".conventions",
    "MetricSuite": ".suite",
    "format_table": ".suite",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
