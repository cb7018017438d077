"""Segment Anything: original checkpoint layout -> transformers ``SamModel``, in memory.

Original layout (facebookresearch/segment-anything, ``sam_vit_{b,l,h}_*.pth``; a plain dict of tensors):
``image_encoder.{pos_embed, patch_embed.proj, blocks.N.{norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w}, norm2,
mlp.{lin1, lin2}}, neck.{0,1,2,3}}``, ``prompt_encoder.{pe_layer.positional_encoding_gaussian_matrix,
point_embeddings.N, not_a_point_embed, mask_downscaling.{0,1,3,4,6}, no_mask_embed}``,
``mask_decoder.{transformer.*, iou_token, mask_tokens, output_upscaling.{0,1,3}, output_hypernetworks_mlps.N.layers.M,
iou_prediction_head.layers.M}``, plus the ``pixel_mean``/``pixel_std`` buffers.

The transformers layout renames modules (``image_encoder`` -> ``vision_encoder``, ``blocks`` -> ``layers``, ``norm*``
-> ``layer_norm*``, Sequential indices -> named convs/norms, 3-layer MLPs -> ``proj_in``/``layers.0``/``proj_out``)
and keeps the random-Fourier matrix twice (``shared_image_embedding`` and ``prompt_encoder.shared_embedding``).
The variant (ViT-B/L/H or any other size) is inferred from tensor shapes.
"""
from __future__ import annotations

import logging
import re
from typing import Mapping

import torch

log = logging.getLogger(__name__)

_FOURIER = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_DROPPED = ("pixel_mean", "pixel_std")
# SAM-HQ adds these on top of a frozen SAM; they are dropped with a warning (the SAM part still works as SAM).
_HQ_PREFIXES = ("mask_decoder.hf_token", "mask_decoder.hf_mlp", "mask_decoder.compress_vit_feat",
                "mask_decoder.embedding_encoder", "mask_decoder.embedding_maskfeature")

# (pattern, replacement) applied in order to every key; anchored, so each rule touches only its own module.
_RULES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)
_MLP3 = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$")


def is_original_sam(keys) -> bool:
    """True when ``keys`` look like a segment-anything checkpoint (not a transformers one)."""
    keys = set(keys)
    return "image_encoder.patch_embed.proj.weight" in keys and "mask_decoder.iou_token.weight" in keys


def _rename(key: str, mlp_depths: Mapping[str, int]) -> str:
    for pattern, replacement in _RULES:
        key = re.sub(pattern, replacement, key)
    match = _MLP3.match(key)
    if match:
        prefix, index, rest = match.group(1), int(match.group(2)), match.group(3)
        last = mlp_depths[prefix] - 1
        name = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
        key = f"{prefix}.{name}.{rest}"
    return key


def _mlp_depths(keys) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        match = _MLP3.match(key)
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


def convert_sam_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original SAM state dict to transformers ``SamModel`` keys (tensors are shared, not copied)."""
    hq = sorted(k for k in state if k.startswith(_HQ_PREFIXES))
    if hq:
        log.warning("SAM-HQ checkpoint: its %d HQ tensors are not used; the model runs as plain SAM", len(hq))
    source = {k: v for k, v in state.items() if k not in _DROPPED and k not in hq}
    depths = _mlp_depths(source)
    converted = {_rename(key, depths): value for key, value in source.items()}
    if _FOURIER in source:
        converted["shared_image_embedding.positional_embedding"] = source[_FOURIER]
    return converted


def count_indexed(keys, pattern: str) -> int:
    """1 + the largest index captured by ``pattern``'s first group among ``keys`` (0 when none matches)."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


# segment-anything TwoWayAttentionBlock.norm1..norm4: nn.LayerNorm(embedding_dim), i.e. eps 1e-5.
ORIGINAL_TWO_WAY_LAYER_NORM_EPS = 1e-5


def sam_config_from_state_dict(state: Mapping[str, torch.Tensor]):
    """A ``SamConfig`` matching an ORIGINAL-layout SAM state dict, from its tensor shapes.

    Attention heads are inferred from the relative-position tables (their width is the head dimension); windowed
    and global layers differ in table length (2*window-1 vs 2*grid-1). The mask decoder's head count (8) cannot
    be read from shapes and is SAM's. The two-way transformer's LayerNorms are ``nn.LayerNorm`` with PyTorch's
    default eps 1e-5 in segment-anything (``modeling/transformer.py``), while ``SamMaskDecoderConfig`` defaults to
    1e-6: the original value is set here (:data:`ORIGINAL_TWO_WAY_LAYER_NORM_EPS`).
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    keys = list(state)
    patch = state["image_encoder.patch_embed.proj.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    grid = state["image_encoder.pos_embed"].shape[1]
    layers = count_indexed(keys, r"^image_encoder\.blocks\.(\d+)\.")
    rel_lengths = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(layers)]
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_layers = [i for i, length in enumerate(rel_lengths) if length == 2 * grid - 1]
    windowed = [length for length in rel_lengths if length != 2 * grid - 1]
    window = (windowed[0] + 1) // 2 if windowed else 0
    vision = SamVisionConfig(
        hidden_size=hidden,
        output_channels=state["image_encoder.neck.0.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        image_size=grid * patch_size,
        patch_size=patch_size,
        mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
        window_size=window,
        global_attn_indexes=global_layers,
        num_pos_feats=state[_FOURIER].shape[1],
    )
    prompt_sizes, decoder_sizes = prompt_and_decoder_sizes(state, "prompt_encoder", "mask_decoder", "mlp.lin1")
    prompt = SamPromptEncoderConfig(image_size=grid * patch_size, patch_size=patch_size, **prompt_sizes)
    decoder = SamMaskDecoderConfig(layer_norm_eps=ORIGINAL_TWO_WAY_LAYER_NORM_EPS, **decoder_sizes)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def prompt_and_decoder_sizes(state: Mapping[str, torch.Tensor], prompt: str, decoder: str,
                             first_mlp: str) -> tuple[dict, dict]:
    """Prompt-encoder and mask-decoder config sizes from the shapes of a SAM-family state dict (SAM and SAM 2 share
    these modules; ``prompt``/``decoder``: their key prefixes, ``first_mlp``: the name of the two-way blocks' first
    MLP layer, ``mlp.lin1`` in SAM, ``mlp.layers.0`` in SAM 2)."""
    keys = list(state)
    p, d = re.escape(prompt), re.escape(decoder)
    decoder_hidden = state[f"{decoder}.iou_token.weight"].shape[1]
    cross_dim = state[f"{decoder}.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    prompt_sizes = dict(
        hidden_size=state[f"{prompt}.no_mask_embed.weight"].shape[1],
        mask_input_channels=state[f"{prompt}.mask_downscaling.3.weight"].shape[0],
        num_point_embeddings=count_indexed(keys, rf"^{p}\.point_embeddings\.(\d+)\."),
    )
    decoder_sizes = dict(
        hidden_size=decoder_hidden,
        mlp_dim=state[f"{decoder}.transformer.layers.0.{first_mlp}.weight"].shape[0],
        num_hidden_layers=count_indexed(keys, rf"^{d}\.transformer\.layers\.(\d+)\."),
        attention_downsample_rate=decoder_hidden // cross_dim,
        num_multimask_outputs=state[f"{decoder}.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=count_indexed(keys, rf"^{d}\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=state[f"{decoder}.iou_prediction_head.layers.0.weight"].shape[0],
    )
    return prompt_sizes, decoder_sizes


SAM_VARIANTS = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}


def sam_variant(config) -> str:
    """'vit_b' | 'vit_l' | 'vit_h' for the released sizes, else 'custom (hidden H, L layers)'."""
    vision = config.vision_config
    key = (vision.hidden_size, vision.num_hidden_layers)
    return SAM_VARIANTS.get(key, f"custom (hidden {key[0]}, {key[1]} layers)")
