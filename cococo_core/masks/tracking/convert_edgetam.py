"""EdgeTAM: original checkpoint layout -> transformers ``EdgeTamVideoModel``, in memory.

The original file (facebookresearch/EdgeTAM, ``checkpoints/edgetam.pt``) holds ``{"model": state_dict}`` of the
fork's ``SAM2Base`` built from ``sam2/configs/edgetam.yaml``: SAM 2's prompt encoder, mask decoder, memory encoder
and memory parameters (named as in SAM 2, :mod:`.convert_sam2`), plus

* ``image_encoder.trunk.body.*``: a timm RepViT-M1 (``repvit_m1.dist_in1k``, ``features_only``, four stages) in
  place of Hiera; transformers wraps the same timm module (``vision_encoder.backbone.timm_model.*``, same names);
* ``memory_attention.layers.i.{self_attn, cross_attn_image}``: RoPE attention whose cross-attention reads the
  perceiver's latents (``kv_in_dim`` = memory width); the feed-forward ``linear1``/``linear2`` ->
  ``mlp.up_proj``/``mlp.down_proj``;
* ``spatial_perceiver.*``: the perceiver resampler that compresses each memory frame into ``latents`` (1-D) and
  ``latents_2d`` (one latent per window of the feature map); its fused ``to_kv`` is split into ``k_proj``/``v_proj``
  (first half keys, second half values: ``perceiver.py``'s ``to_kv(...).chunk(2, dim=-1)``), its feed-forward
  ``ff.{0,1,3}`` is LayerNorm, Linear, GELU, Linear.

EdgeTAM has no SAM 2.1 extras (no ``no_obj_embed_spatial``, no ``obj_ptr_tpos_proj``: ``edgetam.yaml`` sets
``add_tpos_enc_to_obj_ptrs: false``). Sizes come from tensor shapes; the RepViT depths and widths per stage are
counted from the trunk's keys and given to timm's ``repvit_m1`` (the released file: (2, 2, 14, 2) blocks of
widths (48, 96, 192, 384)). What shapes cannot say comes from ``edgetam.yaml``: one memory-attention head, one perceiver
head, 8 mask-decoder heads, 7 memory frames, 16 object pointers, 1024 px input.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ..convert_sam import count_indexed, prompt_and_decoder_sizes
from .convert_sam2 import DEFAULT_IMAGE_SIZE, convert_sam2_state_dict, memory_encoder_sizes

REPVIT_ARCHITECTURE = "repvit_m1"  # edgetam.yaml: TimmBackbone name repvit_m1.dist_in1k
REPVIT_M1 = {"embed_dim": (48, 96, 192, 384), "depth": (2, 2, 14, 2)}
_TRUNK = "image_encoder.trunk.body."
TRANSFORMERS_MEMORY_WIDTH = 64  # EdgeTamVideoMemoryAttentionLayer: cross_attn_image kv_in_dim=64, fixed

_RULES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.trunk\.body\.", "vision_encoder.backbone.timm_model."),
    (r"^memory_attention\.layers\.(\d+)\.linear1\.", r"memory_attention.layers.\1.mlp.up_proj."),
    (r"^memory_attention\.layers\.(\d+)\.linear2\.", r"memory_attention.layers.\1.mlp.down_proj."),
    (r"^spatial_perceiver\.latents$", "spatial_perceiver.latents_1d"),
    (r"^spatial_perceiver\.layers\.(\d+)\.attn\.norm_x\.", r"spatial_perceiver.layers.\1.layer_norm_input."),
    (r"^spatial_perceiver\.layers\.(\d+)\.attn\.norm_latents\.", r"spatial_perceiver.layers.\1.layer_norm_latents."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_attn\.norm\.", r"spatial_perceiver.layers.\1.layer_norm_self."),
    (r"^spatial_perceiver\.layers\.(\d+)\.attn\.to_q\.", r"spatial_perceiver.layers.\1.cross_attention.q_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.attn\.to_kv\.", r"spatial_perceiver.layers.\1.cross_attention.kv."),
    (r"^spatial_perceiver\.layers\.(\d+)\.attn\.to_out\.", r"spatial_perceiver.layers.\1.cross_attention.o_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_attn\.to_q\.", r"spatial_perceiver.layers.\1.self_attention.q_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_attn\.to_kv\.", r"spatial_perceiver.layers.\1.self_attention.kv."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_attn\.to_out\.",
     r"spatial_perceiver.layers.\1.self_attention.o_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.ff\.0\.", r"spatial_perceiver.layers.\1.mlp.layer_norm."),
    (r"^spatial_perceiver\.layers\.(\d+)\.ff\.1\.", r"spatial_perceiver.layers.\1.mlp.up_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.ff\.3\.", r"spatial_perceiver.layers.\1.mlp.down_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_ff\.0\.", r"spatial_perceiver.layers.\1.self_mlp.layer_norm."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_ff\.1\.", r"spatial_perceiver.layers.\1.self_mlp.up_proj."),
    (r"^spatial_perceiver\.layers\.(\d+)\.self_ff\.3\.", r"spatial_perceiver.layers.\1.self_mlp.down_proj."),
    (r"^spatial_perceiver\.norm\.", "spatial_perceiver.layer_norm."),
)
_FUSED_KV = re.compile(r"^(spatial_perceiver\.layers\.\d+\.(?:cross|self)_attention)\.kv\.(weight|bias)$")


def is_original_edgetam(keys) -> bool:
    """True when ``keys`` look like a facebookresearch/EdgeTAM checkpoint (timm trunk + spatial perceiver)."""
    keys = set(keys)
    return ("spatial_perceiver.latents_2d" in keys and "maskmem_tpos_enc" in keys
            and "sam_mask_decoder.iou_token.weight" in keys
            and any(key.startswith(_TRUNK) for key in keys))


def _rename(key: str) -> str:
    for pattern, replacement in _RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_edgetam_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original EdgeTAM state dict to transformers ``EdgeTamVideoModel`` keys: the EdgeTAM-only modules
    here, the modules shared with SAM 2 by :func:`.convert_sam2.convert_sam2_state_dict`."""
    own = {_rename(key): value for key, value in state.items() if key.startswith(("image_encoder.trunk.",
                                                                                    "spatial_perceiver."))
           or re.match(r"^memory_attention\.layers\.\d+\.linear[12]\.", key)}
    shared = convert_sam2_state_dict({key: value for key, value in state.items()
                                      if not key.startswith(("image_encoder.trunk.", "spatial_perceiver."))
                                      and not re.match(r"^memory_attention\.layers\.\d+\.linear[12]\.", key)})
    converted: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        if match := _FUSED_KV.match(key):
            keys, values = value.chunk(2, dim=0)
            converted[f"{match.group(1)}.k_proj.{match.group(2)}"] = keys
            converted[f"{match.group(1)}.v_proj.{match.group(2)}"] = values
        else:
            converted[key] = value
    overlap = converted.keys() & shared.keys()
    if overlap:
        raise ValueError(f"EdgeTAM conversion maps two tensors to {sorted(overlap)[:3]}")
    converted.update(shared)
    return converted


def repvit_layout(state: Mapping[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """(blocks per stage, width per stage) of the RepViT trunk, from its keys and shapes."""
    stages = count_indexed(state, r"^image_encoder\.trunk\.body\.stages_(\d+)\.")
    depths = [count_indexed(state, rf"^image_encoder\.trunk\.body\.stages_{i}\.blocks\.(\d+)\.") for i in range(stages)]
    widths = [state[f"{_TRUNK}stages_{i}.blocks.0.channel_mixer.conv2.c.weight"].shape[0] for i in range(stages)]
    return depths, widths


def edgetam_variant(state: Mapping[str, torch.Tensor]) -> str:
    depths, widths = repvit_layout(state)
    if depths == list(REPVIT_M1["depth"]) and widths == list(REPVIT_M1["embed_dim"]):
        return "RepViT-M1"
    return f"custom RepViT {depths} blocks, widths {widths}"


def edgetam_config_from_state_dict(state: Mapping[str, torch.Tensor], image_size: int = DEFAULT_IMAGE_SIZE):
    """An ``EdgeTamVideoConfig`` matching an ORIGINAL-layout EdgeTAM state dict (see the module docstring)."""
    from transformers import (EdgeTamVideoConfig, EdgeTamVideoMaskDecoderConfig, EdgeTamVideoPromptEncoderConfig,
                              EdgeTamVisionConfig, TimmWrapperConfig)

    keys = list(state)
    depths, widths = repvit_layout(state)
    model_args = {"in_chans": 3, "features_only": True, "out_indices": list(range(len(widths))),
                  "embed_dim": widths, "depth": depths}
    backbone = TimmWrapperConfig(architecture=REPVIT_ARCHITECTURE, model_args=model_args)
    convs = count_indexed(keys, r"^image_encoder\.neck\.convs\.(\d+)\.")
    vision = EdgeTamVisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[state[f"image_encoder.neck.convs.{i}.conv.weight"].shape[1] for i in range(convs)],
        backbone_feature_sizes=[[image_size // 4] * 2, [image_size // 8] * 2, [image_size // 16] * 2],
        fpn_hidden_size=state["image_encoder.neck.convs.0.conv.weight"].shape[0],
    )
    prompt_sizes, decoder_sizes = prompt_and_decoder_sizes(state, "sam_prompt_encoder", "sam_mask_decoder",
                                                           "mlp.layers.0")
    latents_2d = state["spatial_perceiver.latents_2d"].shape[0]
    latent_grid = math.isqrt(latents_2d)
    if latent_grid * latent_grid != latents_2d:
        raise ValueError(f"EdgeTAM's 2-D perceiver latents ({latents_2d}) are not a square grid")
    perceiver_width = state["spatial_perceiver.latents_2d"].shape[1]
    memory_width = state["memory_encoder.out_proj.weight"].shape[0]
    if memory_width != TRANSFORMERS_MEMORY_WIDTH:
        raise ValueError(f"EdgeTAM memory width {memory_width}: transformers' EdgeTamVideoModel reads memories of "
                         f"width {TRANSFORMERS_MEMORY_WIDTH} only (its memory cross-attention has kv_in_dim=64)")
    feature_grid = image_size // 16
    return EdgeTamVideoConfig(
        vision_config=vision,
        prompt_encoder_config=EdgeTamVideoPromptEncoderConfig(image_size=image_size, **prompt_sizes),
        mask_decoder_config=EdgeTamVideoMaskDecoderConfig(**decoder_sizes),
        image_size=image_size,
        num_maskmem=state["maskmem_tpos_enc"].shape[0],
        enable_occlusion_spatial_embedding="no_obj_embed_spatial" in state,
        enable_temporal_pos_encoding_for_object_pointers="obj_ptr_tpos_proj.weight" in state,
        memory_attention_hidden_size=state["memory_attention.norm.weight"].shape[0],
        memory_attention_num_layers=count_indexed(keys, r"^memory_attention\.layers\.(\d+)\."),
        memory_attention_mlp_hidden_size=state["memory_attention.layers.0.linear1.weight"].shape[0],
        memory_attention_rope_feat_sizes=[feature_grid, feature_grid],
        memory_attention_rope_k_sizes=[latent_grid, latent_grid],
        perceiver_resampler_num_latents=state["spatial_perceiver.latents"].shape[0],
        perceiver_resampler_num_latents_2d=latents_2d,
        perceiver_resampler_hidden_size=perceiver_width,
        perceiver_resampler_mlp_intermediate_size=state["spatial_perceiver.layers.0.ff.1.weight"].shape[0],
        perceiver_resampler_attention_head_dim=state["spatial_perceiver.layers.0.attn.to_q.weight"].shape[0],
        perceiver_resampler_num_attention_heads=1,
        perceiver_resampler_num_layers=count_indexed(keys, r"^spatial_perceiver\.layers\.(\d+)\."),
        **memory_encoder_sizes(state),
    )
