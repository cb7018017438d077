"""Building a ready :class:`VideoUNet` from a base SD-inpainting model and CoCoCo motion weights."""
from __future__ import annotations

import logging
import os
from typing import Mapping

from torch import nn

from .motion_weights import load_motion_weights, merge_motion_state, read_motion_weights
from .video_unet import VideoUNet

log = logging.getLogger(__name__)


def video_unet_from_unet2d(unet: nn.Module, motion, *, device=None, dtype=None) -> VideoUNet:
    """Wrap an already loaded 9-channel ``UNet2DConditionModel`` (taken over, not copied) and load the motion
    weights into it. ``motion``: an official ``model_0..3.pth`` folder, a converted ``.safetensors`` file, a list
    of files, or an already read ``{key: tensor}`` dict (official names, ``module.`` prefixes allowed)."""
    # only what was asked for: diffusers' ``to`` logs a float32 warning whenever a ``dtype`` keyword is present
    moves = {name: value for name, value in (("device", device), ("dtype", dtype)) if value is not None}
    if moves:
        unet = unet.to(**moves)
    state = merge_motion_state([motion]) if isinstance(motion, Mapping) else read_motion_weights(motion)
    video_unet = VideoUNet(unet, motion_init="empty")
    try:
        load_motion_weights(video_unet, state)
    except BaseException:
        video_unet.release()  # leave the caller's U-Net as it was
        raise
    return video_unet


def load_video_unet(base, motion, *, device=None, dtype=None, tokenizer=None, callback=None, cancel=None) -> VideoUNet:
    """The CoCoCo video U-Net from an SD-1.x-inpainting ``base`` and CoCoCo ``motion`` weights.

    ``base``: a diffusers folder (``unet/`` …), a single-file LDM checkpoint (.safetensors; .ckpt read with
    ``weights_only=True``), or an already loaded ``UNet2DConditionModel``. ``motion``: see
    :func:`video_unet_from_unet2d`. Returns a module called as ``unet(sample (B,9,F,h,w), timestep,
    encoder_hidden_states (B,77,D)) -> (B,4,F,h,w)``. ``callback``/``cancel``: progress hooks of the base loading.
    """
    if isinstance(base, nn.Module):
        return video_unet_from_unet2d(base, motion, device=device, dtype=dtype)
    if not isinstance(base, (str, os.PathLike)):
        raise TypeError(f"base must be a path or a UNet2DConditionModel, got {type(base).__name__}")
    from ..checkpoints.base import load_sd_components  # noqa: PLC0415 - imports diffusers

    components = load_sd_components(
        base, components=("unet",), tokenizer=tokenizer, require_in_channels=9, device=device, dtype=dtype,
        callback=callback, cancel=cancel,
    )
    return video_unet_from_unet2d(components.unet, motion)
