"""``track_masks``: prompts -> tracked masks with any :class:`~.base.Tracker`, plus the choices every backend
shares (which objects to keep, the union of their masks)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

from ... import validation
from .base import BoxPrompt, PointPrompt, Tracker, TrackPrompt, TrackResult, assign_object_ids
from .prompts import parse_box, parse_point

SELECTIONS = ("all", "top")


def as_uint8_frames(frames) -> torch.Tensor:
    """(F, H, W, 3) uint8 on the CPU from uint8 or float [0, 1] frames (a tensor or an array; RGBA drops alpha)."""
    frames = validation.frames(frames, "frames", drop_alpha=True, single_image=True)
    if frames.dtype != torch.uint8:
        frames = (frames.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return frames.cpu()


def _box(value) -> BoxPrompt:
    if isinstance(value, BoxPrompt):
        return value
    if isinstance(value, str):
        return parse_box(value)
    values = list(value)
    if len(values) not in (4, 5):
        raise ValueError(f"box {value!r}: give (x0, y0, x1, y1) or (x0, y0, x1, y1, frame)")
    return BoxPrompt(*map(float, values[:4]), frame=int(values[4]) if len(values) == 5 else 0)


def _point(value) -> PointPrompt:
    if isinstance(value, PointPrompt):
        return value
    if isinstance(value, str):
        return parse_point(value)
    values = list(value)
    if len(values) not in (2, 3, 4):
        raise ValueError(f"point {value!r}: give (x, y), (x, y, frame) or (x, y, frame, positive)")
    frame = int(values[2]) if len(values) > 2 else 0
    positive = bool(values[3]) if len(values) > 3 else True
    return PointPrompt(float(values[0]), float(values[1]), frame, positive)


def collect_prompts(boxes: Optional[Iterable] = None, points: Optional[Iterable] = None,
                    frame_count: Optional[int] = None, size: Optional[tuple[int, int]] = None) -> list[TrackPrompt]:
    """Boxes then points as prompt objects with object ids (:func:`~.base.assign_object_ids`), checked against the
    clip: frame numbers below ``frame_count``, coordinates inside a ``size`` = (H, W) frame (points) or
    overlapping it (boxes)."""
    prompts: list[TrackPrompt] = [_box(b) for b in boxes or ()] + [_point(p) for p in points or ()]
    for prompt in prompts:
        if frame_count is not None and prompt.frame >= frame_count:
            raise ValueError(f"{prompt} is on frame {prompt.frame} but the video has {frame_count} frames (0.."
                             f"{frame_count - 1})")
        if size is not None:
            height, width = size
            if isinstance(prompt, PointPrompt) and not (0 <= prompt.x <= width and 0 <= prompt.y <= height):
                raise ValueError(f"point {prompt.x},{prompt.y} lies outside the {width}x{height} frame")
            if isinstance(prompt, BoxPrompt) and (prompt.x0 >= width or prompt.y0 >= height or prompt.x1 <= 0
                                                  or prompt.y1 <= 0):
                raise ValueError(f"box {prompt.x0},{prompt.y0},{prompt.x1},{prompt.y1} lies outside the "
                                 f"{width}x{height} frame")
    return assign_object_ids(prompts)


def select_objects(result: TrackResult, objects: Union[str, Sequence[int]] = "all", top_k: int = 1) -> TrackResult:
    """Keep ``"all"`` objects, the ``"top"`` ``top_k`` by score, or the objects whose ids are listed."""
    if isinstance(objects, str):
        if objects == "all":
            return result
        if objects != "top":
            raise ValueError(f"objects must be 'all', 'top' or a list of object ids, got {objects!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if result.scores is None:
            raise ValueError("this tracker gives no per-object scores; choose objects by id or keep all")
        order = sorted(range(len(result.object_ids)), key=lambda i: -result.scores[i])[:top_k]
        return result.select([result.object_ids[i] for i in order])
    return result.select([int(i) for i in objects])


def track_masks(frames, tracker: Tracker, text: Optional[str] = None, boxes: Optional[Iterable] = None,
                points: Optional[Iterable] = None, *, objects: Union[str, Sequence[int]] = "all", top_k: int = 1,
                progress=None, cancel=None, **options) -> TrackResult:
    """Masks of the prompted objects on every frame of ``frames`` ((F, H, W, 3) uint8 or float in [0, 1]).

    ``text``: a phrase (trackers with ``supports_text``; SAM 2 uses GroundingDINO boxes through its ``detector``
    option). ``boxes``: :class:`BoxPrompt`, ``"x0,y0,x1,y1@frame"`` strings or (x0, y0, x1, y1[, frame]) tuples;
    ``points``: :class:`PointPrompt`, ``"x,y@frame:neg"`` strings or (x, y[, frame[, positive]]) tuples.
    ``objects``/``top_k``: which tracked objects to keep (:func:`select_objects`); the result's ``masks`` is their
    union, ``logits`` each one's. ``progress(done, total, None)`` per frame, ``cancel()`` polled per frame.
    ``options`` go to the backend (e.g. SAM 2's ``detector``, ``detect_every``).
    """
    frames = as_uint8_frames(frames)
    prompts = collect_prompts(boxes, points, frames.shape[0], tuple(frames.shape[1:3]))
    if text is not None and not text.strip():
        text = None
    if text is not None and not tracker.supports_text and "detector" not in options:
        raise ValueError(f"{tracker.describe()} does not read text; give boxes/points, or a GroundingDINO detector "
                         "(detector=...) whose boxes on a key frame prompt the tracker")
    if prompts and not tracker.supports_prompts:
        raise ValueError(f"{tracker.describe()} takes no boxes or points; give text")
    if not prompts and text is None:
        raise ValueError("nothing to track: give text, boxes or points")
    result = tracker.track(frames, prompts, text, progress=progress, cancel=cancel, **options)
    return select_objects(result, objects, top_k)
