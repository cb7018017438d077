"""SAM 2 / SAM 2.1: original checkpoint layout -> transformers ``Sam2VideoModel``, in memory.

Original files (facebookresearch/sam2, ``sam2.1_hiera_{tiny,small,base_plus,large}.pt`` and ``sam2_hiera_*.pt``)
hold ``{"model": state_dict}`` of ``SAM2Base``: ``image_encoder.{trunk (Hiera), neck (FPN)}``,
``sam_prompt_encoder.*``, ``sam_mask_decoder.*``, ``memory_attention.*``, ``memory_encoder.*``, ``obj_ptr_proj.*``
and the memory parameters ``maskmem_tpos_enc``, ``no_mem_embed``, ``no_mem_pos_enc``, ``no_obj_ptr``,
``mask_downsample``; SAM 2.1 adds ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj`` (its object pointers carry a
projected temporal encoding, ``sam2.1_hiera_*.yaml``: ``add_tpos_enc_to_obj_ptrs``/``proj_tpos_enc_in_obj_ptrs``).

The transformers layout renames modules (``trunk`` -> ``vision_encoder.backbone``, ``norm*`` -> ``layer_norm*``,
``out_proj`` -> ``o_proj``, Sequential indices -> named layers, n-layer MLPs -> ``proj_in``/``layers.i``/
``proj_out``), stacks the four point embeddings into one table and keeps the random-Fourier matrix twice.

Sizes come from tensor shapes (widths, depths, stage boundaries: the first block of each later Hiera stage has a
``proj``). What shapes cannot say is SAM 2's own configuration (``sam2.1_hiera_*.yaml``): the attention heads,
window sizes and global-attention blocks of each released Hiera (:data:`HIERA_LAYOUTS`, keyed by blocks per
stage), one memory-attention head, 8 mask-decoder heads, 7 memory frames, 16 object pointers, 1024 px input.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..convert_sam import count_indexed, prompt_and_decoder_sizes

# blocks per stage -> (released name, stage-1 heads, window size per stage, global-attention blocks), as in
# sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml and the Hiera defaults (``hieradet.py``).
HIERA_LAYOUTS: dict[tuple[int, ...], tuple[str, int, tuple[int, ...], tuple[int, ...]]] = {
    (1, 2, 7, 2): ("tiny", 1, (8, 4, 14, 7), (5, 7, 9)),
    (1, 2, 11, 2): ("small", 1, (8, 4, 14, 7), (7, 10, 13)),
    (2, 3, 16, 3): ("base_plus", 2, (8, 4, 14, 7), (12, 16, 20)),
    (2, 6, 36, 4): ("large", 2, (8, 4, 16, 8), (23, 33, 43)),
}
DEFAULT_IMAGE_SIZE = 1024

_RULES: tuple[tuple[str, str], ...] = (
    # image encoder: Hiera trunk + FPN neck
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^vision_encoder\.backbone\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.backbone.blocks.\1.layer_norm\2."),
    # prompt encoder
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    # mask decoder
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    # memory attention
    (r"^memory_attention\.layers\.(\d+)\.norm(\d)\.", r"memory_attention.layers.\1.layer_norm\2."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"^(mask_decoder|memory_attention)\.(.*)\.out_proj\.", r"\1.\2.o_proj."),
    # memory encoder
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.gamma$", r"memory_encoder.memory_fuser.layers.\1.scale"),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.dwconv\.", r"memory_encoder.memory_fuser.layers.\1.depthwise_conv."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.norm\.", r"memory_encoder.memory_fuser.layers.\1.layer_norm."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.pwconv(\d)\.",
     r"memory_encoder.memory_fuser.layers.\1.pointwise_conv\2."),
    # memory parameters and object pointers
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
)
# n-layer MLPs (``sam2_utils.MLP``): layers.0 -> proj_in, layers.{n-1} -> proj_out, layers.i -> layers.{i-1}
_MLP = re.compile(r"^(vision_encoder\.backbone\.blocks\.\d+\.mlp|mask_decoder\.transformer\.layers\.\d+\.mlp"
                  r"|mask_decoder\.output_hypernetworks_mlps\.\d+|mask_decoder\.iou_prediction_head"
                  r"|mask_decoder\.pred_obj_score_head|object_pointer_proj)\.layers\.(\d+)\.(.*)$")
# MaskDownSampler: encoder = [conv, LayerNorm2d, GELU] * n + final 1x1 conv
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.*)$")
_POINT_EMBEDDING = re.compile(r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_FOURIER = "prompt_encoder.shared_embedding.positional_embedding"


def is_original_sam2(keys) -> bool:
    """True when ``keys`` look like a facebookresearch/sam2 checkpoint (Hiera trunk + memory modules)."""
    keys = set(keys)
    return ("image_encoder.trunk.patch_embed.proj.weight" in keys and "maskmem_tpos_enc" in keys
            and "memory_attention.norm.weight" in keys and "sam_mask_decoder.iou_token.weight" in keys)


def _depths(keys, pattern: re.Pattern) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        match = pattern.match(key)
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


def _rename(key: str) -> str:
    for pattern, replacement in _RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_sam2_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original SAM 2 / 2.1 state dict to transformers ``Sam2VideoModel`` keys."""
    renamed = {_rename(key): value for key, value in state.items()}
    mlp_depths = _depths(renamed, _MLP)
    downsampler_last = max((int(m.group(1)) for k in renamed if (m := _DOWNSAMPLER.match(k))), default=-1)
    converted: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in renamed.items():
        if match := _MLP.match(key):
            prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
            last = mlp_depths[prefix] - 1
            name = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
            key = f"{prefix}.{name}.{rest}"
        elif match := _DOWNSAMPLER.match(key):
            index, rest = int(match.group(1)), match.group(2)
            if index == downsampler_last:
                key = f"memory_encoder.mask_downsampler.final_conv.{rest}"
            elif index % 3 == 0:
                key = f"memory_encoder.mask_downsampler.layers.{index // 3}.conv.{rest}"
            elif index % 3 == 1:
                key = f"memory_encoder.mask_downsampler.layers.{index // 3}.layer_norm.{rest}"
            else:  # GELU has no tensors
                raise ValueError(f"unexpected mask down-sampler tensor {key}")
        elif match := _POINT_EMBEDDING.match(key):
            points[int(match.group(1))] = value
            continue
        converted[key] = value
    if points:
        if sorted(points) != list(range(len(points))):
            raise ValueError(f"point embeddings {sorted(points)} are not numbered 0..n-1")
        converted["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in range(len(points))], 0)
    if _FOURIER in converted:
        converted["shared_image_embedding.positional_embedding"] = converted[_FOURIER]
    return converted


def _hiera_stages(state: Mapping[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """(blocks per stage, width per stage): a new stage starts at each block with a ``proj`` (width change)."""
    blocks = count_indexed(state, r"^image_encoder\.trunk\.blocks\.(\d+)\.")
    starts = [0] + [i for i in range(1, blocks) if f"image_encoder.trunk.blocks.{i}.proj.weight" in state]
    ends = starts[1:] + [blocks]
    per_stage = [end - start for start, end in zip(starts, ends)]
    widths = [state[f"image_encoder.trunk.blocks.{start}.attn.qkv.weight"].shape[0] // 3 for start in starts]
    return per_stage, widths


def hiera_variant(state: Mapping[str, torch.Tensor]) -> str:
    per_stage, widths = _hiera_stages(state)
    layout = HIERA_LAYOUTS.get(tuple(per_stage))
    name = layout[0] if layout else f"custom {per_stage}"
    return f"{name} (width {widths[0]})" if layout and widths[0] not in (96, 112, 144) else name


def sam2_config_from_state_dict(state: Mapping[str, torch.Tensor], image_size: int = DEFAULT_IMAGE_SIZE):
    """A ``Sam2VideoConfig`` matching an ORIGINAL-layout SAM 2 / 2.1 state dict (see the module docstring)."""
    from transformers import (Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoMaskDecoderConfig,
                              Sam2VideoPromptEncoderConfig, Sam2VisionConfig)

    keys = list(state)
    per_stage, widths = _hiera_stages(state)
    layout = HIERA_LAYOUTS.get(tuple(per_stage))
    if layout is None:
        raise ValueError(
            f"Hiera with {per_stage} blocks per stage is none of SAM 2's released image encoders "
            f"({', '.join(f'{v[0]} {list(k)}' for k, v in HIERA_LAYOUTS.items())}); its window sizes and "
            "global-attention blocks are unknown")
    _, heads, windows, global_blocks = layout
    trunk = "image_encoder.trunk"
    hidden = state[f"{trunk}.patch_embed.proj.weight"].shape[0]
    if state[f"{trunk}.pos_embed_window"].shape[-1] != windows[0]:
        raise ValueError(f"Hiera {layout[0]}: window embedding {tuple(state[f'{trunk}.pos_embed_window'].shape)} "
                         f"does not fit the first stage's window {windows[0]}")
    hiera = Sam2HieraDetConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        image_size=[image_size, image_size],
        patch_kernel_size=list(state[f"{trunk}.patch_embed.proj.weight"].shape[-2:]),
        window_positional_embedding_background_size=list(state[f"{trunk}.pos_embed"].shape[-2:]),
        blocks_per_stage=per_stage,
        embed_dim_per_stage=widths,
        num_attention_heads_per_stage=[heads * 2 ** i for i in range(len(per_stage))],
        window_size_per_stage=list(windows),
        global_attention_blocks=list(global_blocks),
        mlp_ratio=state[f"{trunk}.blocks.0.mlp.layers.0.weight"].shape[0] / hidden,
    )
    convs = count_indexed(keys, r"^image_encoder\.neck\.convs\.(\d+)\.")
    fpn = state["image_encoder.neck.convs.0.conv.weight"].shape[0]
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[state[f"image_encoder.neck.convs.{i}.conv.weight"].shape[1] for i in range(convs)],
        backbone_feature_sizes=[[image_size // 4] * 2, [image_size // 8] * 2, [image_size // 16] * 2],
        fpn_hidden_size=fpn,
    )
    prompt_sizes, decoder_sizes = prompt_and_decoder_sizes(state, "sam_prompt_encoder", "sam_mask_decoder",
                                                           "mlp.layers.0")
    prompt = Sam2VideoPromptEncoderConfig(image_size=image_size, **prompt_sizes)
    decoder = Sam2VideoMaskDecoderConfig(**decoder_sizes)
    memory_hidden = state["memory_attention.norm.weight"].shape[0]
    sam2_1 = "obj_ptr_tpos_proj.weight" in state
    feature_grid = image_size // 16
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
        image_size=image_size,
        num_maskmem=state["maskmem_tpos_enc"].shape[0],
        enable_occlusion_spatial_embedding="no_obj_embed_spatial" in state,
        enable_temporal_pos_encoding_for_object_pointers=sam2_1,
        memory_attention_hidden_size=memory_hidden,
        memory_attention_num_layers=count_indexed(keys, r"^memory_attention\.layers\.(\d+)\."),
        memory_attention_feed_forward_hidden_size=state["memory_attention.layers.0.linear1.weight"].shape[0],
        memory_attention_rope_feat_sizes=[feature_grid, feature_grid],
        **memory_encoder_sizes(state),
    )


def memory_encoder_sizes(state: Mapping[str, torch.Tensor]) -> dict:
    """The memory encoder's config sizes (``Sam2VideoConfig`` / ``EdgeTamVideoConfig`` share them) from the shapes
    of an original-layout state dict: pixel projection, output width, mask down-sampler (conv, LayerNorm2d, GELU
    per stride-2 step, then a 1x1 conv) and the ConvNeXt fuser."""
    keys = list(state)
    downsampler_convs = count_indexed(keys, r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.") // 3
    fuser = "memory_encoder.fuser.layers.0"
    return dict(
        memory_encoder_hidden_size=state["memory_encoder.pix_feat_proj.weight"].shape[0],
        memory_encoder_output_channels=state["memory_encoder.out_proj.weight"].shape[0],
        mask_downsampler_embed_dim=state[f"memory_encoder.mask_downsampler.encoder.{3 * downsampler_convs}.weight"]
        .shape[0],
        mask_downsampler_total_stride=2 ** downsampler_convs,
        memory_fuser_num_layers=count_indexed(keys, r"^memory_encoder\.fuser\.layers\.(\d+)\."),
        memory_fuser_embed_dim=state[f"{fuser}.dwconv.weight"].shape[0],
        memory_fuser_intermediate_dim=state[f"{fuser}.pwconv1.weight"].shape[0],
        memory_fuser_kernel_size=state[f"{fuser}.dwconv.weight"].shape[-1],
        memory_fuser_padding=state[f"{fuser}.dwconv.weight"].shape[-1] // 2,
    )


def sam2_version(state: Mapping[str, torch.Tensor]) -> str:
    """'sam2.1' when the file has SAM 2.1's projected temporal encoding of object pointers, else 'sam2'."""
    return "sam2.1" if "obj_ptr_tpos_proj.weight" in state else "sam2"
