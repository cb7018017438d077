"""LGVI / LGVI-I language-driven video object removal nodes (thin adapters over ``cococo_core.lgvi``)."""
from __future__ import annotations

import logging

import torch

from . import comfy_adapter as comfy
from .common import (CATEGORY, LGVI_PIPE, check_model, frames_in, frames_out, mask_out, model_input,
                     on_execution_device, seed_input, text_input)

logger = logging.getLogger(__name__)


def load_lgvi(lgvi_model: str, precision: str, text_encoder: bool):
    """A cached ``LGVIPipeline`` on the offload device (it visits the GPU only while removing)."""
    path = comfy.resolve_model("lgvi", lgvi_model)
    dtype = comfy.model_dtype(precision, comfy.torch_device())
    key = (comfy.file_signature(path), str(dtype), text_encoder)

    def load():
        from cococo_core.lgvi import LGVIPipeline

        return LGVIPipeline.from_pretrained(path, device=comfy.offload_device(), dtype=dtype, text_encoder=text_encoder)

    return comfy.MODEL_CACHE.get_or_load("lgvi_pipe", key, load)


def sampling_inputs() -> dict:
    """Widgets shared by the LGVI removal and LGVI-I chat nodes (official defaults, spec §1.10)."""
    return {
        "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Denoising steps of the checkpoint's "
                  "scheduler (official: 50)."}),
        "text_cfg": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip":
                     "Text guidance scale (official: 3.0). 1 with image_cfg 1 disables guidance."}),
        "image_cfg": ("FLOAT", {"default": 1.5, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01, "tooltip":
                      "Video (image) guidance scale of the InstructPix2Pix-style guidance (official: 1.5)."}),
        "seed": seed_input("Random seed of the initial noise and of the VAE posterior samples."),
        "window_length": ("INT", {"default": 24, "min": 1, "max": 256, "tooltip": "Frames per temporal window "
                          "(trained with 24); longer videos are processed in overlapping windows."}),
        "window_overlap": ("INT", {"default": 4, "min": 0, "max": 255, "tooltip": "Frames shared by neighbouring "
                           "windows (blended). Must be smaller than window_length."}),
        "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Working width (0: the input "
                  "width rounded to a multiple of 8). The result comes back at the input size."}),
        "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Working height (0: the "
                   "input height rounded to a multiple of 8)."}),
    }


def run_removal(pipe, images, *, steps, text_cfg, image_cfg, seed, window_length, window_overlap, width, height,
                **conditioning):
    """Run an ``LGVIPipeline`` on IMAGE frames; returns (IMAGE, MASK)."""
    frames = frames_in(images)
    size = None
    if width or height:
        size = (width or frames.shape[2], height or frames.shape[1])
    with on_execution_device(pipe):
        result = pipe(frames, num_inference_steps=steps, guidance_scale=text_cfg, image_guidance_scale=image_cfg,
                      seed=seed, size=size, window_length=window_length, window_overlap=window_overlap,
                      callback=comfy.Progress("LGVI"), cancel=comfy.interrupt_check(), **conditioning)
    mask = result.mask
    if mask is None:
        logger.warning("this LGVI checkpoint has no mask decoder: the MASK output is empty")
        mask = torch.zeros(result.frames.shape[:3])
    return frames_out(result.frames), mask_out(mask)


class CoCoCoLGVILoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgvi_model": model_input("lgvi", "LGVI checkpoint folder (jianzongwu/lgvi: unet/, vae/, scheduler/, "
                                          "text_encoder/, tokenizer/)."),
                "precision": (list(comfy.PRECISIONS), {"default": "auto", "tooltip": "Weight and compute dtype. auto: "
                              "ComfyUI's choice (fp16 on capable GPUs, fp32 on CPU and MPS)."}),
            }
        }

    RETURN_TYPES = (LGVI_PIPE,)
    RETURN_NAMES = ("lgvi_pipe",)
    OUTPUT_TOOLTIPS = ("The LGVI referring-removal model (video U-Net with mask decoder, VAE, CLIP text encoder).",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"
    DESCRIPTION = ("Loads LGVI (Language-Driven Video Inpainting, CVPR 2024) from an official diffusers-layout "
                   "folder. The loaded model is kept in memory for the next runs.")

    @classmethod
    def VALIDATE_INPUTS(cls, lgvi_model):
        return check_model("lgvi", lgvi_model)

    def load(self, lgvi_model, precision):
        return (load_lgvi(lgvi_model, precision, text_encoder=True),)


class CoCoCoLGVIRemove:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgvi_pipe": (LGVI_PIPE, {"tooltip": "The model from LGVI Loader."}),
                "images": ("IMAGE", {"tooltip": "The video frames, one IMAGE per frame."}),
                "expression": text_input("What to remove, as a referring expression.", "remove the man on the left"),
                **sampling_inputs(),
            }
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = ("The frames with the referred object removed, at the input size.",
                       "The region LGVI's mask decoder predicts for the removed object (1 = removed).")
    FUNCTION = "remove"
    CATEGORY = f"{CATEGORY}/LGVI"
    DESCRIPTION = ("LGVI referring video object removal: removes what a text expression refers to from every frame "
                   "and predicts its mask, without a mask input.")

    def remove(self, lgvi_pipe, images, expression, **sampling):
        if not expression.strip():
            raise ValueError("the referring expression is empty; say what to remove, e.g. 'remove the dog'")
        return run_removal(lgvi_pipe, images, text=expression, **sampling)


NODE_CLASS_MAPPINGS = {"CoCoCoLGVILoader": CoCoCoLGVILoader, "CoCoCoLGVIRemove": CoCoCoLGVIRemove}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoLGVILoader": "LGVI Loader", "CoCoCoLGVIRemove": "LGVI Referring Removal"}
