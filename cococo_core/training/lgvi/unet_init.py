"""The LGVI video U-Net a training run starts from (paper §5.1 "Implementation details"; spec §4).

* From a 2-D InstructPix2Pix / MagicBrush diffusers folder (``unet/config.json`` of a
  ``UNet2DConditionModel`` + its weights): the 2-D weights are loaded into the inflated model (the
  official ``RoviModel.from_pretrained_2d`` keeps the 2-D key names), the new modules (temporal
  attention, whose output projection is zero-initialised, and the mask decoder) start from scratch.
  Video conditioning follows ``in_channels``: 8 = concatenation through the 2-D ``conv_in`` (MagicBrush
  is already an 8-channel model; a 4-channel SD U-Net gets zero columns for the video latent, as
  InstructPix2Pix does), 4 = paper eq. 2, ``conv_in`` on the noisy latent plus a zero-initialised
  ``condition_conv_in`` on the video latent.
* From an LGVI / LGVI-I folder (``unet/`` with temporal layers): the LGVI weights as they are.

Every key of the 2-D file is accounted for before anything is copied (:func:`~cococo_core.checkpoints.keys.compare_keys`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from ...checkpoints.keys import compare_keys, shapes_of
from ...lgvi.unet import LGVIUNet
from ...lgvi.unet_config import _MUST_BE_DEFAULT, LGVIUNetConfig
from ...lgvi.unet_loading import CheckpointKeyError, find_unet_folder, load_lgvi_unet, read_unet_state_dict

logger = logging.getLogger(__name__)

NEW_MODULES = (".attn_temp.", ".norm_temp.", ".mask_decoder.", ".condition_conv_in.")  # the modules LGVI adds


def is_lgvi_folder(path: str | os.PathLike) -> bool:
    """True for an LGVI / LGVI-I checkpoint (its U-Net has temporal attention), False for a 2-D U-Net."""
    folder = find_unet_folder(path)
    return any(".attn_temp." in key for key in read_unet_state_dict(folder))


def build_unet(path: str | os.PathLike, *, in_channels: int | None = None, mask_decoder: bool = True) -> LGVIUNet:
    """The trainable U-Net: loaded from an LGVI folder, or inflated from a 2-D one (float32, train mode)."""
    if is_lgvi_folder(path):
        unet = load_lgvi_unet(path)
        if in_channels is not None and in_channels != unet.config.in_channels:
            raise ValueError(f"{path} is an LGVI checkpoint with in_channels={unet.config.in_channels}; "
                             f"in_channels={in_channels} applies only when inflating a 2-D U-Net")
        return unet.train()
    return inflate_2d_unet(path, in_channels=in_channels, mask_decoder=mask_decoder).train()


def inflate_2d_unet(path: str | os.PathLike, *, in_channels: int | None = None, mask_decoder: bool = True) -> LGVIUNet:
    folder = find_unet_folder(path)
    raw = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    state = read_unet_state_dict(folder)
    source_channels = int(state["conv_in.weight"].shape[1])
    target_channels = int(in_channels or (8 if source_channels == 8 else source_channels))
    # the architecture keys the LGVI config knows (newer diffusers keys carry defaults; the key check below
    # catches any that change a shape)
    known = {field.name for field in dataclasses.fields(LGVIUNetConfig)} | set(_MUST_BE_DEFAULT)
    raw = {key: value for key, value in raw.items() if key in known}
    raw = {**raw, "in_channels": target_channels, "temp_attn": True,
           "mask_decoder_type": "MaskDecoder" if mask_decoder else None}
    config = LGVIUNetConfig.from_dict(raw)
    unet = LGVIUNet(config)
    state = _adapt_conv_in(state, unet, source_channels, target_channels)
    report = compare_keys(shapes_of(unet.state_dict()), shapes_of(state))
    missing_new = [key for key in report.missing if any(marker in "." + key for marker in NEW_MODULES)]
    if report.unexpected or report.mismatched or len(missing_new) != len(report.missing):
        raise CheckpointKeyError(
            f"the 2-D U-Net at {folder} does not fit the inflated LGVI U-Net: {report.summary()} "
            f"(only temporal attention, the mask decoder and condition_conv_in may be new)"
        )
    unet.load_state_dict(state, strict=False)
    logger.info("inflated %s: %d 2-D tensors loaded, %d new (temporal attention / mask decoder)", folder,
                len(state), len(report.missing))
    return unet


def _adapt_conv_in(state: dict, unet: LGVIUNet, source: int, target: int) -> dict:
    """Fit the 2-D ``conv_in`` to the chosen conditioning: 8 -> 8 and 4 -> 4 unchanged; 4 -> 8 with zero
    columns for the video latent (InstructPix2Pix); 8 -> 4 keeps the noisy-latent columns (the video
    latent then enters through the zero-initialised ``condition_conv_in``)."""
    if source == target:
        return state
    weight = state["conv_in.weight"]
    if source == 4 and target == 8:
        weight = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    elif source == 8 and target == 4:
        weight = weight[:, :4]
    else:
        raise ValueError(f"cannot adapt a {source}-channel conv_in to in_channels={target}")
    logger.info("conv_in adapted from %d to %d input channels", source, target)
    return {**state, "conv_in.weight": weight.contiguous()}


def official_unet_config(config: LGVIUNetConfig) -> dict:
    """``unet/config.json`` as the official ``RoviModel`` writes it (the pack and the official code read it)."""
    data = config.to_dict()
    data.update(_class_name="RoviModel", _diffusers_version="0.21.4", act_fn="silu", sample_size=64,
                ref_frame_type_2=None, cross_frame_type=None, lan_cross_attn=False, dual_cross_attention=False,
                use_linear_projection=False, only_cross_attention=False, class_embed_type=None, num_class_embeds=None,
                resnet_time_scale_shift="default")
    return data


def enable_gradient_checkpointing(unet: LGVIUNet) -> int:
    """Recompute every ResNet and transformer of the U-Net in the backward pass (activation memory for
    compute); the module tree and state-dict keys stay unchanged. Returns the number of wrapped modules."""
    from diffusers.models.resnet import ResnetBlock2D  # noqa: PLC0415
    from torch.utils.checkpoint import checkpoint  # noqa: PLC0415

    from ...lgvi.layers import VideoTransformer  # noqa: PLC0415

    count = 0
    for module in unet.modules():
        if isinstance(module, (ResnetBlock2D, VideoTransformer)) and "forward" not in vars(module):
            plain = module.forward

            def forward(*args, _plain=plain, **kwargs):
                if not torch.is_grad_enabled():
                    return _plain(*args, **kwargs)
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

            module.forward = forward
            count += 1
    return count
