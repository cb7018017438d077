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

_TRACKER_RULES: tuple[tuple[str, str], ...] = (
    (r"^maskmem_backbone\.fuser\.layers\.(\d+)\.dwconv\.", r"memory_encoder.memory_fuser.layers.\1.depthwise_conv."),
    (r"^maskmem_backbone\.fuser\.layers\.(\d+)\.pwconv(\d)\.", r"memory_encoder.memory_fuser.layers.\1.pointwise_conv\2."),
    (r"^maskmem_backbone\.fuser\.layers\.(\d+)\.norm\.", r"memory_encoder.memory_fuser.layers.\1.layer_norm."),
    (r"^maskmem_backbone\.fuser\.layers\.(\d+)\.gamma$", r"memory_encoder.memory_fuser.layers.\1.scale"),
    (r"^maskmem_backbone\.out_proj\.", "memory_encoder.projection."),
    (r"^maskmem_backbone\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^maskmem_backbone\.mask_downsampler\.encoder\.", "memory_encoder.mask_downsampler.encoder."),
    (r"^transformer\.encoder\.norm\.", "memory_attention.layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm(\d)\.", r"memory_attention.layers.\1.layer_norm\2."),
    (r"^transformer\.encoder\.layers\.", "memory_attention.layers."),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^obj_ptr_proj\.layers\.(\d)\.", r"object_pointer_proj.<mlp \1>."),
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin1\.", r"mask_decoder.transformer.layers.\1.mlp.proj_in."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin2\.", r"mask_decoder.transformer.layers.\1.mlp.proj_out."),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^sam_mask_decoder\.(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+)\.layers\.(\d)\.",
     r"mask_decoder.\1.<mlp \2>."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
)

_DETECTOR = [(re.compile(p), r) for p, r in _DETECTOR_RULES]
_TRACKER = [(re.compile(p), r) for p, r in _TRACKER_RULES]
_MLP_SLOT = re.compile(r"<mlp (\d)>")
_LAYER_SLOT = re.compile(r"layer<(\d)>")
_DOWNSAMPLER = re.compile(r"^(tracker_model\.memory_encoder\.mask_downsampler)\.encoder\.(\d+)\.(.*)$")


def is_original_sam3(keys) -> bool:
    """True for an original ``sam3.pt`` state dict (detector + tracker, not a transformers one)."""
    keys = set(keys)
    return (_VIT + "patch_embed.proj.weight") in keys and "tracker.sam_mask_decoder.iou_token.weight" in keys


def _apply(rules, key: str) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def _mlp_depths(keys) -> dict[str, int]:
    """Number of linear layers of each original ``MLP`` (``....layers.N``), keyed by its module path."""
    depths: dict[str, int] = {}
    for key in keys:
        match = re.match(r"^(.*)\.layers\.(\d)\.(?:weight|bias)$", key)
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


def _rename(key: str, depths: Mapping[str, int]) -> str:
    """The transformers name of an original key (fused tensors keep their fused name here)."""
    if key.startswith("detector."):
        renamed = "detector_model." + _apply(_DETECTOR, key[len("detector."):])
        renamed = renamed.replace("detector_model.<tracker_neck>.", "tracker_neck.")
        # transformers names the layers of 2/3-layer MLPs layer1..layer3
        return _LAYER_SLOT.sub(lambda m: f"layer{int(m.group(1)) + 1}", renamed)
    if key.startswith("tracker."):
        renamed = "tracker_model." + _apply(_TRACKER, key[len("tracker."):])
        match = _MLP_SLOT.search(renamed)
        if match:  # MLP layers 0..n-1 -> proj_in, layers.0 .. layers.n-3, proj_out
            index = int(match.group(1))
            depth = depths[key[:key.index(".layers.")]]
            slot = "proj_in" if index == 0 else "proj_out" if index == depth - 1 else f"layers.{index - 1}"
            renamed = renamed[:match.start()] + slot + renamed[match.end():]
        return renamed
    return key


def _downsampler_names(keys) -> dict[str, str]:
    """``encoder.{3k, 3k+1}`` -> ``layers.k.{conv, layer_norm}``; the last index is the final 1x1 conv."""
    indices = {int(m.group(2)) for k in keys if (m := _DOWNSAMPLER.match(k))}
    names = {}
    for key in keys:
        match = _DOWNSAMPLER.match(key)
        if match:
            index = int(match.group(2))
            part = ("final_conv" if index == max(indices) else
                    f"layers.{index // 3}.conv" if index % 3 == 0 else f"layers.{index // 3}.layer_norm")
            names[key] = f"{match.group(1)}.{part}.{match.group(3)}"
    return names


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
    source = {k: v for k, v in state.items() if not k.endswith(".attn.freqs_cis")}
    depths = {k.removeprefix("tracker."): v for k, v in _mlp_depths(source).items()}
    depths = {("tracker." + k): v for k, v in depths.items()}
    renamed = {key: _rename(key, depths) for key in source}
    downsampler = _downsampler_names(renamed.values())
    converted: dict[str, torch.Tensor] = {}
    point_embeddings: dict[int, torch.Tensor] = {}
    for key, new in renamed.items():
        value = source[key]
        new = downsampler.get(new, new)
        point = re.match(r"^tracker_model\.prompt_encoder\.point_embeddings\.(\d+)\.weight$", new)
        if point:
            point_embeddings[int(point.group(1))] = value
            continue
        if new == "detector_model.vision_encoder.backbone.embeddings.position_embeddings":
            value = _strip_class_token(value)
        elif new == "detector_model.text_encoder.text_projection.weight":
            value = value.t()
        converted.update(_split_fused(new, value))
    if point_embeddings:
        converted["tracker_model.prompt_encoder.point_embed.weight"] = torch.cat(
            [point_embeddings[i] for i in sorted(point_embeddings)], dim=0)
    fourier = converted.get("tracker_model.prompt_encoder.shared_embedding.positional_embedding")
    if fourier is not None:
        converted["tracker_model.shared_image_embedding.positional_embedding"] = fourier
    return converted


def _count(keys, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _vit_config(state: Mapping[str, torch.Tensor]) -> dict:
    """ViT sizes from shapes. ``freqs_cis`` (tokens, head_dim / 2) complex: global blocks hold the whole
    (image / patch)^2 grid, windowed blocks one window^2."""
    patch = state[_VIT + "patch_embed.proj.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    depth = _count(state, re.escape(_VIT) + r"blocks\.(\d+)\.")
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
            num_hidden_layers=_count(state, re.escape(_TEXT) + r"transformer\.resblocks\.(\d+)\."),
            num_attention_heads=text_heads, max_position_embeddings=state[_TEXT + "positional_embedding"].shape[0],
            hidden_act="gelu"),
        geometry_encoder_config=dict(
            hidden_size=d_model, num_layers=_count(state, r"detector\.geometry_encoder\.encode\.(\d+)\."),
            intermediate_size=state["detector.geometry_encoder.encode.0.linear1.weight"].shape[0]),
        detr_encoder_config=dict(
            hidden_size=d_model, num_layers=_count(state, r"detector\.transformer\.encoder\.layers\.(\d+)\."),
            intermediate_size=state["detector.transformer.encoder.layers.0.linear1.weight"].shape[0]),
        detr_decoder_config=dict(
            hidden_size=d_model, num_layers=_count(state, r"detector\.transformer\.decoder\.layers\.(\d+)\."),
            num_queries=state["detector.transformer.decoder.query_embed.weight"].shape[0],
            intermediate_size=state["detector.transformer.decoder.layers.0.linear1.weight"].shape[0]),
        mask_decoder_config=dict(hidden_size=d_model),
    )
    tracker = dict(
        image_size=image_size,
        vision_config=dict(model_type="sam3_vision_model", backbone_config=dict(vit), backbone_feature_sizes=feature_sizes),
        num_maskmem=state["tracker.maskmem_tpos_enc"].shape[0],
        memory_attention_num_layers=_count(state, r"tracker\.transformer\.encoder\.layers\.(\d+)\."),
        memory_attention_feed_forward_hidden_size=state["tracker.transformer.encoder.layers.0.linear1.weight"].shape[0],
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_output_channels=state["tracker.maskmem_backbone.out_proj.weight"].shape[0],
    )
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker)
    config.image_size = image_size
    config.low_res_mask_size = grid * 4
    return config
