"""Per-frame masks of a video from a text phrase: GroundingDINO boxes -> SAM masks -> union per frame.

The caption is tokenised and BERT-encoded once per clip. Frames are processed in chunks of ``chunk_size`` (the
detector and SAM image encoder see one chunk as a batch), which bounds activation memory; the (F, H, W) result is
the same for any chunk size. With ``detect_every=k`` only frames 0, k, 2k... are detected and the other frames
reuse the boxes of the last detected frame. A frame without detections gets an empty mask and a logged warning.

Post-processing, in this order: ``fill_holes``, ``grow`` (N > 0 dilates, N < 0 erodes, by exactly N pixels),
``temporal_smooth`` (majority over 2r+1 frames), ``feather`` (soft edge of about N pixels); see :mod:`.morphology`.
``box_mode`` makes each mask the union of its boxes (CoCoCo's instance-aware box masks) and needs no SAM.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .. import validation
from ..hooks import check_cancelled, report
from . import detect as dino
from . import morphology, segment

log = logging.getLogger(__name__)


@dataclass
class MaskOptions:
    """Everything that shapes the masks; defaults are GroundingDINO's thresholds and no post-processing."""

    box_threshold: float = dino.DEFAULT_BOX_THRESHOLD
    text_threshold: float = dino.DEFAULT_TEXT_THRESHOLD
    detect_every: int = 1
    max_boxes: int = 20
    box_mode: bool = False
    fill_holes: bool = False
    grow: int = 0
    temporal_smooth: int = 0
    feather: int = 0
    chunk_size: int = 8
    detection_short_side: int = 800
    detection_max_side: int = 1333
    encode_text_once: bool = True
    preprocessing: str = "original"  # "original": the originals' PIL resize of uint8 frames; "torch": float resize

    def validate(self, names: Mapping[str, str] | None = None) -> None:
        """Check every option; ``names`` maps a field to the name the user typed (``--detection-size`` on the
        command line, ``detection_size`` on the node), which the error messages then use."""
        names = names or {}

        def label(field_name: str) -> str:
            return names.get(field_name, field_name)

        if self.preprocessing not in dino.PREPROCESSING:
            raise ValueError(f"{label('preprocessing')} must be one of {dino.PREPROCESSING}, "
                             f"got {self.preprocessing!r}")
        for name in ("box_threshold", "text_threshold"):
            validation.unit_interval(getattr(self, name), label(name))
        for name in ("detect_every", "chunk_size", "max_boxes", "detection_short_side", "detection_max_side"):
            validation.whole(getattr(self, name), label(name), 1)
        for name in ("temporal_smooth", "feather"):
            validation.whole(getattr(self, name), label(name), 0)


@dataclass
class TextMaskResult:
    """``masks`` (F, H, W) float in [0, 1]; per frame: ``boxes`` (n, 4) xyxy pixels, ``scores`` (n,), ``labels``;
    ``detected[f]`` is False where the boxes were carried over from an earlier frame (``detect_every > 1``)."""

    masks: torch.Tensor
    boxes: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)


def as_frames(frames) -> torch.Tensor:
    """(F, H, W, 3) frames (uint8 kept as uint8, not copied) from a tensor/array of frames or a single (H, W, 3)
    image, checked by :func:`cococo_core.validation.frames`."""
    return validation.frames(frames, "frames", drop_alpha=True, single_image=True)


def as_float(frames: torch.Tensor) -> torch.Tensor:
    """Checked frames as float in [0, 1]; done per chunk so a long uint8 clip stays uint8."""
    return validation.to_float(frames)


def _model_device(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _detect_chunk(detector, frames, prompt, size, options) -> list[dino.FrameDetections]:
    device, dtype = _model_device(detector.model)
    pixels = dino.preprocess(frames.to(device), size, options.preprocessing).to(dtype)
    return dino.detect(detector.model, detector.tokenizer, pixels, prompt, tuple(frames.shape[1:3]),
                       box_threshold=options.box_threshold, text_threshold=options.text_threshold,
                       max_boxes=options.max_boxes)


def _segment_chunk(segmenter, frames, detections, options) -> torch.Tensor:
    height, width = frames.shape[1:3]
    masks = torch.zeros(frames.shape[0], height, width)
    todo = [i for i, d in enumerate(detections) if len(d)]
    if not todo:
        return masks
    embeddings, resized = segment.image_embeddings(segmenter.model, frames[todo], preprocessing=options.preprocessing)
    for row, index in enumerate(todo):
        per_box = segment.masks_from_boxes(segmenter.model, embeddings[row:row + 1], detections[index].boxes,
                                           (height, width), resized)
        masks[index] = per_box.any(0).float()
    return masks


def _carry(found, wanted, count, carried, start, caption, options) -> list[dino.FrameDetections]:
    """Detections for each of ``count`` chunk frames: the frame's own where detected, else the last ones."""
    detections = []
    for i in range(count):
        if i in wanted:
            carried = found[wanted.index(i)]
            if not len(carried):
                log.warning("frame %d: nothing found for %r (box threshold %.2f): empty mask",
                            start + i, caption, options.box_threshold)
        detections.append(carried)
    return detections


def postprocess(masks: torch.Tensor, options: MaskOptions) -> torch.Tensor:
    """fill holes -> grow/shrink -> temporal majority -> feather, on (F, H, W) binary masks."""
    if options.fill_holes:
        masks = morphology.fill_holes(masks)
    masks = morphology.grow(masks, options.grow)
    masks = morphology.temporal_majority(masks, options.temporal_smooth)
    return morphology.feather(masks, options.feather)


def masks_from_text(frames, text: str, detector, segmenter=None, options: MaskOptions | None = None, *,
                    callback=None, cancel=None) -> TextMaskResult:
    """Masks of what ``text`` names in every frame of ``frames`` ((F, H, W, 3), float [0, 1] or uint8).

    ``detector``/``segmenter``: :class:`~.loading.Detector` / :class:`~.loading.Segmenter` (``segmenter`` may be
    None in box mode). ``callback(done_frames, total_frames, None)`` after each chunk; ``cancel()`` before each.
    """
    options = options or MaskOptions()
    options.validate()
    if segmenter is None and not options.box_mode:
        raise ValueError("a SAM segmenter is needed unless box_mode is on")
    frames = as_frames(frames)
    count, height, width = frames.shape[:3]
    prompt = dino.encode_prompt(detector.tokenizer, text, detector.model.config.max_text_len)
    size = dino.detection_size(height, width, detector.model.config, options.detection_short_side,
                               options.detection_max_side)
    log.debug("detection at %dx%d for %dx%d frames", size[1], size[0], width, height)
    result = TextMaskResult(torch.zeros(count, height, width), phrases=prompt.phrases)
    carried = dino.FrameDetections.empty()
    once = dino.text_encoded_once(detector.model) if options.encode_text_once else nullcontext()
    with once:
        for start in range(0, count, options.chunk_size):
            check_cancelled(cancel)
            chunk = as_float(frames[start:start + options.chunk_size])
            wanted = [i for i in range(chunk.shape[0]) if (start + i) % options.detect_every == 0]
            found = _detect_chunk(detector, chunk[wanted], prompt, size, options) if wanted else []
            detections = _carry(found, wanted, chunk.shape[0], carried, start, prompt.caption, options)
            carried = detections[-1]
            if options.box_mode:
                masks = torch.stack([morphology.box_masks(d.boxes, height, width) for d in detections])
            else:
                masks = _segment_chunk(segmenter, chunk, detections, options)
            result.masks[start:start + chunk.shape[0]] = masks
            for i, d in enumerate(detections):
                result.boxes.append(d.boxes)
                result.scores.append(d.scores)
                result.labels.append(list(d.labels))
                result.detected.append(i in wanted)
            report(callback, start + chunk.shape[0], count, None)
    result.masks = postprocess(result.masks, options)
    return result

