"""CoCoCo Video Metrics: the papers' per-video metrics (``cococo_core.metrics``) of a result against its
original, as a text table and numbers, so settings can be compared inside one graph."""
from __future__ import annotations

import math

from . import comfy_adapter as comfy
from .common import CATEGORY, frames_in, mask_in, on_execution_device, text_input

NONE = "none"
OUTPUTS = ("cs", "bp", "tc", "psnr", "ssim", "ewarp")


def _clip_choices() -> list[str]:
    return [NONE, *comfy.list_models("clip_vision")]


def manage(clip):
    """Hand the metrics' CLIP towers to ComfyUI's model management as one model (once)."""
    towers = {"vision_model": clip.vision_model, "visual_projection": clip.visual_projection,
              "text_model": clip.text_model, "text_projection": clip.text_projection}
    return comfy.manage(clip, {"clip": towers}, name="MetricsCLIP")


class CoCoCoVideoMetrics:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "original": ("IMAGE", {"tooltip": "The input video (frames) before inpainting or removal."}),
                "result": ("IMAGE", {"tooltip": "The inpainted / edited video: same frame count and size as the "
                                     "original."}),
                "mask": ("MASK", {"tooltip": "The region that was filled (white). BP is measured outside it and "
                                  "the CLIP score can be restricted to its bounding box."}),
                "prompt": text_input("The prompt the region was filled with, for the CLIP score (CS). Leave empty "
                                     "to skip CS."),
                "clip_model": (_clip_choices(), {"default": NONE, "tooltip": "CLIP for TC (any CLIP image model, "
                               "e.g. ComfyUI's ViT-L/14 clip_vision file) and CS (needs a model with its text tower, "
                               "e.g. the openai/clip-vit-large-patch14 folder). Looked up in models/clip_vision/. "
                               "none skips CS and TC."}),
                "clip_score_region": (["frame", "mask"], {"default": "frame", "tooltip": "CS on the whole frame "
                                      "(as the CoCoCo paper) or on the mask's bounding box only."}),
                "flow": (["auto", "dis", NONE], {"default": "auto", "tooltip": "Optical flow for the warping error "
                         "E*_warp: auto = RAFT when torchvision and its weights are in torch hub's cache, else "
                         "OpenCV DIS (pip install opencv-python-headless); none skips it."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "Ground truth for PSNR/SSIM (e.g. the video without the "
                                        "object); default: the original."}),
            },
        }

    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT")
    RETURN_NAMES = ("table", "CS", "BP", "TC", "PSNR", "SSIM", "E_warp_x100")
    OUTPUT_TOOLTIPS = (
        "A text table of every metric computed, with what each measures and which way is better.",
        "CLIP score x100 between the prompt and the result frames (higher is better; NaN when not computed).",
        "Background preservation: mean |original - result| on [0, 255] outside the mask (lower is better).",
        "Temporal consistency: CLIP cosine x100 of consecutive result frames (higher is better; NaN without CLIP).",
        "PSNR in dB against the reference, per frame, averaged (identical frames count 100).",
        "SSIM against the reference (scikit-image's, 65 px window), averaged over frames.",
        "Flow warping error x100 of the result (Lai et al.; lower is better; NaN without flow).",
    )
    OUTPUT_NODE = True
    FUNCTION = "measure"
    CATEGORY = f"{CATEGORY}/utils"
    DESCRIPTION = ("Measures a result against its original with the metrics of the CoCoCo and LGVI papers (CS, BP, "
                   "TC, PSNR, SSIM, E*_warp) and shows them as a table; use it to compare settings in one graph. "
                   "VFID needs many videos: use `python -m cococo_core evaluate` for it.")

    @classmethod
    def VALIDATE_INPUTS(cls, clip_model=NONE, **_):
        if clip_model in (None, NONE):
            return True
        try:
            comfy.resolve_model("clip_vision", clip_model)
        except (FileNotFoundError, ValueError) as error:
            return str(error)
        return True

    def measure(self, original, result, mask, prompt, clip_model, clip_score_region, flow, reference=None):
        from cococo_core.metrics import MetricSuite, format_table, load_flow

        original, result = frames_in(original), frames_in(result)
        if original.shape != result.shape:
            raise ValueError(f"original {tuple(original.shape[:3])} and result {tuple(result.shape[:3])} differ in "
                             "frames or size (frames, height, width); compare videos of the same shape")
        mask = mask_in(mask)
        if mask.shape[1:] != original.shape[1:3] or mask.shape[0] not in (1, original.shape[0]):
            raise ValueError(f"the mask {tuple(mask.shape)} does not fit {original.shape[0]} frames of "
                             f"{original.shape[2]}x{original.shape[1]}; give one mask per frame or one for all")
        notes = []
        clip = self._clip(clip_model)
        if clip is not None and prompt.strip() and not clip.has_text:
            notes.append("CS: n/a, this CLIP file has no text tower (use a full CLIP folder)")
        estimator = None
        if flow != NONE:
            try:
                estimator = load_flow(flow)
            except (ValueError, FileNotFoundError) as error:
                notes.append(f"E*_warp: n/a, {error}")
        suite = MetricSuite(clip=clip, flow=estimator, clip_crop=clip_score_region)
        comfy.interrupt_check()()
        with on_execution_device([manage(clip)] if clip is not None else []):
            measured = suite.evaluate(original, result, mask=mask, prompt=prompt.strip() or None,
                                      reference=None if reference is None else frames_in(reference))
        table = format_table(measured.values, measured.flow_backend, notes)
        numbers = tuple(float(measured.values.get(key, math.nan)) for key in OUTPUTS)
        return {"ui": {"text": [table]}, "result": (table, *numbers)}

    @staticmethod
    def _clip(name):
        if name in (None, NONE):
            return None
        from cococo_core.metrics import load_clip

        path = comfy.resolve_model("clip_vision", name)
        tokenizer = comfy.clip_tokenizer_dir() if path.is_file() else None

        return comfy.MODEL_CACHE.get_or_load(
            "clip_vision_metrics", comfy.file_signature(path),
            lambda: manage(load_clip(path, tokenizer=tokenizer, device=comfy.offload_device())), held=True)


NODE_CLASS_MAPPINGS = {"CoCoCoVideoMetrics": CoCoCoVideoMetrics}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoVideoMetrics": "CoCoCo Video Metrics"}
