"""Masks from text: GroundingDINO boxes + Segment Anything masks per frame (transformers models, either layout).

Public API (resolved lazily, so importing this package does not import transformers)::

    detector = load_detector("models/grounding-dino/groundingdino_swint_ogc.pth", bert="models/bert-base-uncased")
    segmenter = load_segmenter("models/sams/sam_vit_h_4b8939.pth")
    result = masks_from_text(frames, "the dog", detector, segmenter, MaskOptions(grow=8))
    result.masks            # (F, H, W) float in [0, 1]
    draw_preview(frames, result)  # (F, H, W, 3) float
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Detector": ".loading",
    "Segmenter": ".loading",
    "load_detector": ".loading",
    "load_segmenter": ".loading",
    "read_checkpoint": ".loading",
    "MaskOptions": ".text_masks",
    "TextMaskResult": ".text_masks",
    "masks_from_text": ".text_masks",
    "postprocess": ".text_masks",
    "draw_preview": ".preview",
    "FrameDetections": ".detect",
    "normalize_caption": ".detect",
    "convert_sam_state_dict": ".convert_sam",
    "sam_config_from_state_dict": ".convert_sam",
    "convert_grounding_dino_state_dict": ".convert_dino",
    "grounding_dino_config_from_state_dict": ".convert_dino",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
