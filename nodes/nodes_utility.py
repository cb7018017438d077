"""Utility node: release the models the pack keeps loaded between runs."""
from __future__ import annotations

from . import comfy_adapter as comfy
from .common import CATEGORY


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
    DESCRIPTION = ("Frees every CoCoCo, LGVI, GroundingDINO and SAM model the pack keeps loaded between runs (RAM and "
                   "VRAM). ComfyUI's 'Free model and node cache' button does the same.")

    @classmethod
    def IS_CHANGED(cls, after=None):
        return float("nan")  # run on every queue

    def release(self, after=None):
        count = comfy.MODEL_CACHE.release()
        return {"ui": {"text": [f"released {count} model(s)"]}, "result": ()}


NODE_CLASS_MAPPINGS = {"CoCoCoReleaseModels": CoCoCoReleaseModels}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoReleaseModels": "CoCoCo Release Models"}
