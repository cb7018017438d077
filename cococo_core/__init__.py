"""cococo_core: CoCoCo and LGVI video inpainting as a plain torch/diffusers library.

Nothing here imports ComfyUI. Public names are resolved lazily so that ``import cococo_core``
stays cheap and a missing optional dependency only fails the feature that needs it.
"""
from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # shared primitives
    "Cancelled": ".hooks",
    "attention_backend": ".attention",
    # checkpoints (issue: SD-1.x base models)
    "load_sd_components": ".checkpoints",
    "load_sd_state": ".checkpoints",
    "open_sd": ".checkpoints",
    "detect_checkpoint": ".checkpoints",
    "load_state_dict": ".checkpoints",
    "open_state": ".checkpoints",
    "CheckpointError": ".checkpoints",
    "UnsafeCheckpointError": ".checkpoints",
    "SDComponents": ".checkpoints",
    "CheckpointInfo": ".checkpoints",
    # the video U-Net
    "load_video_unet": ".models",
    "video_unet_from_unet2d": ".models",
    "VideoUNet": ".models",
    "read_motion_weights": ".models",
    "save_motion_safetensors": ".models",
    "MotionWeightsError": ".models",
    "dga_grid": ".models",
    # the inpainting pipeline and video files
    "CoCoCoPipeline": ".pipeline",
    "read_frames": ".video_io",
    "read_mask": ".video_io",
    "write_video": ".video_io",
    # personalization by task vectors
    "MergeRecipe": ".personalize",
    "LoraSpec": ".personalize",
    "save_merged": ".personalize",
    "personalize_modules": ".personalize",
    "restore_modules": ".personalize",
    "WeightBackup": ".personalize",
    "MergeReport": ".personalize",
    # masks from text
    "masks_from_text": ".masks",
    "MaskOptions": ".masks",
    "TextMaskResult": ".masks",
    "load_detector": ".masks",
    "load_segmenter": ".masks",
    "draw_preview": ".masks",
    # language-driven removal
    "LGVIPipeline": ".lgvi",
    "RemovalResult": ".lgvi",
    "LGVIChat": ".lgvi",
    "remove_with_chat": ".lgvi",
    "InteractiveResult": ".lgvi",
    "load_lgvi_unet": ".lgvi",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
