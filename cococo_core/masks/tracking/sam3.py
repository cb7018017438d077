"""SAM 3 (Carion et al. 2025, "SAM 3: Segment Anything with Concepts"): a text phrase -> every instance it names,
tracked with stable ids through the video (transformers ``Sam3VideoModel``: the detector finds the instances on each
frame, the SAM 2 style tracker carries them, and the matching / hot-start / reconditioning heuristics of the official
``Sam3VideoInference`` decide which ids live).

Files: the original ``sam3.pt`` (converted in memory, :mod:`.convert_sam3`) with the CLIP BPE vocabulary next to it
(``bpe_simple_vocab_16e6.txt.gz`` as the official package ships it, or ``vocab.json`` + ``merges.txt``), or a
Hugging Face ``Sam3VideoModel`` folder (``model_type`` ``sam3_video``; its tokenizer files in the folder).

Frames are prepared as the official loader prepares a list of frames (``sam3/model/io_utils.py``): a square
``image_size`` PIL resize, ``/255``, float16 storage, normalised with mean = std = 0.5. They are fed one at a time
and only the current one is kept, so frame memory does not grow with the video length; the tracker's per-frame
state older than the frames its memory reads is dropped (:func:`prune_session`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...hooks import check_cancelled, report
from . import mask_ops
from .clip_bpe import load_tokenizer, tokenize
from .base import TrackPrompt, TrackResult, Tracker, union_of
from .registry import TrackerSource, register_tracker
from .sam3_memory_selection import MemorySelection

log = logging.getLogger(__name__)

KIND = "sam3"
# the official build_outputs / _postprocess_output: a frame where an object has no mask gets this logit
NO_OBJECT_LOGIT = -1024.0
# detector inputs the video model never reads: the geometry encoder's point projections (``add_prompt`` of the
# official video model takes text and boxes only, and transformers' Sam3 geometry encoder has no point branch)
UNUSED_ORIGINAL = ("detector.geometry_encoder.points_",)


def _is_sam3(source: TrackerSource) -> bool:
    if source.is_folder:
        return source.model_type == "sam3_video"
    from .convert_sam3 import is_original_sam3

    try:
        return is_original_sam3(source.state().keys())
    except (ValueError, OSError, RuntimeError):
        return False


def prepare_frame(frame: torch.Tensor, size: int) -> torch.Tensor:
    """(3, size, size) float16 from one (H, W, 3) uint8 frame, as ``load_resource_as_video_frames`` does for a list
    of PIL images: PIL's default resize to a square, /255, then (x - 0.5) / 0.5 in float16."""
    from PIL import Image

    image = Image.fromarray(frame.numpy()).resize((size, size))
    pixels = torch.from_numpy(np.asarray(image) / 255.0).permute(2, 0, 1).to(torch.float16)
    half = torch.tensor(0.5, dtype=torch.float16)
    return (pixels - half) / half


def prune_session(session, frame_idx: int, window: int, selection: Optional[MemorySelection] = None) -> None:
    """Drop the per-frame tracker state no later frame reads: non-conditioning outputs more than ``window`` frames
    behind ``frame_idx`` (the memory bank reads the last ``num_maskmem`` frames and the object pointers of the last
    ``max_object_pointers_in_encoder``) except the frames the memory selection may still pick (at most
    ``max_object_pointers_in_encoder - 1`` per object), and per-frame bookkeeping of those frames."""
    oldest = frame_idx - window
    for obj_idx, outputs in session.output_dict_per_obj.items():
        keep = set()
        if selection is not None:
            obj_id = session.obj_idx_to_id(obj_idx)
            keep = selection.frames_to_keep(obj_id, frame_idx + 1)
            scores = selection.scores.get(obj_id, {})
            for f in [f for f in scores if f < oldest and f not in keep]:
                del scores[f]
        stale = [f for f in outputs["non_cond_frame_outputs"] if f < oldest and f not in keep]
        for f in stale:
            del outputs["non_cond_frame_outputs"][f]
    for per_frame in (session.obj_id_to_tracker_score_frame_wise, session.suppressed_obj_ids):
        for f in [f for f in per_frame if f < oldest]:
            del per_frame[f]
    for f in [f for f in (session.processed_frames or {}) if f != frame_idx]:
        del session.processed_frames[f]


def encode_empty_geometry(geometry_encoder, vision_embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The geometry encoder's output for "no boxes": its CLS token attended to the image, (B, 1, C) and its
    valid-mask (B, 1). The box branch is skipped for zero boxes (it would only produce empty tensors, through an
    ``roi_align`` that needs torchvision)."""
    fpn = vision_embeds.fpn_hidden_states[:-1]
    positions = vision_embeds.fpn_position_encoding[:-1]
    batch, channels = fpn[-1].shape[:2]
    device = fpn[-1].device
    no_boxes = torch.zeros(batch, 0, 4, dtype=fpn[-1].dtype, device=device)
    no_mask = torch.zeros(batch, 0, dtype=torch.bool, device=device)
    encode_boxes = geometry_encoder._encode_boxes
    geometry_encoder._encode_boxes = lambda boxes, mask, labels, feats: (
        torch.zeros(batch, 0, channels, dtype=feats.dtype, device=device), mask)
    try:
        out = geometry_encoder(box_embeddings=no_boxes, box_mask=no_mask,
                               box_labels=no_mask.long(), img_feats=fpn, img_pos_embeds=positions)
    finally:
        del geometry_encoder._encode_boxes
        assert geometry_encoder._encode_boxes == encode_boxes
    return out.last_hidden_state, out.attention_mask.bool()


def with_geometry_token(detector) -> None:
    """Make a text-only detection see the prompt the original sees.

    The official ``Sam3Image._encode_prompt`` always runs the geometry encoder (``add_cls=True``) and appends its
    CLS token to the text tokens (``prompt = cat([txt_feats, geo_feats])``), boxes or not; transformers'
    ``Sam3Model.forward`` runs it only when boxes are given, so its text-only scores and masks differ (detection
    probabilities ~0.04 apart on a random-weight model). This wraps the instance's ``forward``: without boxes, the
    CLS token is encoded and appended to the text features and their mask, as the original does."""
    forward = detector.forward

    def forward_with_geometry_token(*args, vision_embeds=None, text_embeds=None, attention_mask=None,
                                    input_boxes=None, **kwargs):
        if input_boxes is None and vision_embeds is not None and text_embeds is not None:
            import copy

            tokens, token_mask = encode_empty_geometry(detector.geometry_encoder, vision_embeds)
            text_mask = (attention_mask if attention_mask is not None else
                         torch.ones(text_embeds.pooler_output.shape[:2], device=tokens.device)).bool()
            text_embeds = copy.copy(text_embeds)  # cached in the session: do not change the cached one
            text_embeds["pooler_output"] = torch.cat([text_embeds.pooler_output, tokens], dim=1)
            attention_mask = torch.cat([text_mask, token_mask], dim=1)
        return forward(*args, vision_embeds=vision_embeds, text_embeds=text_embeds, attention_mask=attention_mask,
                       input_boxes=input_boxes, **kwargs)

    detector.forward = forward_with_geometry_token


def add_objects_as_original(model, selection: MemorySelection) -> None:
    """New detections enter the tracker as the original enters them (``Sam3VideoBase._tracker_add_new_objects``):
    the detector's low-res mask logits are resized bilinearly to the tracker's input mask size (4x) and
    thresholded at 0. transformers thresholds the low-res logits at 0.5 (a probability threshold applied to
    logits) without the resize."""

    def tracker_add_new_objects(inference_session, frame_idx, new_obj_ids, new_obj_masks, reverse=False):
        selection.new_group(new_obj_ids)  # one official tracker state per batch of new objects
        size = 4 * new_obj_masks.shape[-1]
        masks = F.interpolate(new_obj_masks[:, None].float(), size=(size, size), mode="bilinear",
                              align_corners=False)[:, 0] > 0
        for obj_id, mask in zip(new_obj_ids, masks):
            inference_session.add_mask_inputs(inference_session.obj_id_to_idx(obj_id), frame_idx, mask[None, None])
        inference_session.obj_with_new_inputs = list(new_obj_ids)
        model.tracker_model(inference_session=inference_session, frame_idx=frame_idx, reverse=reverse,
                            run_mem_encoder=True)

    model._tracker_add_new_objects = tracker_add_new_objects


def mask_input_as_original(tracker_model, video_size) -> None:
    """A mask prompt is used as the original uses it (``Sam3TrackerPredictor.add_new_mask`` then
    ``propagate_in_video_preflight``):

    * the object pointer is decoded from ``mask_downsample`` of the mask at the size it comes in, by a single-mask
      decoder pass (``_forward_sam_heads`` defaults to ``multimask_output=False``; transformers decodes three masks
      and takes the best, after resizing the binary mask to the image size);
    * the frame's output is the mask itself at video resolution as logits +-1024 (``pred_masks_video_res``),
      brought to the low-res mask size with antialiasing (``_consolidate_temp_output_across_obj``); its memory is
      made from that output resized to the image size and binarised (``is_mask_from_pts=True``).

    ``video_size()`` -> (H, W) of the video being tracked."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoImageSegmentationOutput,
    )

    def use_mask_as_original(backbone_features, high_res_features, mask_inputs):
        dtype = backbone_features[0].dtype
        mask = mask_inputs.to(dtype)
        appearing = torch.any(mask.flatten(1) > 0.0, dim=1)[..., None].to(dtype)
        pointer = tracker_model._single_frame_forward(input_masks=tracker_model.mask_downsample(mask),
                                                      image_embeddings=high_res_features + [backbone_features],
                                                      multimask_output=False).object_pointer
        pointer = appearing * pointer + (1 - appearing) * tracker_model.no_object_pointer
        video = F.interpolate(mask.float(), size=video_size(), mode="bilinear", align_corners=False, antialias=True)
        video_logits = torch.where(video > 0.5, -NO_OBJECT_LOGIT, NO_OBJECT_LOGIT)
        low = F.interpolate(video_logits, size=tracker_model.prompt_encoder.mask_input_size, mode="bilinear",
                            align_corners=False, antialias=True)
        size = tracker_model.image_size
        return Sam3TrackerVideoImageSegmentationOutput(
            iou_scores=mask.new_ones(mask.size(0), 1),  # a mask prompt's dummy IoU, as in the original
            pred_masks=low.to(dtype),
            high_res_masks=F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).to(dtype),
            object_pointer=pointer,
            object_score_logits=(20.0 * appearing - 10.0).unsqueeze(-1),
            image_embeddings=high_res_features + [backbone_features],
        )

    tracker_model._use_mask_as_output = use_mask_as_original


def memory_as_original(tracker_model, memory_dtype) -> None:
    """Memory encoding in the original order (``Sam3TrackerBase._encode_new_memory`` + ``SimpleMaskDownSampler``):
    binarise (mask prompts) or sigmoid the image-size mask logits, scale and shift them (x20, -10), THEN resize the
    result to the memory mask size with antialiasing. transformers resizes the logits first and applies the
    sigmoid / threshold after, which differs along every mask edge. ``memory_dtype()``: the storage dtype of the
    memory bank (both implementations keep it in bfloat16)."""
    config = tracker_model.config

    def encode_new_memory(current_vision_feats, pred_masks_high_res, object_score_logits, is_mask_from_pts):
        batch = current_vision_feats.size(1)
        height, width = tracker_model.backbone_feature_sizes[-1]
        pixels = current_vision_feats.permute(1, 2, 0).view(batch, tracker_model.hidden_dim, height, width)
        dtype = pred_masks_high_res.dtype
        mask = (pred_masks_high_res > 0).to(dtype) if is_mask_from_pts else torch.sigmoid(pred_masks_high_res)
        mask = mask * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
        size = tuple(4 * s for s in tracker_model.prompt_encoder.mask_input_size)
        if tuple(mask.shape[-2:]) != size:
            mask = F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False,
                                 antialias=True).to(dtype)
        features, positions = tracker_model.memory_encoder(pixels, mask)
        if tracker_model.occlusion_spatial_embedding_parameter is not None:
            absent = 1 - (object_score_logits > 0).float()
            features = features + absent[..., None] * tracker_model.occlusion_spatial_embedding_parameter[
                ..., None, None].expand(*features.shape)
        features = features.to(memory_dtype()).flatten(2).permute(2, 0, 1)
        positions = positions.to(dtype).flatten(2).permute(2, 0, 1)
        return features, positions

    tracker_model._encode_new_memory = encode_new_memory


def update_memories_as_original(model) -> None:
    """Memory refresh after each frame as the original does it (``Sam3VideoBase._tracker_update_memories``): the
    tracker's low-res logits are first resized bilinearly to the memory mask size, then suppressed / scored /
    encoded. transformers encodes the low-res logits and resizes later (after the sigmoid, in our
    :func:`memory_as_original`), which differs along mask edges."""
    update_memories = model._tracker_update_memories
    size = tuple(4 * s for s in model.tracker_model.prompt_encoder.mask_input_size)

    def resized(masks: torch.Tensor) -> torch.Tensor:
        return F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False)

    def tracker_update_memories(inference_session, frame_idx, low_res_masks, reconditioned_masks=None):
        high = resized(low_res_masks.unsqueeze(1)).squeeze(1)
        recondition = {k: resized(v) for k, v in (reconditioned_masks or {}).items()}
        return update_memories(inference_session, frame_idx, high, recondition)

    model._tracker_update_memories = tracker_update_memories


def periodic_recondition_keeps_tracker_output(model) -> None:
    """On the periodic reconditioning frames (every ``recondition_every_nth_frame``) the original re-feeds the
    matched detections to the tracker but still outputs the tracker's masks: only its box-IoU reconditioning
    (``reconstruction_bbox_iou_thresh``, 0 in ``build_sam3_video_model``) replaces an output by the detection
    (``Sam3VideoBase.run_tracker_update_planning_phase``). transformers replaces the outputs of every periodically
    reconditioned object by its detection mask; here the ids are withheld from that replacement."""
    prepare = model._prepare_recondition_masks

    def prepare_recondition_masks(*args, **kwargs):
        masks, _ = prepare(*args, **kwargs)
        return masks, set()

    model._prepare_recondition_masks = prepare_recondition_masks


class Sam3Tracker(Tracker):
    """Text -> every matching instance, tracked (``Sam3VideoModel``)."""

    kind = KIND
    supports_text = True
    supports_prompts = False
    # the memory bank's storage dtype, as in the official package and transformers (half the memory of float32)
    memory_dtype = torch.bfloat16

    def __init__(self, model, tokenizer, source: str = "", variant: str = ""):
        super().__init__(source, variant)
        self.session = None
        mask_ops.install()
        with_geometry_token(model.detector_model)
        self._video_frames = 0
        self.selection = MemorySelection(model.tracker_model, lambda: self._video_frames)
        self.selection.install()
        add_objects_as_original(model, self.selection)
        mask_input_as_original(model.tracker_model, lambda: self._video_size)
        memory_as_original(model.tracker_model, lambda: self.memory_dtype)
        update_memories_as_original(model)
        periodic_recondition_keeps_tracker_output(model)
        self._video_size = (0, 0)
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def memory_window(self) -> int:
        tracker = self.model.config.tracker_config
        return max(tracker.num_maskmem, tracker.max_object_pointers_in_encoder) + 1

    def track(self, frames, prompts: Sequence[TrackPrompt] = (), text: Optional[str] = None, *,
              progress=None, cancel=None, **options) -> TrackResult:
        if options:
            raise ValueError(f"sam3 tracker: unknown option(s) {sorted(options)}")
        if prompts:
            raise ValueError("the SAM 3 tracker follows a text phrase; boxes and clicks need a SAM 2 / EdgeTAM model")
        if not text or not text.strip():
            raise ValueError("the SAM 3 tracker needs a text phrase (e.g. 'person', 'the dog on the left')")
        from .api import as_uint8_frames

        frames = as_uint8_frames(frames)
        count, height, width = frames.shape[:3]
        logits_per_frame = self.run(frames, text.strip(), progress=progress, cancel=cancel)
        return self.assemble(logits_per_frame, count, height, width)

    def new_session(self, height: int, width: int, text: str):
        from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

        self._video_size = (height, width)
        self.selection.reset()
        session = Sam3VideoInferenceSession(video=None, video_height=height, video_width=width,
                                            inference_device=self.device, inference_state_device=self.device,
                                            video_storage_device="cpu", dtype=self.dtype)
        prompt_id = session.add_prompt(text)
        ids, mask = tokenize(self.tokenizer, text)
        session.prompt_input_ids[prompt_id] = ids.to(self.device)
        session.prompt_attention_masks[prompt_id] = mask.to(self.device)
        return session

    @torch.inference_mode()
    def run(self, frames: torch.Tensor, text: str, *, progress=None, cancel=None) -> dict[int, dict]:
        """Per frame: {obj_id: (low-res logits (H_low, W_low) float32 on the CPU, score)} for the objects the official
        post-processing shows (not suppressed, not removed at hot start, non-empty)."""
        count, height, width = frames.shape[:3]
        size = self.model.config.image_size
        session = self.new_session(height, width, text)
        self._video_frames = count  # the official tracker normalises pointer positions by the video's length
        delay = self.model.hotstart_delay
        window = self.memory_window() + max(delay, 0)
        self.session = session  # readable from a progress callback (the tests check its size per frame)
        try:
            return self._propagate(session, frames, size, delay, window, progress, cancel)
        finally:
            self.session = None

    def _propagate(self, session, frames, size, delay, window, progress, cancel) -> dict[int, dict]:
        count = frames.shape[0]
        buffer, shown = [], {}
        # The official flow (Sam3VideoPredictor: add_prompt on frame 0, then propagate_in_video from frame 0) runs
        # frame 0 once when the phrase is added and again as the first propagated frame; the second pass then sees
        # the objects the first one started. transformers' propagate_in_video_iterator runs it once only.
        check_cancelled(cancel)
        session.add_new_frame(prepare_frame(frames[0], size), 0)
        self.model(inference_session=session, frame_idx=0)
        for frame_idx in range(count):
            check_cancelled(cancel)
            session.add_new_frame(prepare_frame(frames[frame_idx], size), frame_idx)
            out = self.model(inference_session=session, frame_idx=frame_idx)
            if delay > 0:
                buffer.append(out)
                session.hotstart_removed_obj_ids.update(out.removed_obj_ids)
                if frame_idx == count - 1:
                    ready, buffer = buffer, []
                elif len(buffer) >= delay:
                    ready, buffer = buffer[:1], buffer[1:]
                else:
                    ready = []
            else:
                ready = [out]
            for item in ready:
                shown[item.frame_idx] = self._visible(session, item)
            prune_session(session, frame_idx, window, self.selection)
            report(progress, frame_idx + 1, count)
        return shown

    @staticmethod
    def _visible(session, out) -> dict[int, tuple[torch.Tensor, float]]:
        hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
        visible = {}
        for obj_id in sorted(out.obj_id_to_mask):
            if obj_id in hidden:
                continue
            low = out.obj_id_to_mask[obj_id][0].float().cpu()
            visible[int(obj_id)] = (low, float(out.obj_id_to_score[obj_id]))
        return visible

    @staticmethod
    def assemble(shown: dict[int, dict], count: int, height: int, width: int) -> TrackResult:
        """Logits at frame size (bilinear, as the official ``build_outputs``), ``NO_OBJECT_LOGIT`` where an object
        is not shown; objects whose mask is empty on every frame are dropped (the official output hides them)."""
        ids = sorted({obj_id for per_frame in shown.values() for obj_id in per_frame})
        logits = torch.full((len(ids), count, height, width), NO_OBJECT_LOGIT, dtype=torch.float32)
        best = {obj_id: 0.0 for obj_id in ids}
        for frame_idx, per_frame in shown.items():
            for obj_id, (low, score) in per_frame.items():
                row = ids.index(obj_id)
                logits[row, frame_idx] = F.interpolate(low[None, None], size=(height, width), mode="bilinear",
                                                       align_corners=False)[0, 0]
                best[obj_id] = max(best[obj_id], score)
        keep = [i for i, obj_id in enumerate(ids) if (logits[i] > 0).any()]
        logits = logits[keep]
        kept = [ids[i] for i in keep]
        return TrackResult(union_of(logits, (count, height, width)), logits, kept, [best[i] for i in kept])


def _finish(model, device, dtype):
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def load_original(path: Path, state: dict, device, dtype) -> Sam3Tracker:
    """``sam3.pt`` -> :class:`Sam3Tracker`: every tensor of the file is placed (or is one of ``UNUSED_ORIGINAL`` /
    a rotary table) and every model tensor comes from the file."""
    from transformers import Sam3VideoModel

    from ..loading import _load_into
    from .convert_sam3 import convert_sam3_state_dict, sam3_config_from_state_dict

    config = sam3_config_from_state_dict(state)
    unused = [k for k in state if k.startswith(UNUSED_ORIGINAL)]
    if unused:
        log.info("sam3: %d detector point-prompt tensors are not used by the video model", len(unused))
    converted = convert_sam3_state_dict({k: v for k, v in state.items() if k not in set(unused)})
    model = Sam3VideoModel(config)
    _load_into(model, converted, path, "SAM 3")
    tokenizer = load_tokenizer(path.parent)
    vit = config.detector_config.vision_config.backbone_config
    variant = f"{vit.num_hidden_layers}-layer ViT-{vit.hidden_size}"
    return Sam3Tracker(_finish(model, device, dtype), tokenizer, str(path), variant)


def use_original_vit_eps(model) -> None:
    """Folders converted by transformers keep its ViT LayerNorm eps default (1e-6); the original ViT uses 1e-5
    (``ORIGINAL_VIT_LAYER_NORM_EPS``), which moves the features by ~1e-3. Set the original's."""
    from .convert_sam3 import ORIGINAL_VIT_LAYER_NORM_EPS

    backbone = model.detector_model.vision_encoder.backbone
    vit_config = model.config.detector_config.vision_config.backbone_config
    if vit_config.layer_norm_eps != ORIGINAL_VIT_LAYER_NORM_EPS:
        log.info("sam3: ViT LayerNorm eps %s -> %s (the original's)", vit_config.layer_norm_eps,
                 ORIGINAL_VIT_LAYER_NORM_EPS)
        for module in backbone.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = ORIGINAL_VIT_LAYER_NORM_EPS
        vit_config.layer_norm_eps = ORIGINAL_VIT_LAYER_NORM_EPS


def load(source: TrackerSource, device=None, dtype=None) -> Sam3Tracker:
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32
    if source.is_folder:
        from transformers import Sam3VideoModel

        model = Sam3VideoModel.from_pretrained(str(source.path), local_files_only=True)
        use_original_vit_eps(model)
        return Sam3Tracker(_finish(model, device, dtype), load_tokenizer(source.path), str(source.path), "folder")
    return load_original(source.path, source.state(), device, dtype)


register_tracker(KIND, _is_sam3, load, accepts="sam3.pt (+ its bpe_simple_vocab_16e6.txt.gz) or a Sam3VideoModel folder")
