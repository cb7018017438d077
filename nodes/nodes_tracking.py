"""Masks that follow objects through the video: the tracker loader and *CoCoCo Track Masks* (thin adapters over
``cococo_core.masks.tracking``; transformers' pure-PyTorch models)."""
from __future__ import annotations

import torch

from . import comfy_adapter as comfy
from .common import (CATEGORY, GDINO_MODEL, TRACKER_MODEL, files_changed, frames_in, frames_out, mask_out,
                     modules_on_device)
from .model_filters import tracker_model
from .nodes_masks import PRECISION_INPUT

# folders the tracker combo lists, as "<folder>/<name>"; models/sams only for the trackers kept there
TRACKER_FOLDERS = ("sam2", "sam3", "sams")


def tracker_names() -> list[str]:
    names = []
    for key in TRACKER_FOLDERS:
        accept = tracker_model if key == "sams" else None
        names += [f"{key}/{name}" for name in comfy.list_models(key, accept)]
    return names


def resolve_tracker(name: str):
    key, _, rest = str(name).replace("\\", "/").partition("/")
    if key not in TRACKER_FOLDERS or not rest:
        raise ValueError(f"tracker '{name}': expected a name like 'sam2/sam2.1_hiera_tiny.pt' from the "
                         f"{', '.join(f'models/{k}/' for k in TRACKER_FOLDERS)} folders")
    return key, comfy.resolve_model(key, rest)


class CoCoCoTrackerLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (tracker_names(), {"tooltip": "A video tracker: SAM 2 / SAM 2.1 (original "
                           "sam2.1_hiera_*.pt or a transformers folder) or EdgeTAM (edgetam.pt, fast and small; "
                           "needs timm) from models/sam2/ (or models/sams/), SAM 3 from models/sam3/."}),
            "precision": PRECISION_INPUT,
        }}

    RETURN_TYPES = (TRACKER_MODEL,)
    RETURN_NAMES = ("tracker",)
    OUTPUT_TOOLTIPS = ("The video tracker, for CoCoCo Track Masks.",)
    FUNCTION = "load"
    CATEGORY = f"{CATEGORY}/loaders"
    DESCRIPTION = ("Loads a video tracker (SAM 2 / SAM 2.1, SAM 3) for CoCoCo Track Masks. Kept in memory for the "
                   "next runs.")

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        try:
            resolve_tracker(model_name)
        except (FileNotFoundError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, model_name, **_):
        try:
            key, _ = resolve_tracker(model_name)
        except (FileNotFoundError, ValueError):
            return ""
        return files_changed((key, model_name.partition("/")[2]))

    def load(self, model_name, precision):
        from cococo_core.masks.tracking import load_tracker

        _, path = resolve_tracker(model_name)
        dtype = comfy.model_dtype(precision, comfy.torch_device())
        tracker = comfy.MODEL_CACHE.get_or_load("trackers", (comfy.file_signature(path), str(dtype)),
                                                lambda: load_tracker(path, device=comfy.offload_device(), dtype=dtype))
        return (tracker,)


class CoCoCoTrackMasks:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames."}),
                "tracker": (TRACKER_MODEL, {"tooltip": "The tracker from CoCoCo Tracker Loader."}),
                "text": ("STRING", {"default": "", "multiline": False, "tooltip": "What to track, e.g. 'the dog'. "
                         "SAM 3 reads it itself; SAM 2 needs a GroundingDINO model, whose boxes on the key frame "
                         "prompt it. Leave empty to use boxes/points only."}),
                "boxes": ("STRING", {"default": "", "multiline": True, "tooltip": "One box per line: "
                          "x0,y0,x1,y1 or x0,y0,x1,y1@frame (pixels; frame 0 when omitted); end with #id to name "
                          "the object. Each box starts an object."}),
                "points": ("STRING", {"default": "", "multiline": True, "tooltip": "One click per line: x,y or "
                           "x,y@frame, :neg for 'not the object' (e.g. 120,80@5:neg), #id for the object. Clicks "
                           "refine the box on their frame, else form one object together."}),
                "objects": ("STRING", {"default": "all", "tooltip": "Which tracked objects to keep: all, top / "
                            "top:N (highest scores; SAM 3), or ids such as 1, 3."}),
                "key_frame": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Frame the text is "
                              "detected on (SAM 2 + GroundingDINO)."}),
                "detect_every": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Run GroundingDINO "
                                 "again every N frames to add objects that enter (0: only on the key frame)."}),
                "box_threshold": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "Minimum GroundingDINO box confidence."}),
                "max_objects": ("INT", {"default": 10, "min": 1, "max": 100, "tooltip": "At most this many objects "
                                "from the text."}),
                "detection_size": ("INT", {"default": 800, "min": 256, "max": 2048, "step": 32, "tooltip": "Short "
                                   "side in pixels the frames are resized to for GroundingDINO (its default 800; "
                                   "smaller is faster)."}),
            },
            "optional": {
                "grounding_dino": (GDINO_MODEL, {"tooltip": "GroundingDINO (CoCoCo GroundingDINO Loader): turns "
                                   "the text into boxes for a SAM 2 tracker."}),
            },
        }

    SEARCH_ALIASES = ["sam2", "sam 2", "track", "video segmentation", "propagate mask"]
    RETURN_TYPES = ("MASK", "MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("mask", "object_masks", "preview", "object_ids")
    OUTPUT_TOOLTIPS = ("Per-frame union of the kept objects' masks (1 = object).",
                       "One mask per object and frame: object k's frames are rows k*F ... k*F+F-1 (F frames).",
                       "The frames with each object tinted in its own colour and its id written on it.",
                       "The kept object ids, in the order of object_masks, comma-separated.")
    FUNCTION = "track"
    CATEGORY = f"{CATEGORY}/masks"
    DESCRIPTION = ("Masks that follow objects through the video: boxes and clicks on any frames (or text) are "
                   "propagated forward and backward by SAM 2 / SAM 3 with stable object ids. Feeds CoCoCo Video "
                   "Inpaint.")

    def track(self, images, tracker, text, boxes, points, objects, key_frame, detect_every, box_threshold,
              max_objects, detection_size, grounding_dino=None):
        from cococo_core.masks.tracking import track_masks
        from cococo_core.masks.tracking.preview import draw_track_preview
        from cococo_core.masks.tracking.prompts import parse_boxes, parse_objects, parse_points

        selection, top_k = parse_objects(objects)
        box_prompts, point_prompts = parse_boxes(boxes), parse_points(points)
        text = text.strip() or None
        options = {}
        if text is not None and not tracker.supports_text:
            if grounding_dino is None:
                raise ValueError(f"{tracker.kind} does not read text: connect a GroundingDINO model (CoCoCo "
                                 "GroundingDINO Loader) or give boxes/points and leave the text empty")
            options = dict(detector=grounding_dino, key_frame=key_frame, detect_every=detect_every,
                           box_threshold=box_threshold, max_objects=max_objects, detection_size=detection_size)
        frames = frames_in(images)
        modules = tracker.modules() + ([grounding_dino.model] if "detector" in options else [])
        with modules_on_device(modules):
            result = track_masks(frames, tracker, text=text, boxes=box_prompts, points=point_prompts,
                                 objects=selection, top_k=top_k, progress=comfy.Progress("tracking"),
                                 cancel=comfy.interrupt_check(), **options)
        count, height, width = result.masks.shape
        per_object = result.object_masks.float().reshape(-1, height, width)
        if per_object.shape[0] == 0:  # nothing tracked: one empty mask per frame rather than an empty batch
            per_object = torch.zeros(count, height, width)
        return (mask_out(result.masks.float()), mask_out(per_object), frames_out(draw_track_preview(frames, result)),
                ", ".join(str(i) for i in result.object_ids))


NODE_CLASS_MAPPINGS = {"CoCoCoTrackerLoader": CoCoCoTrackerLoader, "CoCoCoTrackMasks": CoCoCoTrackMasks}
NODE_DISPLAY_NAME_MAPPINGS = {"CoCoCoTrackerLoader": "CoCoCo Tracker Loader", "CoCoCoTrackMasks": "CoCoCo Track Masks"}
