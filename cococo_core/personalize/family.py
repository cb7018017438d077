"""Refuse models that are not SD-1.x ε-prediction (checkpoint-formats.md §1.2, §5).

Task vectors only make sense between models of one family. Files and folders are identified by
:mod:`cococo_core.checkpoints.detect` when they are opened (SD-2.x / SDXL / non-SD files are refused
there, naming what was found); here v-prediction models (a ``v_pred`` key, ``modelspec.predict_key``
metadata, a diffusers scheduler with ``prediction_type: v_prediction``; SD-1.x weights carry no other
marker) are refused, and every input's cross-attention width must be the inpainting model's
(1024 = SD-2.x, 2048 = SDXL), which also covers in-memory models.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from .lora_names import SDXL_PREFIXES
from .sources import ModelSource

_CROSS_ATTN_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
_CONTEXT_FAMILIES = {1024: "SD2.x (1024-wide OpenCLIP cross-attention)", 2048: "SDXL (2048-wide cross-attention)"}


def context_family(width: int) -> str:
    """A family name for a cross-attention context width that is not the SD-1.x one."""
    return _CONTEXT_FAMILIES.get(width, f"a model with {width}-wide cross-attention (SD-1.x has 768)")


# the down / A factor of a cross-attention key or value projection: its input width is the text context's
_LORA_CONTEXT_FACTOR = re.compile(r"attn2[._]to_[kv].*(lora_down|lora_A)(\.default)?\.weight$")


def lora_family(shapes: Mapping[str, Sequence[int]]) -> Optional[str]:
    """The family of a LoRA that is not for SD-1.x, from its key names and tensor shapes (a safetensors header
    is enough), or None: SDXL's second text encoder (``lora_te2_`` ...), or a cross-attention key/value factor
    reading a 1024-wide (SD-2.x) or 2048-wide (SDXL) text context."""
    second_encoder = sorted(key for key in shapes if key.startswith(SDXL_PREFIXES))
    if second_encoder:
        return f"SDXL (a second text encoder: keys such as {second_encoder[0]})"
    for key, shape in shapes.items():
        if _LORA_CONTEXT_FACTOR.search(key) and len(shape) == 2 and shape[1] in _CONTEXT_FAMILIES:
            return context_family(shape[1])
    return None


def cross_attention_width(model: ModelSource) -> Optional[int]:
    unet = model.get("unet")
    if unet is None or _CROSS_ATTN_KEY not in unet:
        return None
    return unet.shape(_CROSS_ATTN_KEY)[1]


def detect_problem(model: ModelSource, expected_context: Optional[int] = None) -> Optional[str]:
    """What makes ``model`` unusable next to an SD-1.x ε-prediction inpainting model, or None."""
    if model.info is not None and model.info.prediction == "v_prediction":
        return f"a v-prediction model ({model.info.prediction_source})"
    width = cross_attention_width(model)
    if width is not None and (width in _CONTEXT_FAMILIES or (expected_context is not None and width != expected_context)):
        return context_family(width)
    return None


def require_sd1(model: ModelSource, role: str, expected_context: Optional[int] = None) -> None:
    problem = detect_problem(model, expected_context)
    if problem is not None:
        raise ValueError(f"{role} {model.name}: detected {problem}; only SD-1.x epsilon-prediction models can be "
                         "merged with the SD-1.5 inpainting model")
