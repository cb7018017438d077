"""SAM 3: the original ``sam3.pt`` layout -> transformers ``Sam3VideoModel``, in memory.

Original layout (facebookresearch/sam3, ``sam3/model_builder.py:build_sam3_video_model``, loaded there with
``strict=True``): ``detector.*`` (the image detector ``Sam3ImageOnVideoMultiGPU``) and ``tracker.*`` (the SAM 2 style
``Sam3TrackerPredictor``); a ``{"model": ...}`` wrapper is allowed.

* ``detector.backbone.vision_backbone.trunk`` (ViT: ``pos_embed`` with a class-token row, ``patch_embed.proj``,
  ``ln_pre``, ``blocks.N.{norm1, attn.{qkv, proj, freqs_cis}, norm2, mlp.{fc1, fc2}}``), ``.convs.N`` (the detector
  FPN) and ``.sam2_convs.N`` (the tracker FPN: transformers' top-level ``tracker_neck``);
* ``detector.backbone.language_backbone.encoder`` (OpenAI-CLIP text transformer with fused ``in_proj``) and
  ``.resizer`` (-> ``text_projection``);
* ``detector.geometry_encoder``, ``detector.transformer.{encoder, decoder}``, ``detector.dot_prod_scoring``,
  ``detector.segmentation_head``;
* ``tracker.{maskmem_backbone, transformer.encoder, sam_prompt_encoder, sam_mask_decoder, obj_ptr_proj, ...}``.

Fused projections (``qkv``, ``in_proj_*``) are split into q/k/v; the CLIP ``text_projection`` is stored transposed;
the rotary tables (``freqs_cis``) are recomputed by transformers and only used here to read the head size, the
window size and the image size. Every other tensor must find its place (and every model tensor its source).
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ..convert_sam import count_indexed

# sam3/model/vitdet.py ViT.__init__: norm_layer = partial(nn.LayerNorm, eps=1e-5)
ORIGINAL_VIT_LAYER_NORM_EPS = 1e-5
_VIT = "detector.backbone.vision_backbone.trunk."
_TEXT = "detector.backbone.language_backbone.encoder."

# (pattern, replacement), applied in order; each anchored so that a rule only touches its own module.
_DETECTOR_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.vision_backbone\.trunk\.pos_embed$", "vision_encoder.backbone.embeddings.position_embeddings"),
    (r"^backbone\.vision_backbone\.trunk\.patch_embed\.proj\.",
     "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (r"^backbone\.vision_backbone\.trunk\.ln_pre\.", "vision_encoder.backbone.layer_norm."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.backbone.layers.\1.layer_norm\2."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.attn\.qkv\.", r"vision_encoder.backbone.layers.\1.attention.qkv."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.attn\.proj\.", r"vision_encoder.backbone.layers.\1.attention.o_proj."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.mlp\.", r"vision_encoder.backbone.layers.\1.mlp."),
    (r"^backbone\.vision_backbone\.(convs|sam2_convs)\.(\d+)\.(?:dconv_2x2|dconv_2x2_0)\.", r"\1.\2.scale_layers.0."),
    (r"^backbone\.vision_backbone\.(convs|sam2_convs)\.(\d+)\.dconv_2x2_1\.", r"\1.\2.scale_layers.2."),
    (r"^backbone\.vision_backbone\.(convs|sam2_convs)\.(\d+)\.conv_1x1\.", r"\1.\2.proj1."),
    (r"^backbone\.vision_backbone\.(convs|sam2_convs)\.(\d+)\.conv_3x3\.", r"\1.\2.proj2."),
    (r"^convs\.", "vision_encoder.neck.fpn_layers."),
    (r"^sam2_convs\.", "<tracker_neck>.fpn_layers."),
    (r"^backbone\.language_backbone\.resizer\.", "text_projection."),
    (r"^backbone\.language_backbone\.encoder\.token_embedding\.", "text_encoder.text_model.embeddings.token_embedding."),
    (r"^backbone\.language_backbone\.encoder\.positional_embedding$",
     "text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^backbone\.language_backbone\.encoder\.ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (r"^backbone\.language_backbone\.encoder\.text_projection$", "text_encoder.text_projection.weight"),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.attn\.",
     r"text_encoder.text_model.encoder.layers.\1.self_attn."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.ln_(\d)\.",
     r"text_encoder.text_model.encoder.layers.\1.layer_norm\2."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc1."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc2."),
    # geometry encoder and DETR encoder layers share the layout
    (r"^geometry_encoder\.encode\.", "geometry_encoder.layers."),
    (r"^geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    (r"^transformer\.encoder\.layers\.", "detr_encoder.layers."),
    (r"^(geometry_encoder|detr_encoder)\.layers\.(\d+)\.cross_attn_image\.", r"\1.layers.\2.cross_attn."),
    (r"^(geometry_encoder|detr_encoder)\.layers\.(\d+)\.linear(\d)\.", r"\1.layers.\2.mlp.fc\3."),
    (r"^(geometry_encoder|detr_encoder)\.layers\.(\d+)\.norm(\d)\.", r"\1.layers.\2.layer_norm\3."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.(\d)\.", r"detr_decoder.presence_head.layer<\1>."),
    (r"^transformer\.decoder\.presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (r"^transformer\.decoder\.norm\.", "detr_decoder.output_layer_norm."),
    (r"^transformer\.decoder\.bbox_embed\.layers\.(\d)\.", r"detr_decoder.box_head.layer<\1>."),
    (r"^transformer\.decoder\.instance_bbox_embed\.layers\.(\d)\.", r"detr_decoder.instance_box_head.layer<\1>."),
    (r"^transformer\.decoder\.ref_point_head\.layers\.(\d)\.", r"detr_decoder.ref_point_head.layer<\1>."),
    (r"^transformer\.decoder\.boxRPB_embed_(x|y)\.layers\.(\d)\.", r"detr_decoder.box_rpb_embed_\1.layer<\2>."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear(\d)\.", r"detr_decoder.layers.\1.mlp.fc\2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    (r"^transformer\.decoder\.", "detr_decoder."),
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.(\d)\.", r"dot_product_scoring.text_mlp.layer<\1>."),
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    (r"^segmentation_head\.(?:mask_predictor\.)?mask_embed\.", "mask_decoder.mask_embedder."),
    (r"^segmentation_head\.instance_seg_head\.", "mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
    (r"^segmentation_head\.pixel_decoder\.", "mask_decoder.pixel_decoder."),
)

# The tracker is SAM 2's layout (``Sam3TrackerBase`` follows ``SAM2Base``) under two other module names, with
# SAM 1's two-layer MLP blocks (``lin1``/``lin2``) in the mask decoder's two-way transformer.
_TRACKER_TO_SAM2 = tuple((re.compile(p), r) for p, r in (
    (r"^maskmem_backbone\.", "memory_encoder."),
    (r"^transformer\.encoder\.", "memory_attention."),
    (r"^(sam_mask_decoder\.transformer\.layers\.\d+\.mlp)\.lin(\d)\.",
     lambda m: f"{m.group(1)}.layers.{int(m.group(2)) - 1}."),
))

_DETECTOR = [(re.compile(p), r) for p, r in _DETECTOR_RULES]
_LAYER_SLOT = re.compile(r"layer<(\d)>")


def is_original_sam3(keys) -> bool:
    """True for an original ``sam3.pt`` state dict (detector + tracker, not a transformers one)."""
    keys = set(keys)
    return (_VIT + "patch_embed.proj.weight") in keys and "tracker.sam_mask_decoder.iou_token.weight" in keys


def _apply(rules, key: str) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def _rename_detector(key: str) -> str:
    """The transformers name of an original ``detector.*`` key (fused tensors keep their fused name here)."""
    renamed = "detector_model." + _apply(_DETECTOR, key[len("detector."):])
    renamed = renamed.replace("detector_model.<tracker_neck>.", "tracker_neck.")
    # transformers names the layers of 2/3-layer MLPs layer1..layer3
    return _LAYER_SLOT.sub(lambda m: f"layer{int(m.group(1)) + 1}", renamed)


def _tracker_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``tracker.*`` tensors in transformers' names, through the SAM 2 conversion."""
    from .convert_sam2 import convert_sam2_state_dict

    sam2_layout = {}
    for key, value in state.items():
        if key.startswith("tracker."):
            sam2_layout[_apply(_TRACKER_TO_SAM2, key[len("tracker."):])] = value
    return {"tracker_model." + k: v for k, v in convert_sam2_state_dict(sam2_layout).items()}


def _split_fused(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """``qkv.{weight,bias}`` / ``in_proj_{weight,bias}`` -> the three q/k/v projections (equal row blocks)."""
    if ".qkv." in key:
        q, k, v = value.chunk(3, dim=0)
        return {key.replace(".qkv.", f".{n}_proj."): t for n, t in zip("qkv", (q, k, v))}
    match = re.match(r"^(.*)\.in_proj_(weight|bias)$", key)
    if match:
        q, k, v = value.chunk(3, dim=0)
        return {f"{match.group(1)}.{n}_proj.{match.group(2)}": t for n, t in zip("qkv", (q, k, v))}
    if key.endswith(".out_proj.weight") or key.endswith(".out_proj.bias"):
        if not key.startswith("detector_model.text_encoder."):  # CLIP keeps out_proj
            return {key.replace(".out_proj.", ".o_proj."): value}
    return {key: value}


def _strip_class_token(pos_embed: torch.Tensor) -> torch.Tensor:
    """The ViT's absolute position table without its class-token row (transformers tiles the patch rows only)."""
    count = pos_embed.shape[1]
    if math.isqrt(count) ** 2 == count:
        return pos_embed
    if math.isqrt(count - 1) ** 2 != count - 1:
        raise ValueError(f"sam3: position table with {count} rows is neither n*n nor n*n + 1")
    return pos_embed[:, 1:]


def convert_sam3_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original SAM 3 state dict to transformers ``Sam3VideoModel`` keys (see the module docstring)."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("detector.") or key.endswith(".attn.freqs_cis"):
            continue
        new = _rename_detector(key)
        if new == "detector_model.vision_encoder.backbone.embeddings.position_embeddings":
            value = _strip_class_token(value)
        elif new == "detector_model.text_encoder.text_projection.weight":
            value = value.t()
        converted.update(_split_fused(new, value))
    converted.update(_tracker_state(state))
    other = sorted(k for k in state if not k.startswith(("detector.", "tracker.")))
    if other:
        raise ValueError(f"sam3: tensors outside detector.* / tracker.*: {other[:3]}")
    return converted


def _vit_config(state: Mapping[str, torch.Tensor]) -> dict:
    """ViT sizes from shapes. ``freqs_cis`` (tokens, head_dim / 2) complex: global blocks hold the whole
    (image / patch)^2 grid, windowed blocks one window^2."""
    patch = state[_VIT + "patch_embed.proj.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    depth = count_indexed(state, re.escape(_VIT) + r"blocks\.(\d+)\.")
    tables = [state.get(f"{_VIT}blocks.{i}.attn.freqs_cis") for i in range(depth)]
    if any(t is None for t in tables):
        raise ValueError("sam3: the ViT blocks lack their rotary tables (attn.freqs_cis); not an original sam3.pt")
    tokens = [t.shape[0] for t in tables]
    grid, window = max(tokens), min(tokens)
    head_dim = 2 * tables[0].shape[1]
    pos = state[_VIT + "pos_embed"].shape[1]
    pretrain = math.isqrt(pos if math.isqrt(pos) ** 2 == pos else pos - 1)
    return dict(
        model_type="sam3_vit_model", hidden_size=hidden, num_hidden_layers=depth,
        intermediate_size=state[f"{_VIT}blocks.0.mlp.fc1.weight"].shape[0], num_attention_heads=hidden // head_dim,
        patch_size=patch_size, image_size=math.isqrt(grid) * patch_size, window_size=math.isqrt(window),
        global_attn_indexes=[i for i, n in enumerate(tokens) if n == grid and grid != window],
        pretrain_image_size=pretrain * patch_size,
        # sam3 ViT(norm_layer="LayerNorm") builds partial(nn.LayerNorm, eps=1e-5); transformers defaults to 1e-6
        layer_norm_eps=ORIGINAL_VIT_LAYER_NORM_EPS,
    )


def sam3_config_from_state_dict(state: Mapping[str, torch.Tensor]):
    """A ``Sam3VideoConfig`` for an ORIGINAL-layout SAM 3 state dict, sizes read from the tensor shapes (the
    post-processing thresholds keep transformers' defaults, which are ``build_sam3_video_model``'s)."""
    from transformers import Sam3VideoConfig

    vit = _vit_config(state)
    image_size, patch = vit["image_size"], vit["patch_size"]
    grid = image_size // patch
    feature_sizes = [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2]
    text_width = state[_TEXT + "token_embedding.weight"].shape[1]
    text_heads = max(1, text_width // 64)  # OpenAI CLIP text towers: 64-wide heads (1024 -> 16, as sam3 builds it)
    d_model = state["detector.transformer.decoder.query_embed.weight"].shape[1]
    detector = dict(
        vision_config=dict(model_type="sam3_vision_model", backbone_config=vit, backbone_feature_sizes=feature_sizes,
                           fpn_hidden_size=state["detector.backbone.vision_backbone.convs.0.conv_1x1.weight"].shape[0]),
        text_config=dict(
            model_type="clip_text_model", vocab_size=state[_TEXT + "token_embedding.weight"].shape[0],
            hidden_size=text_width, intermediate_size=state[_TEXT + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            projection_dim=state[_TEXT + "text_projection"].shape[1],
            num_hidden_layers=count_indexed(state, re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\."),
            num_attention_heads=text_heads, max_position_embeddings=state[_TEXT + "positional_embedding"].shape[0],
            hidden_act="gelu"),
        geometry_encoder_config=dict(
            hidden_size=d_model, num_layers=count_indexed(state, r"detector\.geometry_encoder\.encode\.(\d+)\."),
            intermediate_size=state["detector.geometry_encoder.encode.0.linear1.weight"].shape[0]),
        detr_encoder_config=dict(
            hidden_size=d_model, num_layers=count_indexed(state, r"detector\.transformer\.encoder\.layers\.(\d+)\."),
            intermediate_size=state["detector.transformer.encoder.layers.0.linear1.weight"].shape[0]),
        detr_decoder_config=dict(
            hidden_size=d_model, num_layers=count_indexed(state, r"detector\.transformer\.decoder\.layers\.(\d+)\."),
            num_queries=state["detector.transformer.decoder.query_embed.weight"].shape[0],
            intermediate_size=state["detector.transformer.decoder.layers.0.linear1.weight"].shape[0]),
        mask_decoder_config=dict(hidden_size=d_model),
    )
    tracker = dict(
        image_size=image_size,
        vision_config=dict(model_type="sam3_vision_model", backbone_config=dict(vit), backbone_feature_sizes=feature_sizes),
        num_maskmem=state["tracker.maskmem_tpos_enc"].shape[0],
        memory_attention_num_layers=count_indexed(state, r"tracker\.transformer\.encoder\.layers\.(\d+)\."),
        memory_attention_feed_forward_hidden_size=state["tracker.transformer.encoder.layers.0.linear1.weight"].shape[0],
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_output_channels=state["tracker.maskmem_backbone.out_proj.weight"].shape[0],
    )
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker)
    config.image_size = image_size
    config.low_res_mask_size = grid * 4
    return config
