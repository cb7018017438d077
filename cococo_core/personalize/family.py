"""Refuse models that are not SD-1.x ε-prediction (checkpoint-formats.md §1.2, §5).

Task vectors only make sense between models of one family. Detected and refused, naming what
was found: SDXL (``conditioner.embedders.*`` keys, a ``label_emb`` / ``add_embedding``, or a
2048-wide cross-attention), SD2.x (OpenCLIP ``cond_stage_model.model.*`` keys or a 1024-wide
cross-attention) and v-prediction files (a ``v_pred`` key, ``modelspec.predict_key = v`` or
``prediction_type = v_prediction`` metadata; SD1.x weights carry no other marker of it).
"""
from __future__ import annotations

from typing import Optional

from .sources import ModelSource

_CROSS_ATTN_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
_CONTEXT_FAMILIES = {1024: "SD2.x (1024-wide OpenCLIP cross-attention)", 2048: "SDXL (2048-wide cross-attention)"}


def context_family(width: int, expected: Optional[int] = None) -> Optional[str]:
    """A family name for a cross-attention context width that is not the expected SD-1.x one."""
    if expected is not None and width == expected:
        return None
    return _CONTEXT_FAMILIES.get(width, f"a model with {width}-wide cross-attention (SD-1.x has 768)")


def detect_problem(model: ModelSource, expected_context: Optional[int] = None) -> Optional[str]:
    """What makes ``model`` unusable as an SD-1.x ε-prediction model, or None."""
    keys = model.file_keys
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "SDXL (conditioner.embedders.* text-encoder keys)"
    if any(k.startswith("model.diffusion_model.label_emb.") for k in keys):
        return "SDXL (label_emb size conditioning)"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "SD2.x (OpenCLIP cond_stage_model.model.* keys)"
    unet = model.get("unet")
    if unet is not None:
        if any(k.startswith("add_embedding.") for k in unet.keys()):
            return "SDXL (add_embedding size conditioning)"
        if _CROSS_ATTN_KEY in unet:
            width = unet.shape(_CROSS_ATTN_KEY)[1]
            family = context_family(width, expected_context if expected_context is not None else 768)
            if family is not None and (expected_context is not None or width in _CONTEXT_FAMILIES):
                return family
    if "v_pred" in keys:
        return "a v-prediction model (v_pred key)"
    meta = {k.lower(): str(v).lower() for k, v in model.metadata.items()}
    if meta.get("modelspec.predict_key") == "v" or meta.get("prediction_type") == "v_prediction":
        return "a v-prediction model (metadata)"
    return None


def cross_attention_width(model: ModelSource) -> Optional[int]:
    unet = model.get("unet")
    if unet is None or _CROSS_ATTN_KEY not in unet:
        return None
    return unet.shape(_CROSS_ATTN_KEY)[1]


def require_sd1(model: ModelSource, role: str, expected_context: Optional[int] = None) -> None:
    problem = detect_problem(model, expected_context)
    if problem is not None:
        raise ValueError(f"{role} {model.name}: detected {problem}; only SD-1.x ε-prediction models can be merged "
                         "with the SD-1.5 inpainting model")
