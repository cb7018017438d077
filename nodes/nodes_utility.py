"""Utility nodes: release the models the pack keeps loaded between runs; convert official motion weights."""
from __future__ import annotations

import logging

from . import comfy_adapter as comfy
from .common import CATEGORY, check_model, model_input

logger = logging.getLogger(__name__)


class CoCoCoReleaseModels:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "optional": {
                "after": ("*", {"tooltip": "Connect any output to release the models only once it is computed."}),
            }
        }

    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "release"
    CATEGORY = f"{CATEGORY}/utils"
    DESCRIPTION = ("Unloads every CoCoCo, LGVI, GroundingDINO, SAM and metrics CLIP model the pack has loaded from the "
                   "GPU (through ComfyUI's model management) and forgets them in the pack's cache; their RAM is freed "
                   "once ComfyUI drops the loader outputs. ComfyUI's 'Unload models' / 'Free model and node cache' "
                   "do this for every model, the pack's included.")

    @classmethod
    def IS_CHANGED(cls, after=None):
        return float("nan")  # run on every queue

    def release(self, after=None):
        count = comfy.MODEL_CACHE.release()
        return {"ui": {"text": [f"released {count} model(s)"]}, "result": ()}


class CoCoCoConvertMotion:
    DTYPES = ("keep", "fp16", "fp32", "bf16")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "motion_model": model_input("cococo", "The official CoCoCo folder with model_0.pth ... model_3.pth."),
                "dtype": (list(cls.DTYPES), {"default": "fp16", "tooltip": "Cast the weights (fp16 halves the file; "
                          "keep: as stored)."}),
                "check_sd15_layout": ("BOOLEAN", {"default": True, "tooltip": "Check the 21 modules / 840 tensors of "
                                      "the SD-1.5 layout before writing."}),
                "filename_prefix": ("STRING", {"default": "cococo/cococo_motion", "tooltip": "File name inside "
                                    "ComfyUI's output folder; a counter and .safetensors are appended."}),
            }
        }

    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "convert"
    CATEGORY = f"{CATEGORY}/utils"
    DESCRIPTION = ("Converts the official CoCoCo motion weights (pickled model_0..3.pth, read weights-only) into one "
                   "safe .safetensors file in the output folder; move it to models/cococo/ to use it.")

    @classmethod
    def VALIDATE_INPUTS(cls, motion_model):
        return check_model("cococo", motion_model)

    def convert(self, motion_model, dtype, check_sd15_layout, filename_prefix):
        import torch

        from cococo_core.models.motion_weights import check_motion_state, read_motion_weights, save_motion_safetensors
        from cococo_core.models.sd15 import sd15_motion_shapes

        state = read_motion_weights(comfy.resolve_model("cococo", motion_model))
        if check_sd15_layout:
            check_motion_state(sd15_motion_shapes(), state)
        cast = {"keep": None, "fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        path = save_motion_safetensors(state, comfy.output_path(filename_prefix, ".safetensors"), dtype=cast)
        logger.info("wrote %s (%d tensors)", path, len(state))
        return {"ui": {"text": [f"wrote {path.name} ({len(state)} tensors)"]}, "result": ()}


NODE_CLASS_MAPPINGS = {"CoCoCoReleaseModels": CoCoCoReleaseModels, "CoCoCoConvertMotion": CoCoCoConvertMotion}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoReleaseModels": "CoCoCo Release Models",
                              "CoCoCoConvertMotion": "CoCoCo Convert Motion Weights"}
