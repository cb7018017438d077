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


def precision_input() -> tuple:
    return (list(comfy.PRECISIONS), {"default": "auto", "tooltip": "Weight and compute dtype. auto: the dtype "
            "ComfyUI picks for the device (fp16 or bf16 on capable GPUs, fp32 on CPU and MPS). bf16 keeps fp32's "
            "range (no fp16 overflow) and is fast on recent GPUs and CPUs with AVX512-BF16/AMX; fp32 gives the "
            "reference numbers."})


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


RESIZE_MASK_TOOLTIP = ("Stretch the mask to the video's frame size when they differ (a mask painted on a smaller or "
                       "larger copy of a frame). Off: a mask of another size is refused.")


def resize_mask_input() -> tuple:
    return ("BOOLEAN", {"default": False, "label_on": "to the video", "label_off": "off", "tooltip": RESIZE_MASK_TOOLTIP})


def mask_for_video(mask: torch.Tensor, images: torch.Tensor, resize: bool) -> torch.Tensor:
    """:func:`mask_in` at the frames' size: stretched when ``resize`` is on; otherwise a mask of another size is
    refused, saying first what to do."""
    from cococo_core.pipeline.frames import resize_mask

    checked = mask_in(mask)
    height, width = int(images.shape[1]), int(images.shape[2])
    if tuple(checked.shape[1:]) == (height, width):
        return checked
    if not resize:
        raise ValueError(f"The mask is {checked.shape[2]}x{checked.shape[1]} but the video frames are {width}x{height}: "
                         "turn on resize_mask on this node to stretch the mask to the video (or paint the mask on a "
                         "frame of this video).")
    return resize_mask(checked, height, width)


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


@contextlib.contextmanager
def on_execution_device(models, memory_required: int = 0):
    """Run the block with ``models`` (objects handed to :func:`comfy_adapter.manage`, or their patchers) loaded
    on ComfyUI's device for a run needing ``memory_required`` bytes of working memory; yields the device.

    Inside ComfyUI they stay loaded afterwards (ComfyUI offloads them when another model needs the room, and
    unloads them on *Unload models* / ``/free``); outside ComfyUI they go back to the CPU.
    """
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    device = comfy.load_for_run(models, memory_required)
    try:
        yield device
    finally:
        comfy.after_run(models)


def modules_on_device(modules, memory_required: int = 0):
    """:func:`on_execution_device` for plain torch modules (e.g. a tracker's): each is handed to ComfyUI's model
    management as a model of its own, once, and lives there as long as the module does."""
    return on_execution_device([comfy.manage(m, {"model": m}) for m in modules if m is not None], memory_required)
