"""Model configs of SD-1.x components inferred from diffusers-named tensor shapes (single files carry none).

What shapes tell: block widths, layers per block, which levels have attention, in/out channels,
cross-attention width, linear vs 1x1-conv projections (U-Net); widths, layers, latent channels (VAE);
width, layers, MLP width, vocabulary and positions (CLIP). What they cannot tell takes SD-1.5's value:
U-Net ``attention_head_dim=8`` (SD-1.5's config; diffusers reads it as 8 heads), ``norm_num_groups=32``,
``sample_size=64``; VAE ``norm_num_groups=32``, ``scaling_factor=0.18215``, ``sample_size=512``; CLIP
``quick_gelu``, ``layer_norm_eps=1e-5`` and the head count rule :func:`clip_heads`.
"""
from __future__ import annotations

import re
from typing import Mapping

SD15_UNET_DEFAULTS = dict(attention_head_dim=8, norm_num_groups=32, sample_size=64)
SD15_VAE_DEFAULTS = dict(norm_num_groups=32, scaling_factor=0.18215, sample_size=512)


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _indices(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _need(shapes: Mapping, key: str, what: str):
    if key not in shapes:
        raise ValueError(f"cannot infer the {what} config: tensor {key} is missing")
    return _shape(shapes[key])


def unet_config_from_shapes(shapes: Mapping[str, object]) -> dict:
    """diffusers ``UNet2DConditionModel`` config from diffusers-named U-Net shapes."""
    keys = list(shapes)
    levels = _indices(keys, r"down_blocks\.(\d+)\.")
    if not levels:
        raise ValueError("cannot infer the U-Net config: no down_blocks.* tensors")
    widths = tuple(_need(shapes, f"down_blocks.{b}.resnets.0.conv1.weight", "U-Net")[0] for b in levels)
    attention = [any(k.startswith(f"down_blocks.{b}.attentions.") for k in keys) for b in levels]
    up_attention = [any(k.startswith(f"up_blocks.{b}.attentions.") for k in keys) for b in levels]
    conv_in = _need(shapes, "conv_in.weight", "U-Net")
    to_k = sorted(k for k in keys if k.endswith("attn2.to_k.weight"))
    proj_in = sorted(k for k in keys if k.endswith(".proj_in.weight"))
    depth = _indices(keys, r"down_blocks\.\d+\.attentions\.0\.transformer_blocks\.(\d+)\.")
    config = dict(
        SD15_UNET_DEFAULTS,
        in_channels=conv_in[1],
        out_channels=_need(shapes, "conv_out.weight", "U-Net")[0],
        block_out_channels=widths,
        layers_per_block=len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\.")),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention),
        cross_attention_dim=_shape(shapes[to_k[0]])[1] if to_k else 768,
        use_linear_projection=bool(proj_in) and len(_shape(shapes[proj_in[0]])) == 2,
    )
    if depth and len(depth) > 1:
        config["transformer_layers_per_block"] = len(depth)
    if not any(k.startswith("mid_block.attentions.") for k in keys):
        config["mid_block_type"] = None if not any(k.startswith("mid_block.") for k in keys) else "UNetMidBlock2D"
    return config


def vae_config_from_shapes(shapes: Mapping[str, object]) -> dict:
    """diffusers ``AutoencoderKL`` config from diffusers-named VAE shapes."""
    keys = list(shapes)
    levels = _indices(keys, r"encoder\.down_blocks\.(\d+)\.")
    if not levels:
        raise ValueError("cannot infer the VAE config: no encoder.down_blocks.* tensors")
    return dict(
        SD15_VAE_DEFAULTS,
        in_channels=_need(shapes, "encoder.conv_in.weight", "VAE")[1],
        out_channels=_need(shapes, "decoder.conv_out.weight", "VAE")[0],
        block_out_channels=tuple(_need(shapes, f"encoder.down_blocks.{b}.resnets.0.conv1.weight", "VAE")[0] for b in levels),
        layers_per_block=len(_indices(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
        latent_channels=_need(shapes, "post_quant_conv.weight", "VAE")[0],
        down_block_types=("DownEncoderBlock2D",) * len(levels),
        up_block_types=("UpDecoderBlock2D",) * len(levels),
    )


def clip_heads(width: int) -> int:
    """Attention heads of a CLIP text encoder of this width: head size 64 as in every OpenAI CLIP
    (768 -> 12 for SD-1.x's ViT-L/14) when the width is a multiple of 64, else head size 8 (tiny test
    models: 32 -> 4), and at least 1. The weights cannot tell the head count; this rule is exact for SD-1.x."""
    if width >= 64 and width % 64 == 0:
        return width // 64
    return max(1, width // 8)


def clip_config_from_shapes(shapes: Mapping[str, object]) -> dict:
    """transformers ``CLIPTextConfig`` kwargs from CLIP text-encoder shapes (names without ``text_model.``).

    ``bos``/``eos`` token ids are the last two vocabulary entries, as in CLIP (49406/49407 of 49408)."""
    shapes = {k.removeprefix("text_model."): v for k, v in shapes.items()}
    vocab, width = _need(shapes, "embeddings.token_embedding.weight", "text encoder")
    return dict(
        vocab_size=vocab, hidden_size=width,
        max_position_embeddings=_need(shapes, "embeddings.position_embedding.weight", "text encoder")[0],
        intermediate_size=_need(shapes, "encoder.layers.0.mlp.fc1.weight", "text encoder")[0],
        num_hidden_layers=len(_indices(shapes, r"encoder\.layers\.(\d+)\.")),
        num_attention_heads=clip_heads(width),
        hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=width,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=1,
    )
