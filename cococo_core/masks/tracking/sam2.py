"""SAM 2 / SAM 2.1 video tracking on transformers' ``Sam2VideoModel``, run the way the official
``SAM2VideoPredictor`` (facebookresearch/sam2 1.1.0, ``sam2_video_predictor.py``) runs it:

* frames: PIL resize of the uint8 frame to ``image_size`` squared (PIL's default bicubic, as
  ``sam2/utils/misc.py`` ``_load_img_as_tensor``), / 255, ImageNet mean / std;
* prompts: a box becomes two points labelled 2 and 3 ahead of the clicks (1 positive, 0 negative), coordinates
  / (W, H) * image_size; each (frame, object) is an initial conditioning frame decoded without memory; its memory
  is encoded from the hole-filled low-resolution mask, binarised (``propagate_in_video_preflight``);
* propagation: forward from the earliest prompted frame to the end, then backward from it to frame 0, one object
  at a time; each tracked frame's memory is encoded from the raw high-resolution logits, then the low-resolution
  logits get their small holes filled (:mod:`.holes`) and are resized to the frame (bilinear).

Memory stays flat for any length: frames are pre-processed when the model reads them (not all up front), the
vision features of one frame are cached, and tracked frames' outputs farther than the memory window (7 memory
frames, 16 object pointers) from the current frame and from every prompted frame are dropped; the full-size
logits the model keeps per frame for memory encoding are not stored. Only the result grows with the length.

Text: with a GroundingDINO ``detector`` (:class:`cococo_core.masks.loading.Detector`), its boxes on the key frame
prompt the tracker; with ``detect_every=N`` the detector runs again every N frames while tracking forward, and a
box that overlaps no tracked object (mask-box IoU below ``match_iou``) starts a new object there, which is then
also tracked back to the key frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...hooks import check_cancelled, report
from .base import BoxPrompt, PointPrompt, Tracker, TrackPrompt, TrackResult
from .holes import fill_small_holes
from .registry import TrackerSource, register_tracker

log = logging.getLogger(__name__)

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
FILL_HOLE_AREA = 8  # build_sam.py, build_sam2_video_predictor(apply_postprocessing=True)
NO_OBJECT_LOGIT = -1024.0  # sam2_base.NO_OBJ_SCORE: frames an object was never tracked on
HF_MODEL_TYPES = ("sam2_video", "sam2")


class _PreprocessedFrames:
    """``Sam2VideoInferenceSession.processed_frames`` computed on access, so a long clip is never held at the
    model's 1024 x 1024 float input size (the session would otherwise keep every frame)."""

    def __init__(self, frames: torch.Tensor, image_size: int, dtype: torch.dtype):
        self.frames = frames
        self.image_size = image_size
        self.dtype = dtype
        self.mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __contains__(self, index) -> bool:
        return 0 <= index < len(self)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        image = Image.fromarray(self.frames[index].numpy(), "RGB").resize((self.image_size, self.image_size))
        pixels = torch.from_numpy(np.asarray(image) / 255.0).permute(2, 0, 1).to(torch.float32)
        pixels -= self.mean
        pixels /= self.std
        return pixels.to(self.dtype)


@dataclass
class _Object:
    object_id: int
    index: int
    prompt_frames: list[int]


class Sam2Tracker(Tracker):
    """SAM 2 / SAM 2.1 (boxes and clicks on any frames; text through GroundingDINO boxes)."""

    kind = "sam2"
    supports_text = False
    supports_prompts = True

    def __init__(self, model, source: str = "", variant: str = ""):
        super().__init__(source, variant)
        self.model = model

    def _new_session(self, **kwargs):
        """The inference session of the model's family (``Sam2VideoInferenceSession`` here; a model with the same
        video API names its own in a subclass)."""
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        return Sam2VideoInferenceSession(**kwargs)

    # -- prompts --------------------------------------------------------------------------------------------

    def _point_inputs(self, prompts: Sequence[TrackPrompt], size: tuple[int, int], device) -> dict:
        """The official ``add_new_points_or_box`` encoding: box corners (labels 2, 3) first, then clicks."""
        height, width = size
        boxes = [p for p in prompts if isinstance(p, BoxPrompt)]
        if len(boxes) > 1:
            raise ValueError(f"object {boxes[0].object_id} has {len(boxes)} boxes on frame {boxes[0].frame}; "
                             "SAM 2 takes one box per object and frame")
        coords, labels = [], []
        for box in boxes:
            coords += [(box.x0, box.y0), (box.x1, box.y1)]
            labels += [2, 3]
        for point in (p for p in prompts if isinstance(p, PointPrompt)):
            coords.append((point.x, point.y))
            labels.append(1 if point.positive else 0)
        points = torch.tensor(coords, dtype=torch.float32)[None]
        points = points / torch.tensor([width, height]) * self.model.config.image_size
        return {"point_coords": points[None].to(device),
                "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None].to(device)}

    # -- one object on one frame ----------------------------------------------------------------------------

    def _encode_memory(self, session, frame: int, high_res: torch.Tensor, score_logits, from_prompt: bool):
        feats, _ = self.model._prepare_vision_features(session, frame, batch_size=1)
        return self.model._encode_new_memory(feats[-1], high_res, score_logits, is_mask_from_pts=from_prompt)

    def _infer(self, session, frame: int, obj: _Object, point_inputs, reverse: bool, encode_memory: bool) -> dict:
        """One frame's decoder outputs for one object (an initial conditioning frame when ``point_inputs`` are
        given); with ``encode_memory``, its memory encoded from the raw high-resolution logits."""
        out = self.model._run_single_frame_inference(session, frame, obj.index, 1, point_inputs is not None,
                                                     point_inputs, None, reverse)
        if encode_memory:
            out["maskmem_features"], out["maskmem_pos_enc"] = self._encode_memory(
                session, frame, out["high_res_masks"], out["object_score_logits"], False)
        return out

    def _store(self, session, obj: _Object, frame: int, out: dict, cond: bool) -> None:
        out = {k: v for k, v in out.items() if k != "high_res_masks"}
        session.store_output(obj.index, frame, output_value=out, is_conditioning_frame=cond)

    def _prompt(self, session, obj: _Object, frame: int, prompts, size, fill_hole_area: int) -> torch.Tensor:
        """An initial conditioning frame (no memory), its memory from the hole-filled mask as the official
        ``propagate_in_video_preflight`` encodes it; returns the low-resolution logits."""
        model = self.model
        point_inputs = self._point_inputs(prompts, size, session.inference_device)
        session.add_point_inputs(obj.index, frame, point_inputs)
        out = self._infer(session, frame, obj, point_inputs, False, encode_memory=False)
        out["pred_masks"] = fill_small_holes(out["pred_masks"], fill_hole_area)
        high_res = F.interpolate(out["pred_masks"], size=(model.config.image_size,) * 2, mode="bilinear",
                                 align_corners=False)
        out["maskmem_features"], out["maskmem_pos_enc"] = self._encode_memory(
            session, frame, high_res, out["object_score_logits"], True)
        self._store(session, obj, frame, out, cond=True)
        return out["pred_masks"]

    def _step(self, session, obj: _Object, frame: int, reverse: bool, fill_hole_area: int) -> torch.Tensor:
        """Track one object onto ``frame`` from its memory (``propagate_in_video``'s per-object step)."""
        cond = session.output_dict_per_obj[obj.index]["cond_frame_outputs"]
        if frame in cond:
            return cond[frame]["pred_masks"].to(session.inference_device)
        out = self._infer(session, frame, obj, None, reverse, encode_memory=True)
        out["pred_masks"] = fill_small_holes(out["pred_masks"], fill_hole_area)
        self._store(session, obj, frame, out, cond=False)
        session.frames_tracked_per_obj[obj.index][frame] = {"reverse": reverse}
        return out["pred_masks"]

    def _forget(self, session, frame: int, prompt_frames: set[int]) -> None:
        """Drop tracked outputs no later frame can read: farther than the memory window from ``frame`` and from
        every prompted frame (a backward pass starts next to the prompted frames and reads the forward pass's
        outputs there)."""
        window = max(self.model.config.num_maskmem, self.model.config.max_object_pointers_in_encoder)
        for outputs in session.output_dict_per_obj.values():
            tracked = outputs["non_cond_frame_outputs"]
            for old in [f for f in tracked if abs(f - frame) > window
                        and all(abs(f - p) > window for p in prompt_frames)]:
                del tracked[old]

    # -- the whole clip -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def track(self, frames, prompts: Sequence[TrackPrompt] = (), text: Optional[str] = None, *, progress=None,
              cancel=None, detector=None, key_frame: int = 0, detect_every: int = 0, box_threshold: float = 0.35,
              text_threshold: float = 0.25, max_objects: int = 10, match_iou: float = 0.3, detection_size: int = 800,
              fill_hole_area: int = FILL_HOLE_AREA, offload_state_to_cpu: bool = True) -> TrackResult:
        from .api import as_uint8_frames

        frames = as_uint8_frames(frames)
        count, height, width = frames.shape[:3]
        if text is not None and detector is None:
            raise ValueError("SAM 2 reads no text: give a GroundingDINO detector (its boxes prompt the tracker), "
                             "or boxes/points")
        if detect_every < 0 or not 0 <= key_frame < count:
            raise ValueError(f"detect_every must be >= 0 and key_frame within 0..{count - 1}")
        parameter = next(self.model.parameters())
        device, dtype = parameter.device, parameter.dtype
        state_device = torch.device("cpu") if offload_state_to_cpu else device
        session = self._new_session(video_height=height, video_width=width, inference_device=device,
                                    inference_state_device=state_device, video_storage_device="cpu", dtype=dtype)
        session.processed_frames = _PreprocessedFrames(frames, self.model.config.image_size, dtype)

        prompts = list(prompts)
        finder = None
        if text is not None:
            finder = _BoxFinder(detector, text, frames, box_threshold, text_threshold, max_objects, detection_size)
            taken = {p.object_id for p in prompts}
            found = finder.boxes(key_frame, first_id=max(taken, default=0) + 1)
            if not found and not prompts:
                log.warning("nothing found for %r on frame %d (box threshold %.2f)", text, key_frame, box_threshold)
            prompts += found
        objects: dict[int, _Object] = {}
        by_frame: dict[tuple[int, int], list[TrackPrompt]] = {}
        for prompt in prompts:
            by_frame.setdefault((prompt.frame, prompt.object_id), []).append(prompt)
        logits: dict[int, torch.Tensor] = {}

        def new_object(object_id: int) -> _Object:
            obj = _Object(object_id, session.obj_id_to_idx(object_id), [])
            objects[object_id] = obj
            logits[object_id] = torch.full((count, height, width), NO_OBJECT_LOGIT)
            return obj

        size = (height, width)
        for (frame, object_id), group in sorted(by_frame.items()):
            obj = objects.get(object_id) or new_object(object_id)
            obj.prompt_frames.append(frame)
            self._prompt(session, obj, frame, group, size, fill_hole_area)
        if not objects:
            return TrackResult(torch.zeros(count, height, width, dtype=torch.bool),
                               torch.zeros(0, count, height, width), [], None)
        start = min(f for obj in objects.values() for f in obj.prompt_frames)
        prompt_frames = {f for obj in objects.values() for f in obj.prompt_frames}
        backward = list(range(start, -1, -1)) if start > 0 else []
        total = (count - start) + len(backward)
        done = 0

        def run(frame: int, reverse: bool, which: Sequence[_Object]) -> None:
            nonlocal done
            check_cancelled(cancel)
            for obj in which:
                low = self._step(session, obj, frame, reverse, fill_hole_area)
                logits[obj.object_id][frame] = F.interpolate(low.float(), size=size, mode="bilinear",
                                                             align_corners=False)[0, 0].cpu()
            self._forget(session, frame, prompt_frames)
            done += 1
            report(progress, done, total, None)

        late: list[_Object] = []
        for frame in range(start, count):
            run(frame, False, list(objects.values()))
            if finder is not None and detect_every and frame > key_frame and (frame - key_frame) % detect_every == 0:
                for box in finder.new_boxes(frame, {i: logits[i][frame] for i in objects}, match_iou,
                                            first_id=max(objects) + 1):
                    obj = new_object(box.object_id)
                    obj.prompt_frames.append(frame)
                    prompt_frames.add(frame)
                    low = self._prompt(session, obj, frame, [box], size, fill_hole_area)
                    logits[obj.object_id][frame] = F.interpolate(low.float(), size=size, mode="bilinear",
                                                                 align_corners=False)[0, 0].cpu()
                    late.append(obj)
                    total += frame - start
        for frame in backward:
            run(frame, True, [o for o in objects.values() if o not in late])
        for obj in late:  # objects that entered later: back from where they were found to the first frame tracked
            for frame in range(obj.prompt_frames[0] - 1, start - 1, -1):
                run(frame, True, [obj])
        session.reset_inference_session()
        return TrackResult.from_object_logits(logits, (count, height, width))


class _BoxFinder:
    """GroundingDINO boxes on chosen frames of a clip (the text-mask detector, :mod:`cococo_core.masks.detect`)."""

    def __init__(self, detector, text, frames, box_threshold, text_threshold, max_objects, short_side=800):
        from .. import detect as dino

        self.detector, self.frames = detector, frames
        self.prompt = dino.encode_prompt(detector.tokenizer, text, detector.model.config.max_text_len)
        self.size = dino.detection_size(frames.shape[1], frames.shape[2], detector.model.config, short_side)
        self.box_threshold, self.text_threshold, self.max_objects = box_threshold, text_threshold, max_objects

    def detections(self, frame: int):
        from .. import detect as dino

        parameter = next(self.detector.model.parameters())
        pixels = dino.preprocess(self.frames[frame:frame + 1].to(parameter.device), self.size).to(parameter.dtype)
        return dino.detect(self.detector.model, self.detector.tokenizer, pixels, self.prompt,
                           tuple(self.frames.shape[1:3]), box_threshold=self.box_threshold,
                           text_threshold=self.text_threshold, max_boxes=self.max_objects)[0]

    def boxes(self, frame: int, first_id: int) -> list[BoxPrompt]:
        found = self.detections(frame)
        return [BoxPrompt(*map(float, box.tolist()), frame=frame, object_id=first_id + i)
                for i, box in enumerate(found.boxes) if float(box[2] - box[0]) > 0 and float(box[3] - box[1]) > 0]

    def new_boxes(self, frame: int, tracked: dict[int, torch.Tensor], match_iou: float,
                  first_id: int) -> list[BoxPrompt]:
        """Boxes on ``frame`` that match no tracked object's mask box (IoU below ``match_iou``)."""
        tracked_boxes = [b for b in (mask_box(l > 0) for l in tracked.values()) if b is not None]
        fresh = []
        for box in self.boxes(frame, first_id):
            if len(tracked) + len(fresh) >= self.max_objects:
                break
            xyxy = (box.x0, box.y0, box.x1, box.y1)
            if all(box_iou(xyxy, other) < match_iou for other in tracked_boxes):
                fresh.append(BoxPrompt(*xyxy, frame=frame, object_id=first_id + len(fresh)))
        return fresh


def mask_box(mask: torch.Tensor):
    """(x0, y0, x1, y1) pixel box around a bool (H, W) mask, or None when empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# -- loading ----------------------------------------------------------------------------------------------------

def _detect(source: TrackerSource) -> bool:
    if source.is_folder:
        return source.model_type in HF_MODEL_TYPES
    from .convert_sam2 import is_original_sam2

    return is_original_sam2(source.state())


def video_model_class(name: str, what: str):
    """``transformers.<name>`` (e.g. ``Sam2VideoModel``), or an ImportError that says to upgrade transformers."""
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError as error:
        raise ImportError(f"{what} tracking needs a transformers release with {name}; transformers "
                          f"{transformers.__version__} has none: upgrade transformers") from error


def load_video_model(model_class, source: TrackerSource, device, dtype, config_fn, convert_fn, what: str):
    """A model of ``model_class`` (``Sam2VideoModel``, ``EdgeTamVideoModel``: the same video API) from a Hugging Face
    folder, or built from ``config_fn(state)`` and loaded with ``convert_fn(state)`` for an original checkpoint file,
    every tensor accounted for; on ``device`` in ``dtype``, in eval mode."""
    from ..loading import _finish, _load_into

    device = device or torch.device("cpu")
    dtype = dtype or torch.float32
    if source.is_folder:
        model = model_class.from_pretrained(str(source.path), local_files_only=True)
    else:
        state = source.state()
        model = model_class(config_fn(state))
        _load_into(model, convert_fn(state), source.path, what)
    return _finish(model, device, dtype)


def load_sam2(source: TrackerSource, device=None, dtype=None, image_size: Optional[int] = None) -> Sam2Tracker:
    """A :class:`Sam2Tracker` from an original ``sam2(.1)_hiera_*.pt`` or a Hugging Face ``sam2_video`` folder.

    ``image_size``: the model's input size for an original file (every released SAM 2 uses 1024)."""
    from . import convert_sam2

    model_class = video_model_class("Sam2VideoModel", "SAM 2")
    if source.is_folder and source.model_type != "sam2_video":
        raise ValueError(f"{source.path}: a Hugging Face '{source.model_type}' folder is SAM 2's image model; "
                         "video tracking needs a 'sam2_video' folder (e.g. facebook/sam2.1-hiera-tiny)")
    model = load_video_model(
        model_class, source, device, dtype,
        lambda state: convert_sam2.sam2_config_from_state_dict(state, image_size or convert_sam2.DEFAULT_IMAGE_SIZE),
        convert_sam2.convert_sam2_state_dict, "SAM 2")
    if source.is_folder:
        variant = f"hf (hiera width {model.config.vision_config.backbone_config.hidden_size})"
    else:
        variant = f"{convert_sam2.sam2_version(source.state())} {convert_sam2.hiera_variant(source.state())}"
    return Sam2Tracker(model, str(source.path), variant)


register_tracker("sam2", _detect, load_sam2,
                 accepts="SAM 2 / 2.1 original sam2.1_hiera_{tiny,small,base_plus,large}.pt or sam2_hiera_*.pt, "
                         "or a Hugging Face 'sam2_video' folder")
