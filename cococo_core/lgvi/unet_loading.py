"""Load the LGVI video U-Net from an official diffusers-style folder (``<ckpt>/unet/config.json`` +
``diffusion_pytorch_model.safetensors`` / ``.bin`` / sharded index), with a strict key check.

Keys are compared with the model before any weight is copied: missing keys, unexpected keys and
shape mismatches are listed (grouped, so 16 temporal layers read as one line) in a
:class:`CheckpointKeyError`; ``strict=False`` loads what matches and logs the rest instead.
"""
from __future__ import annotations

import logging
import os

import torch

from ..checkpoints.base import folder_weight_files, read_weight_folder
from ..checkpoints.keys import compare_keys, shapes_of
from .unet import LGVIUNet
from .unet_config import LGVIUNetConfig, reconcile_with_weights

logger = logging.getLogger(__name__)

WEIGHT_STEMS = ("diffusion_pytorch_model", "diffusion_pytorch_model.fp16")


class CheckpointKeyError(ValueError):
    """The checkpoint's tensors do not match the model built from its config."""


def find_unet_folder(path: str | os.PathLike) -> str:
    """Accept the checkpoint root (with ``unet/``) or the ``unet`` folder itself."""
    path = os.fspath(path)
    for candidate in (os.path.join(path, "unet"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")) and _has_weights(candidate):
            return candidate
    raise FileNotFoundError(
        f"no LGVI U-Net found at {path}: expected unet/config.json and unet/diffusion_pytorch_model.safetensors "
        f"(the layout of the Hugging Face repos jianzongwu/lgvi and jianzongwu/lgvi-i)"
    )


def _has_weights(folder: str) -> bool:
    try:
        return bool(folder_weight_files(folder, WEIGHT_STEMS))
    except FileNotFoundError:
        return False


def read_unet_state_dict(folder: str) -> dict[str, torch.Tensor]:
    return read_weight_folder(folder, WEIGHT_STEMS)


def load_lgvi_unet(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
) -> LGVIUNet:
    """Build :class:`LGVIUNet` from ``<path>/unet`` (or ``path`` itself) and load its weights."""
    folder = find_unet_folder(path)
    config = LGVIUNetConfig.from_json_file(os.path.join(folder, "config.json"))
    state = read_unet_state_dict(folder)
    config = reconcile_with_weights(config, {key: tuple(value.shape) for key, value in state.items()})
    with torch.device("meta"):
        model = LGVIUNet(config)
    report = compare_keys(shapes_of(model.state_dict()), shapes_of(state))
    if not report.ok:
        message = f"LGVI U-Net checkpoint {folder} does not match its config: {report.summary()}"
        if strict:
            raise CheckpointKeyError(message + ". Check that config.json belongs to these weights, or load with strict=False.")
        logger.warning("%s; loading the matching keys only, the rest keeps its initialisation", message)
        model = LGVIUNet(config)  # real (initialised) parameters for whatever the file lacks
        mismatched = {key for key, _, _ in report.mismatched}
        model.load_state_dict({k: v for k, v in state.items() if k not in mismatched and k not in report.unexpected}, strict=False)
    else:
        model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()
