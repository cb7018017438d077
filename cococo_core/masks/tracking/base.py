"""The one interface every video tracker implements (SAM 2 / SAM 2.1, EdgeTAM, SAM 3).

A tracker turns prompts on some frames into per-object masks on every frame:

* :class:`BoxPrompt`: a box ``x0, y0, x1, y1`` (pixels of the input frames) on frame ``frame``;
* :class:`PointPrompt`: a click ``x, y`` on frame ``frame``, positive (the object) or negative (not the object);
* a text phrase, for trackers with ``supports_text`` (SAM 3: every instance the phrase names).

Prompts name the object they refine with ``object_id``. Without one (see :func:`assign_object_ids`), each box
starts a new object and the points of one frame refine the object of the box on that frame when there is exactly
one, else they form one new object together: "a box, then a few clicks to fix it" and "clicks on one thing" both
do what users expect.

Propagation runs forward AND backward from the prompted frame(s), so a prompt on frame 40 masks frames 0..F-1.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch

from ...hooks import CancelCheck, StepCallback


@dataclass(frozen=True)
class BoxPrompt:
    """A box in input-frame pixels (x0, y0) top-left, (x1, y1) bottom-right, on frame ``frame``."""

    x0: float
    y0: float
    x1: float
    y1: float
    frame: int = 0
    object_id: Optional[int] = None

    def __post_init__(self):
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"box {self.x0},{self.y0},{self.x1},{self.y1}: x1 must exceed x0 and y1 exceed y0")
        if self.frame < 0:
            raise ValueError(f"box on frame {self.frame}: frames count from 0")


@dataclass(frozen=True)
class PointPrompt:
    """A click at (x, y) input-frame pixels on frame ``frame``; ``positive=False`` marks what is NOT the object."""

    x: float
    y: float
    frame: int = 0
    positive: bool = True
    object_id: Optional[int] = None

    def __post_init__(self):
        if self.frame < 0:
            raise ValueError(f"point on frame {self.frame}: frames count from 0")


TrackPrompt = Union[BoxPrompt, PointPrompt]


@dataclass
class TrackResult:
    """What a tracker returns.

    ``masks``: bool (F, H, W), the union of the objects' masks (``logits > 0``);
    ``logits``: float32 (N_obj, F, H, W), each object's mask logits resized to the frame size;
    ``object_ids``: the N_obj ids, in the order of ``logits``;
    ``scores``: one confidence per object (SAM 3's detection score), or None when the tracker has none.
    """

    masks: torch.Tensor
    logits: torch.Tensor
    object_ids: list[int]
    scores: Optional[list[float]] = None

    def __post_init__(self):
        if self.logits.dim() != 4 or len(self.object_ids) != self.logits.shape[0]:
            raise ValueError(f"TrackResult: logits {tuple(self.logits.shape)} must be (N_obj, F, H, W) with one "
                             f"row per object id ({len(self.object_ids)} ids)")
        if self.scores is not None and len(self.scores) != len(self.object_ids):
            raise ValueError("TrackResult: one score per object id")

    @property
    def object_masks(self) -> torch.Tensor:
        """bool (N_obj, F, H, W): each object's own mask."""
        return self.logits > 0

    def select(self, object_ids: Sequence[int]) -> "TrackResult":
        """The result restricted to ``object_ids`` (in that order); the union is recomputed."""
        missing = [i for i in object_ids if i not in self.object_ids]
        if missing:
            raise ValueError(f"object id(s) {missing} not tracked; the tracked ids are {self.object_ids}")
        rows = [self.object_ids.index(i) for i in object_ids]
        logits = self.logits[rows]
        scores = None if self.scores is None else [self.scores[r] for r in rows]
        return TrackResult(union_of(logits, self.masks.shape), logits, list(object_ids), scores)


def union_of(logits: torch.Tensor, frame_shape) -> torch.Tensor:
    """bool (F, H, W): a pixel is masked when any object's logit is > 0 (all False without objects)."""
    if logits.shape[0] == 0:
        return torch.zeros(tuple(frame_shape), dtype=torch.bool)
    return (logits > 0).any(dim=0)


def assign_object_ids(prompts: Sequence[TrackPrompt]) -> list[TrackPrompt]:
    """Every prompt with an explicit ``object_id`` (the rules in the module docstring fill the missing ones)."""
    taken = {p.object_id for p in prompts if p.object_id is not None}
    next_id = 1
    result: list[TrackPrompt] = []
    boxes_on_frame: dict[int, list[int]] = {}
    for prompt in prompts:
        if isinstance(prompt, BoxPrompt):
            if prompt.object_id is None:
                while next_id in taken:
                    next_id += 1
                prompt = replace(prompt, object_id=next_id)
                taken.add(next_id)
            boxes_on_frame.setdefault(prompt.frame, []).append(prompt.object_id)
        result.append(prompt)
    points_object: dict[int, int] = {}
    for index, prompt in enumerate(result):
        if isinstance(prompt, PointPrompt) and prompt.object_id is None:
            if prompt.frame not in points_object:
                boxes = boxes_on_frame.get(prompt.frame, [])
                if len(boxes) == 1:
                    points_object[prompt.frame] = boxes[0]
                else:
                    while next_id in taken:
                        next_id += 1
                    points_object[prompt.frame] = next_id
                    taken.add(next_id)
            result[index] = replace(prompt, object_id=points_object[prompt.frame])
    return result


class Tracker(abc.ABC):
    """A loaded video tracker. Subclasses set ``kind`` ("sam2", "sam3", "edgetam", ...), ``supports_text`` and
    ``supports_prompts``, and implement :meth:`track`; ``source`` says which file/folder it came from and
    ``variant`` which size it is (e.g. "sam2.1 tiny")."""

    kind: str = ""
    supports_text: bool = False
    supports_prompts: bool = True

    def __init__(self, source: str = "", variant: str = ""):
        self.source = source
        self.variant = variant

    @abc.abstractmethod
    def track(self, frames, prompts: Sequence[TrackPrompt] = (), text: Optional[str] = None, *,
              progress: Optional[StepCallback] = None, cancel: Optional[CancelCheck] = None,
              **options) -> TrackResult:
        """Track through ``frames`` (F, H, W, 3) uint8 (tensor or array).

        ``prompts`` carry object ids (:func:`assign_object_ids` has run); ``text`` only when ``supports_text``.
        ``progress(done_frames, total_frames, None)`` after each frame; ``cancel()`` polled before each frame
        (:mod:`cococo_core.hooks`). ``options`` are backend-specific; an unknown one is an error.
        """

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules to move to the compute device while tracking (ComfyUI keeps them offloaded)."""
        model = getattr(self, "model", None)
        return [model] if isinstance(model, torch.nn.Module) else []

    def describe(self) -> str:
        return f"{self.kind} {self.variant} ({self.source})".strip()

