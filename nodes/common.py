"""Shared pieces of the node classes: type names, widget specs, IMAGE/MASK conversion, device placement.

ComfyUI layouts (comfyui-conventions.md §1.4): IMAGE is a float tensor [frames, H, W, 3] in 0..1 and
MASK is [frames, H, W] (a single [H, W] mask is accepted); the pack's own objects travel under the
type names below, never under core names such as MODEL or VAE.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from . import comfy_adapter as comfy

logger = logging.getLogger(__name__)

CATEGORY = "CoCoCo"
COCOCO_PIPE = "COCOCO_PIPE"
COCOCO_LORAS = "COCOCO_LORAS"
GDINO_MODEL = "GDINO_MODEL"
SAM_MODEL = "SAM_MODEL"
TRACKER_MODEL = "COCOCO_TRACKER"
LGVI_PIPE = "LGVI_PIPE"
LGVII_PIPE = "LGVII_PIPE"
LGVII_CONVERSATION = "LGVII_CONVERSATION"
PACK_TYPES = (COCOCO_PIPE, COCOCO_LORAS, GDINO_MODEL, SAM_MODEL, TRACKER_MODEL, LGVI_PIPE, LGVII_PIPE, LGVII_CONVERSATION)
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # as core KSampler


def model_input(key: str, tooltip: str, accept=None) -> tuple:
    """A combo of the models found in the ``key`` folder(s) (those ``accept(path)`` keeps, when given)."""
    return (comfy.list_models(key, accept), {"tooltip": f"{tooltip} Looked up in models/{key}/."})


def check_model(key: str, name: str) -> bool | str:
    """For VALIDATE_INPUTS: True, or the message naming the file, the folder and where to get it
    (instead of ComfyUI's bare 'value not in list')."""
    try:
        comfy.resolve_model(key, name)
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return True


def files_changed(*paths) -> str:
    """For IS_CHANGED: the identity (sizes, mtimes) of the chosen model files, so a replaced file reloads.
    Names that do not resolve give "" (validation reports them)."""
    signatures = []
    for key, name in paths:
        try:
            signatures.append(comfy.file_signature(comfy.resolve_model(key, name)))
        except (FileNotFoundError, ValueError):
            signatures.append(None)
    return repr(signatures)


def seed_input(tooltip: str = "Random seed of the initial noise (and of the VAE posterior sample).") -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True, "tooltip": tooltip})


def text_input(tooltip: str, default: str = "") -> tuple:
    return ("STRING", {"default": default, "multiline": True, "tooltip": tooltip})


def frames_in(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [F, H, W, C] -> float32 RGB [F, H, W, 3] on the CPU, checked by the library's validation layer
    (NaN refused, overshoots <= 1e-3 clamped, 0..255 floats refused with what to do)."""
    from cococo_core import validation

    return validation.to_float(validation.frames(images, "images", drop_alpha=True))


def mask_in(mask: torch.Tensor) -> torch.Tensor:
    """MASK [F, H, W] or [H, W] -> float32 [F, H, W] in [0, 1] on the CPU (1 = region to fill), checked."""
    from cococo_core import validation

    return validation.mask(mask, "mask")


def frames_out(frames: torch.Tensor) -> torch.Tensor:
    """Frames from the library -> IMAGE on ComfyUI's intermediate device."""
    return frames.to(comfy.intermediate_device(), torch.float32).clamp(0, 1).contiguous()


def mask_out(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(comfy.intermediate_device(), torch.float32).contiguous()


# SD-1.x latent -> approximate RGB (ComfyUI comfy/latent_formats.py SD15.latent_rgb_factors)
SD_LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                              [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])
PREVIEW_SIZE = 512


def latent_preview(latents):
    """Node preview of the middle frame of (B, 4, F, h, w) SD latents, as ComfyUI's latent2rgb previewer
    draws it: ``("JPEG", image, max size)``; None for anything else."""
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != 4:
        return None
    from PIL import Image

    frame = latents[0, :, latents.shape[2] // 2].detach().to("cpu", torch.float32)
    rgb = torch.einsum("chw,cr->hwr", frame, SD_LATENT_RGB)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return ("JPEG", Image.fromarray(pixels), PREVIEW_SIZE)


def progress(description: str) -> comfy.Progress:
    """Progress hook for a sampler: ComfyUI's progress bar with a latent preview of the current step."""
    return comfy.Progress(description, preview=latent_preview)


def _module_bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


@contextlib.contextmanager
def on_execution_device(pipe):
    """Run a pipeline (CoCoCo or LGVI) on ComfyUI's device, then put it back on the offload device.

    ``pipe.to(device)`` moves what the pipeline keeps there (a CoCoCo pipeline loaded with ``offload``
    keeps its text encoder and VAE on the CPU and moves them by itself); room is made for all of it.
    """
    modules = [getattr(pipe, name, None) for name in ("unet", "vae", "text_encoder")]
    with _on_device(pipe.to, _module_bytes(modules)):
        yield pipe


def modules_on_device(modules, reserve=None):
    """Move ``modules`` to ComfyUI's device for the block and back to the offload device after it.

    ComfyUI first evicts its own models to make room for ``reserve`` (default: the modules). Yields the
    execution device.
    """
    return _on_device(lambda device: _place(modules, device),
                      _module_bytes(reserve if reserve is not None else modules))


@contextlib.contextmanager
def _on_device(move, reserve_bytes: int):
    """``move(device)`` for the block after ComfyUI freed ``reserve_bytes`` there; afterwards
    ``move(offload device)`` (unless ComfyUI keeps models on the device, e.g. --highvram), so other nodes
    get the memory back."""
    device, offload = comfy.torch_device(), comfy.offload_device()
    comfy.free_memory(reserve_bytes, device)
    move(device)
    try:
        yield device
    finally:
        if offload != device:
            move(offload)
            comfy.soft_empty_cache()


def _place(modules, device: torch.device) -> None:
    for module in modules:
        if module is not None:
            module.to(device)
