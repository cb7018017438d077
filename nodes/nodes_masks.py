"""Masks from text: GroundingDINO and SAM loaders and the text -> per-frame MASK node (thin adapters over
``cococo_core.masks``; transformers' pure-PyTorch models, no compiled extension)."""
from __future__ import annotations

from . import comfy_adapter as comfy
from .common import (CATEGORY, GDINO_MODEL, SAM_MODEL, check_model, files_changed, frames_in, frames_out, mask_out,
                     model_input, on_execution_device, text_input)

PRECISION_INPUT = (list(comfy.PRECISIONS), {"default": "fp32", "tooltip": "Weight and compute dtype (fp32 is the "
                   "safe choice for detection; auto: ComfyUI's choice)."})


def manage(model, name: str):
    """Hand a GroundingDINO ``Detector`` / SAM ``Segmenter``'s torch model to ComfyUI's model management (once)."""
    return comfy.manage(model, {"model": model.model}, name=name)


class _MaskModelLoader:
    """A GroundingDINO / SAM loader: one model from the ``KEY`` folder, cached, on the offload device."""

    KEY = ""
    LOADER = ""  # the cococo_core.masks function that loads it
    MANAGED_NAME = ""  # what ComfyUI's model management calls it
    WHAT = ""  # tooltip of the model_name combo
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": model_input(cls.KEY, cls.WHAT), "precision": PRECISION_INPUT}}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return check_model(cls.KEY, model_name)

    @classmethod
    def IS_CHANGED(cls, model_name, **_):
        return files_changed((cls.KEY, model_name))

    def load(self, model_name, precision):
        import cococo_core.masks

        path = comfy.resolve_model(self.KEY, model_name)
        dtype = comfy.model_dtype(precision, comfy.torch_device())
        loader = getattr(cococo_core.masks, self.LOADER)

        def load():
            return manage(loader(path, device=comfy.offload_device(), dtype=dtype), self.MANAGED_NAME)

        return (comfy.MODEL_CACHE.get_or_load(self.KEY, (comfy.file_signature(path), str(dtype)), load),)


class CoCoCoGroundingDinoLoader(_MaskModelLoader):
    KEY, LOADER, MANAGED_NAME = "grounding-dino", "load_detector", "GroundingDINO"
    WHAT = ("GroundingDINO: a transformers folder (e.g. IDEA-Research/grounding-dino-tiny) or an original "
            "groundingdino_*.pth (then with a bert-base-uncased folder next to it or in models/).")
    RETURN_TYPES = (GDINO_MODEL,)
    RETURN_NAMES = ("grounding_dino",)
    OUTPUT_TOOLTIPS = ("The GroundingDINO open-vocabulary detector and its BERT tokenizer.",)
    DESCRIPTION = "Loads GroundingDINO (text -> boxes) for CoCoCo Mask From Text. Kept in memory for the next runs."


class CoCoCoSamLoader(_MaskModelLoader):
    KEY, LOADER, MANAGED_NAME = "sams", "load_segmenter", "SAM"
    WHAT = "Segment Anything: a transformers folder (e.g. facebook/sam-vit-base) or an original sam_vit_b/l/h_*.pth."
    RETURN_TYPES = (SAM_MODEL,)
    RETURN_NAMES = ("sam",)
    OUTPUT_TOOLTIPS = ("The Segment Anything model (boxes -> masks).",)
    DESCRIPTION = "Loads Segment Anything (SAM) for CoCoCo Mask From Text. Kept in memory for the next runs."


class CoCoCoMaskFromText:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames to find the object in."}),
                "grounding_dino": (GDINO_MODEL, {"tooltip": "The detector from CoCoCo GroundingDINO Loader."}),
                "text": text_input("What to mask, e.g. 'the dog' (several phrases separated by '.').", "the dog"),
                "box_threshold": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "Minimum box confidence (GroundingDINO default 0.35; CoCoCo's training used 0.2)."}),
                "text_threshold": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "Minimum token score for a box's label."}),
                "box_mode": ("BOOLEAN", {"default": False, "tooltip": "Mask whole boxes instead of SAM outlines "
                             "(CoCoCo's instance-aware box masks; needs no SAM)."}),
                "detect_every": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Detect on every k-th frame "
                                 "only; the frames between reuse the last boxes (faster)."}),
                "grow": ("INT", {"default": 0, "min": -256, "max": 256, "tooltip": "Grow (> 0) or shrink (< 0) the "
                         "masks by this many pixels."}),
                "fill_holes": ("BOOLEAN", {"default": False, "tooltip": "Fill holes inside each mask."}),
                "temporal_smooth": ("INT", {"default": 0, "min": 0, "max": 16, "tooltip": "Majority vote over 2r+1 "
                                    "neighbouring frames, against flicker (0: off)."}),
                "feather": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Soft mask edge of about this "
                            "many pixels (0: hard edge)."}),
                "detection_size": ("INT", {"default": 800, "min": 256, "max": 2048, "step": 32, "tooltip": "Short "
                                   "side in pixels the frames are resized to for GroundingDINO (its default 800; "
                                   "smaller is faster, it fails below about 240)."}),
            },
            "optional": {
                "sam": (SAM_MODEL, {"tooltip": "The segmenter from CoCoCo SAM Loader (needed unless box_mode)."}),
            },
        }

    SEARCH_ALIASES = ["text to mask", "grounded sam", "segment by text", "video mask"]
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "preview")
    OUTPUT_TOOLTIPS = ("Per-frame masks of what the text names (1 = object).",
                       "The frames with the masks tinted red and the boxes drawn with their labels and scores.")
    FUNCTION = "make_masks"
    CATEGORY = f"{CATEGORY}/masks"
    DESCRIPTION = ("Per-frame masks from a text phrase: GroundingDINO finds boxes, SAM turns them into masks "
                   "(or the boxes themselves in box mode), then optional clean-up. Feeds CoCoCo Video Inpaint.")

    def make_masks(self, images, grounding_dino, text, box_threshold, text_threshold, box_mode, detect_every, grow,
                   fill_holes, temporal_smooth, feather, detection_size, sam=None):
        from cococo_core.masks import MaskOptions, draw_preview, masks_from_text

        if not text.strip():
            raise ValueError("the text is empty; name what to mask, e.g. 'the dog'")
        if sam is None and not box_mode:
            raise ValueError("connect a SAM model (CoCoCo SAM Loader) or turn box_mode on")
        options = MaskOptions(box_threshold=box_threshold, text_threshold=text_threshold, box_mode=box_mode,
                              detect_every=detect_every, grow=grow, fill_holes=fill_holes,
                              temporal_smooth=temporal_smooth, feather=feather,
                              detection_short_side=detection_size)
        frames = frames_in(images)
        models = [manage(grounding_dino, CoCoCoGroundingDinoLoader.MANAGED_NAME)]
        if sam is not None and not box_mode:
            models.append(manage(sam, CoCoCoSamLoader.MANAGED_NAME))
        with on_execution_device(models):
            result = masks_from_text(frames, text, grounding_dino, None if box_mode else sam, options,
                                     callback=comfy.Progress("masks"), cancel=comfy.interrupt_check())
        return mask_out(result.masks), frames_out(draw_preview(frames, result))


NODE_CLASS_MAPPINGS = {"CoCoCoGroundingDinoLoader": CoCoCoGroundingDinoLoader, "CoCoCoSamLoader": CoCoCoSamLoader,
                       "CoCoCoMaskFromText": CoCoCoMaskFromText}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoGroundingDinoLoader": "CoCoCo GroundingDINO Loader",
                              "CoCoCoSamLoader": "CoCoCo SAM Loader", "CoCoCoMaskFromText": "CoCoCo Mask From Text"}
