"""Configuration of the LGVI video U-Net (``RoviModel`` in the official code, ``unet/config.json``).

The official config is a diffusers ``UNet2DConditionModel`` config plus five LGVI keys
(``temp_attn``, ``ref_frame_type_2``, ``cross_frame_type``, ``mask_decoder_type``, ``lan_cross_attn``).
Known quirks of the published files (spec §1.2-1.3, issue #5):

* a key ``st_attn: false`` that the official ``RoviModel`` does not read (diffusers warned about it,
  issue #5) -> known, ignored, logged at debug level; other unknown keys are ignored with a warning;
* ``cross_attention_dim`` may be absent (code default 1280) although the weights are 768-d;
* ``in_channels`` decides the video conditioning: 8 = concat, 4 = zero-initialised ``condition_conv_in``.

:func:`reconcile_with_weights` therefore reads the architecture facts that the weights pin down
(input channels, cross-attention width, temporal attention, mask decoder) and logs every place where
the JSON disagrees with them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Mapping

logger = logging.getLogger(__name__)

SD_DOWN_BLOCKS = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
SD_UP_BLOCKS = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
_BLOCK_ALIASES = {  # 2-D names (diffusers / MagicBrush configs) map to the same inflated blocks
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
    "UpBlock2D": "UpBlock3D",
}
# Keys of the official config that carry no architecture, or whose only supported value is the default.
_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "sample_size", "act_fn", "mid_block_type"}
# Keys the published configs carry although the official model has no such argument.
_KNOWN_UNUSED = {"st_attn"}
_MUST_BE_DEFAULT = {
    "ref_frame_type_2": None,  # SpatialTemporalAttention: defined but never instantiated upstream
    "cross_frame_type": None,
    "lan_cross_attn": False,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
}


@dataclasses.dataclass(frozen=True)
class LGVIUNetConfig:
    in_channels: int = 8
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8  # legacy diffusers meaning: number of heads
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    center_input_sample: bool = False
    upcast_attention: bool = False
    temp_attn: bool = True
    mask_decoder_type: str | None = "MaskDecoder"
    down_block_types: tuple[str, ...] = SD_DOWN_BLOCKS
    up_block_types: tuple[str, ...] = SD_UP_BLOCKS

    def __post_init__(self):
        if self.in_channels not in (4, 8):
            raise ValueError(
                f"LGVI U-Net in_channels must be 8 (noisy+video latents concatenated) or 4 (separate "
                f"condition_conv_in); the config says {self.in_channels}"
            )
        if self.mask_decoder_type not in (None, "MaskDecoder"):
            raise ValueError(f"unknown mask_decoder_type {self.mask_decoder_type!r}; expected 'MaskDecoder' or null")
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(self.block_out_channels):
            raise ValueError("down_block_types / up_block_types must have one entry per block_out_channels entry")

    def heads(self) -> tuple[int, ...]:
        """Attention heads per resolution level (``attention_head_dim`` is a head count, as in SD-1.x configs)."""
        if isinstance(self.attention_head_dim, int):
            return (self.attention_head_dim,) * len(self.block_out_channels)
        return tuple(self.attention_head_dim)

    @classmethod
    def from_dict(cls, raw: Mapping) -> "LGVIUNetConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        values, unknown = {}, []
        for key, value in raw.items():
            if key in fields:
                values[key] = tuple(value) if isinstance(value, list) else value
            elif key in _MUST_BE_DEFAULT:
                default = _MUST_BE_DEFAULT[key]
                if value != default and not (key == "only_cross_attention" and not any(_as_list(value))):
                    raise ValueError(
                        f"unet config sets {key}={value!r}; only {default!r} is supported (the released "
                        f"LGVI / LGVI-I checkpoints do not use this feature)"
                    )
            elif key in _KNOWN_UNUSED:
                logger.debug("LGVI unet config: %s=%r is not an argument of the official model; ignored", key, value)
            elif key not in _IGNORED:
                unknown.append(key)
        if unknown:
            logger.warning("LGVI unet config: ignoring unknown keys %s", ", ".join(sorted(unknown)))
        for key in ("down_block_types", "up_block_types"):
            if key in values:
                values[key] = tuple(_BLOCK_ALIASES.get(name, name) for name in values[key])
                allowed = set(SD_DOWN_BLOCKS if key == "down_block_types" else SD_UP_BLOCKS)
                if not set(values[key]) <= allowed:
                    raise ValueError(f"unsupported {key} {values[key]}; expected SD-1.x blocks {sorted(allowed)}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LGVIUNetConfig":
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]


def reconcile_with_weights(config: LGVIUNetConfig, shapes: Mapping[str, tuple[int, ...]]) -> LGVIUNetConfig:
    """Override config fields that the checkpoint's tensor shapes determine, warning on each disagreement."""
    found = {}
    conv_in = shapes.get("conv_in.weight")
    if conv_in is not None and conv_in[1] in (4, 8):
        found["in_channels"] = conv_in[1]
    to_k = shapes.get("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    if to_k is not None:
        found["cross_attention_dim"] = to_k[1]
    found["temp_attn"] = any(".attn_temp." in key for key in shapes)
    found["mask_decoder_type"] = "MaskDecoder" if any(key.startswith("mask_decoder.") for key in shapes) else None
    changes = {key: value for key, value in found.items() if getattr(config, key) != value}
    for key, value in changes.items():
        logger.warning(
            "LGVI unet config says %s=%r but the weights imply %r; following the weights", key, getattr(config, key), value
        )
    return dataclasses.replace(config, **changes) if changes else config
