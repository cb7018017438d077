"""Initialising CoCoCo's motion modules for training (paper, Implementation Details; "Other Details").

"We initialize the temporal attentions with AnimateDiffV2, while the remaining Damped Global Attention and textual
cross-attention components are initialized using the Kaiming method."

AnimateDiff v2 (``mm_sd_v15_v2.ckpt``; AnimateDiff ``animatediff/models/motion_module.py`` with the v2 inference
config: ``num_transformer_block: 1``, ``attention_block_types: [Temporal_Self, Temporal_Self]``,
``temporal_position_encoding_max_len: 32``, ``motion_module_mid_block: true``) stores, per motion module
``{down_blocks.i | mid_block | up_blocks.i}.motion_modules.j.temporal_transformer.``:
``norm``, ``proj_in``, ``proj_out``, ``transformer_blocks.0.attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0}``
(+ ``pos_encoder.pe`` buffers, (1, 32, C)), ``transformer_blocks.0.norms.{0,1}``, ``ff.net.0.proj``, ``ff.net.2``
and ``ff_norm``. CoCoCo's module has the same layout (same 21 places, same names) plus
``attention_blocks.2`` (DGA) / ``.3`` (text cross-attention) and ``norms.2`` / ``.3``. So the mapping is the
identity on the 26 shared tensors per module; the ``pe`` buffers are dropped (CoCoCo computes its encodings);
the DGA and text cross-attention projections get Kaiming-normal weights (He et al. 2015, fan-in, gain 1 for a
linear layer: std = 1/sqrt(fan_in)) and zero biases; their LayerNorms start at (1, 0).
"""
from __future__ import annotations

import logging
import re
from typing import Mapping

import torch

from ...models.video_unet import MOTION_MARKER

log = logging.getLogger(__name__)

NEW_BLOCKS = (2, 3)  # attention_blocks / norms index of DGA and text cross-attention
_NEW = re.compile(r"\.transformer_blocks\.0\.(attention_blocks|norms)\.(\d+)\.")


def is_new_layer(key: str) -> bool:
    """True for DGA / text cross-attention tensors (not in AnimateDiff)."""
    found = _NEW.search(key)
    return bool(found) and int(found.group(2)) in NEW_BLOCKS


def animatediff_to_cococo(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AnimateDiff v1/v2 motion-module tensors under CoCoCo names (``module.`` prefixes and ``pe`` buffers dropped)."""
    out = {}
    for key, tensor in state.items():
        key = key.split("module.", 1)[1] if key.startswith("module.") else key
        if MOTION_MARKER not in "." + key or key.endswith("pos_encoder.pe"):
            continue
        if is_new_layer(key):
            raise ValueError(f"{key}: AnimateDiff files have two temporal attention blocks; this is not one")
        out[key] = tensor
    if not out:
        raise ValueError("no AnimateDiff motion-module tensors found (keys like "
                         "'down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight')")
    return out


def kaiming_init_new_layers(video_unet, generator: torch.Generator | None = None) -> list[str]:
    """Kaiming-normal weights / zero biases for DGA and text cross-attention; LayerNorms to (1, 0). Returns names."""
    touched = []
    with torch.no_grad():
        for name, param in video_unet.unet.named_parameters():
            if MOTION_MARKER not in name or not is_new_layer(name):
                continue
            if ".norms." in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("weight"):
                fan_in = param.shape[1]
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) / fan_in ** 0.5)
            else:
                param.zero_()
            touched.append(name)
    return touched


def load_animatediff(video_unet, state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy AnimateDiff motion weights into the matching CoCoCo tensors (shapes checked, every shared tensor
    required). Returns ``{"loaded": [...], "new": [...]}`` (the new-layer names left to :func:`kaiming_init_new_layers`)."""
    mapped = animatediff_to_cococo(state)
    own = {k: v for k, v in video_unet.unet.state_dict(keep_vars=True).items() if MOTION_MARKER in k}
    shared = sorted(k for k in own if not is_new_layer(k))
    missing = [k for k in shared if k not in mapped]
    wrong = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in shared
             if k in mapped and mapped[k].shape != own[k].shape]
    unexpected = sorted(set(mapped) - set(own))
    if missing or wrong or unexpected:
        raise ValueError(
            "the AnimateDiff weights do not fit this U-Net's motion modules: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(wrong)} wrong shapes (e.g. {wrong[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); mm_sd_v15_v2.ckpt fits SD-1.5 (v1 lacks the "
            "mid-block modules)"
        )
    with torch.no_grad():
        for key in shared:
            own[key].copy_(mapped[key].to(own[key].dtype))
    return {"loaded": shared, "new": sorted(k for k in own if is_new_layer(k))}
