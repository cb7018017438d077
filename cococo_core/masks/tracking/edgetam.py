"""EdgeTAM video tracking (Zhou et al., "EdgeTAM: On-Device Track Anything Model", CVPR 2025) on transformers'
``EdgeTamVideoModel``: SAM 2's video pipeline with a RepViT image encoder and a perceiver that compresses each
memory frame into a few latents; made for on-device use (the paper: 22x faster than SAM 2 on an iPhone 15 Pro
Max).

``EdgeTamVideoModel`` has ``Sam2VideoModel``'s video API, so tracking is :class:`~.sam2.Sam2Tracker`'s (the
official ``SAM2VideoPredictor`` of the EdgeTAM fork runs the same steps); only the model, its inference session and
the file layout (:mod:`.convert_edgetam`) differ. The RepViT encoder comes from ``timm`` (transformers'
``TimmWrapperModel``), which must be installed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .registry import TrackerSource, register_tracker
from .sam2 import Sam2Tracker, load_video_model, video_model_class

HF_MODEL_TYPES = ("edgetam_video",)


class EdgeTamTracker(Sam2Tracker):
    """EdgeTAM (boxes and clicks on any frames; text through GroundingDINO boxes)."""

    kind = "edgetam"

    def _new_session(self, **kwargs):
        from transformers.models.edgetam_video.modeling_edgetam_video import EdgeTamVideoInferenceSession

        return EdgeTamVideoInferenceSession(**kwargs)

    def _infer(self, session, frame, obj, point_inputs, reverse, encode_memory):
        # EdgeTAM's single-frame step encodes the memory itself (from the raw high-resolution logits, as SAM 2's
        # caller does) and does not return those logits
        out = self.model._run_single_frame_inference(session, frame, obj.index, 1, point_inputs is not None,
                                                     point_inputs, None, reverse, encode_memory)
        if encode_memory:
            out["maskmem_features"] = stored_memory(out["maskmem_features"])
        return out

    def _encode_memory(self, session, frame, high_res, score_logits, from_prompt):
        features, positions = super()._encode_memory(session, frame, high_res, score_logits, from_prompt)
        return stored_memory(features), positions


def stored_memory(features: torch.Tensor) -> torch.Tensor:
    """Memory features as the official video predictor keeps them: rounded to bfloat16
    (``sam2_video_predictor.py`` of the EdgeTAM fork, ``_run_single_frame_inference`` and ``_run_memory_encoder``:
    ``maskmem_features.to(torch.bfloat16)``), read back in the model's dtype. transformers' ``Sam2VideoModel``
    rounds them the same way; ``EdgeTamVideoModel`` does not, and its tracked logits then differ from the
    original's by ~5e-5 (rel-L2) on a random model."""
    return features.to(torch.bfloat16).to(features.dtype)


def _detect(source: TrackerSource) -> bool:
    if source.is_folder:
        return source.model_type in HF_MODEL_TYPES
    from .convert_edgetam import is_original_edgetam

    return is_original_edgetam(source.state())


def _require_timm() -> None:
    try:
        import timm  # noqa: F401
    except ImportError as error:
        raise ImportError("EdgeTAM's RepViT image encoder is a timm model: install timm (pip install timm)") from error


def load_edgetam(source: TrackerSource, device=None, dtype=None, image_size: Optional[int] = None) -> EdgeTamTracker:
    """An :class:`EdgeTamTracker` from the original ``edgetam.pt`` or a Hugging Face ``edgetam_video`` folder.

    ``image_size``: the model's input size for an original file (the released EdgeTAM uses 1024)."""
    from . import convert_edgetam

    model_class = video_model_class("EdgeTamVideoModel", "EdgeTAM")
    _require_timm()
    model = load_video_model(
        model_class, source, device, dtype,
        lambda state: convert_edgetam.edgetam_config_from_state_dict(
            state, image_size or convert_edgetam.DEFAULT_IMAGE_SIZE),
        convert_edgetam.convert_edgetam_state_dict, "EdgeTAM")
    variant = "hf" if source.is_folder else convert_edgetam.edgetam_variant(source.state())
    return EdgeTamTracker(model, str(source.path), variant)


register_tracker("edgetam", _detect, load_edgetam,
                 accepts="EdgeTAM original edgetam.pt, or a Hugging Face 'edgetam_video' folder (needs timm)")
