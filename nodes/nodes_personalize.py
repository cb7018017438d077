"""Personalization nodes: the CoCoCo task-vector merge θ = θ_base + α·τ_ip + β·τ_p (AAAI 2025, §3.4),
a LoRA list, and saving the merged checkpoint (thin adapters over ``cococo_core.personalize``)."""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

from . import comfy_adapter as comfy
from .common import CATEGORY, COCOCO_LORAS, COCOCO_PIPE, check_model
from .nodes_cococo import BASE_KEYS, manage_pipeline, split_base_name

logger = logging.getLogger(__name__)

NONE = "(none)"


def optional_model_names(keys=BASE_KEYS) -> list[str]:
    return [NONE] + [f"{key}/{name}" for key in keys for name in comfy.list_models(key)]


def resolve_optional(name: str) -> Path | None:
    if name == NONE:
        return None
    key, relative = split_base_name(name)
    return comfy.resolve_model(key, relative)


def _check_optional(name: str) -> bool | str:
    if name == NONE:
        return True
    try:
        key, relative = split_base_name(name)
    except ValueError as error:
        return str(error)
    return check_model(key, relative)


def copy_sharing_motion(pipeline):
    """A deep copy of a ``CoCoCoPipeline`` whose motion modules stay shared with the original: the merge never
    changes them (cococo_core.personalize.plan), so only the SD weights are duplicated (saves ~606 M params)."""
    shared = {id(t): t for name, t in pipeline.unet.unet.named_parameters() if ".motion_modules." in name}
    shared.update({id(t): t for name, t in pipeline.unet.unet.named_buffers() if ".motion_modules." in name})
    patcher = getattr(pipeline, "patcher", None)
    if patcher is not None:
        shared[id(patcher)] = None  # the original's ComfyUI patcher: the copy gets its own (manage_pipeline)
    return copy.deepcopy(pipeline, memo=shared)


class CoCoCoLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": (comfy.list_models("loras"), {"tooltip": "An SD-1.5 LoRA (kohya, LyCORIS, diffusers or "
                              "PEFT keys; SDXL and SD-2 LoRAs are refused). Looked up in models/loras/."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip": "Scale of "
                             "this LoRA's weight delta inside τ_p."}),
            },
            "optional": {
                "loras": (COCOCO_LORAS, {"tooltip": "LoRAs chained before this one (connect another CoCoCo LoRA node "
                          "to merge several)."}),
            },
        }

    RETURN_TYPES = (COCOCO_LORAS,)
    RETURN_NAMES = ("loras",)
    OUTPUT_TOOLTIPS = ("The list of LoRAs with their strengths, for CoCoCo Personalize.",)
    FUNCTION = "add"
    CATEGORY = f"{CATEGORY}/personalize"
    DESCRIPTION = "Adds a LoRA and its strength to a list of LoRAs merged by CoCoCo Personalize."

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return check_model("loras", lora_name)

    def add(self, lora_name, strength, loras=()):
        return (tuple(loras) + ((comfy.resolve_model("loras", lora_name), float(strength)),),)


class CoCoCoPersonalize:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cococo_pipe": (COCOCO_PIPE, {"tooltip": "The CoCoCo model to personalize (it is copied; the "
                                "loaded one stays as it was)."}),
                "sd15_base": (optional_model_names(), {"default": NONE, "tooltip": "Plain SD-1.5 (4 channels), the "
                              "reference of both task vectors: needed for a personalized checkpoint or alpha != 1. "
                              "LoRAs alone with alpha 1 need none."}),
                "personal_model": (optional_model_names(), {"default": NONE, "tooltip": "A DreamBooth / fine-tuned "
                                   "SD-1.5 checkpoint (Civitai style); its difference to SD-1.5 is τ_p."}),
                "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Weight of the "
                          "inpainting task vector τ_ip (1: the inpainting model as it is)."}),
                "beta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "Weight of the "
                         "personalization task vector τ_p (the official README suggests 0.75 for checkpoints)."}),
            },
            "optional": {
                "loras": (COCOCO_LORAS, {"tooltip": "LoRAs from CoCoCo LoRA nodes, added to τ_p with their "
                          "strengths (times beta)."}),
            },
        }

    SEARCH_ALIASES = ["task vector", "merge lora", "dreambooth", "personalize video inpainting"]
    RETURN_TYPES = (COCOCO_PIPE, "STRING")
    RETURN_NAMES = ("cococo_pipe", "report")
    OUTPUT_TOOLTIPS = ("The personalized CoCoCo model.", "What was merged: weights changed per component, "
                       "unused LoRA keys and notes.")
    FUNCTION = "personalize"
    CATEGORY = f"{CATEGORY}/personalize"
    DESCRIPTION = ("Personalizes CoCoCo by task vectors: θ = θ_base + α·(θ_inpaint − θ_base) + β·τ_p, with τ_p from "
                   "a DreamBooth checkpoint and/or LoRAs. The motion modules are left unchanged.")

    # One input named (ComfyUI repeats the message on every named input); sd15_base gets ComfyUI's list check.
    @classmethod
    def VALIDATE_INPUTS(cls, personal_model):
        return _check_optional(personal_model)

    def personalize(self, cococo_pipe, sd15_base, personal_model, alpha, beta, loras=()):
        from cococo_core.personalize import LoraSpec, MergeRecipe, WeightBackup, personalize_modules

        if cococo_pipe.recipe is not None:
            raise ValueError("this CoCoCo model is already personalized; put the checkpoint and all LoRAs into one "
                             "CoCoCo Personalize node (chain CoCoCo LoRA nodes for several LoRAs)")
        base, personal = resolve_optional(sd15_base), resolve_optional(personal_model)
        if personal is None and not loras and alpha == 1.0:
            raise ValueError("nothing to personalize: choose a personal_model, connect LoRAs, or set alpha != 1")
        specs = [LoraSpec(str(path), strength, name=Path(path).name) for path, strength in loras]
        recipe = MergeRecipe(inpaint=str(cococo_pipe.base), base=base and str(base), personal=personal and str(personal),
                             loras=specs, alpha=alpha, beta=beta)
        key = (cococo_pipe.lineage, base and comfy.file_signature(base), personal and comfy.file_signature(personal),
               tuple(comfy.file_signature(p) + (s,) for p, s in loras), alpha, beta)

        def merge():
            pipeline = copy_sharing_motion(cococo_pipe.pipeline)
            targets = {"unet": pipeline.unet.unet, "text_encoder": pipeline.text_encoder, "vae": pipeline.vae}
            live_recipe = dataclasses.replace(recipe, inpaint=None)  # the copy's own weights are the originals
            result = personalize_modules(targets, live_recipe, backup=WeightBackup(), callback=comfy.Progress("merge"),
                                         cancel=comfy.interrupt_check())
            return dataclasses.replace(cococo_pipe, pipeline=manage_pipeline(pipeline), recipe=recipe,
                                       report=result.summary(), lineage=key)

        personalized = comfy.MODEL_CACHE.get_or_load("cococo_personalized", key, merge)
        logger.info("CoCoCo personalization:\n%s", personalized.report)
        return (personalized, personalized.report)


class CoCoCoSaveCheckpoint:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cococo_pipe": (COCOCO_PIPE, {"tooltip": "A personalized CoCoCo model (from CoCoCo Personalize)."}),
                "filename_prefix": ("STRING", {"default": "checkpoints/cococo_personalized", "tooltip": "File name "
                                    "inside ComfyUI's output folder; a counter and .safetensors are appended."}),
            }
        }

    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = f"{CATEGORY}/personalize"
    DESCRIPTION = ("Saves the personalized SD-1.5-inpainting weights (U-Net, text encoder, VAE; no motion modules) "
                   "as a single-file .safetensors, streamed tensor by tensor from the source files. Put it in "
                   "models/checkpoints/ to load it as a CoCoCo base later.")

    def save(self, cococo_pipe, filename_prefix):
        from cococo_core.personalize import save_merged

        if cococo_pipe.recipe is None:
            raise ValueError("this CoCoCo model is not personalized; connect the output of CoCoCo Personalize "
                             "(to reuse an unchanged base, load its file directly)")
        path = comfy.output_path(filename_prefix, ".safetensors")
        report = save_merged(cococo_pipe.recipe, path, callback=comfy.Progress("save"), cancel=comfy.interrupt_check())
        logger.info("saved the personalized checkpoint %s\n%s", path, report.summary())
        return {"ui": {"text": [f"saved {path.name}"]}, "result": ()}


NODE_CLASS_MAPPINGS = {"CoCoCoLoRA": CoCoCoLoRA, "CoCoCoPersonalize": CoCoCoPersonalize,
                       "CoCoCoSaveCheckpoint": CoCoCoSaveCheckpoint}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoLoRA": "CoCoCo LoRA", "CoCoCoPersonalize": "CoCoCo Personalize (task vectors)",
                              "CoCoCoSaveCheckpoint": "CoCoCo Save Personalized Checkpoint"}
