"""CoCoCo models: the motion module (damped global attention), the video U-Net and motion-weight I/O.

Names resolve lazily, so ``import cococo_core.models`` does not import diffusers.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "VideoUNet": ".video_unet",
    "motion_sites": ".video_unet",
    "MotionModule": ".motion_module",
    "dga_grid": ".motion_attention",
    "DampedGlobalAttention": ".motion_attention",
    "TemporalSelfAttention": ".motion_attention",
    "TemporalTextCrossAttention": ".motion_attention",
    "position_encoding": ".position",
    "sinusoidal_encoding": ".position",
    "MotionWeightsError": ".motion_weights",
    "read_motion_weights": ".motion_weights",
    "load_motion_weights": ".motion_weights",
    "merge_motion_state": ".motion_weights",
    "save_motion_safetensors": ".motion_weights",
    "LdmMotionSite": ".motion_set",
    "MotionModuleSet": ".motion_set",
    "ldm_motion_layout": ".motion_set",
    "load_video_unet": ".loading",
    "video_unet_from_unet2d": ".loading",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
