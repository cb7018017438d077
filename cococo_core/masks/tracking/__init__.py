"""Masks that follow objects through a video: one interface for every tracker (SAM 2 / SAM 2.1, EdgeTAM, SAM 3).

Public API (resolved lazily, so importing this package does not import transformers)::

    tracker = load_tracker("models/sam2/sam2.1_hiera_tiny.pt")      # an original file or a Hugging Face folder
    result = track_masks(frames, tracker, boxes=["10,20,200,220@0"], points=["120,90@30:neg"])
    result.masks        # bool (F, H, W): union of the kept objects
    result.logits       # float32 (N_obj, F, H, W): each object's mask logits at frame resolution
    result.object_ids   # [1, ...]

New backends call :func:`register_tracker` (see :mod:`.registry`) and subclass :class:`Tracker` (:mod:`.base`).
"""
from __future__ import annotations

from ..._lazy import lazy_exports

_EXPORTS = {
    "BoxPrompt": ".base",
    "PointPrompt": ".base",
    "TrackPrompt": ".base",
    "TrackResult": ".base",
    "Tracker": ".base",
    "assign_object_ids": ".base",
    "load_tracker": ".registry",
    "register_tracker": ".registry",
    "TrackerSource": ".registry",
    "supported": ".registry",
    "open_source": ".registry",
    "tracker_kind": ".registry",
    "reads_text": ".registry",
    "draw_track_preview": ".preview",
    "track_masks": ".api",
    "select_objects": ".api",
    "collect_prompts": ".api",
    "parse_box": ".prompts",
    "parse_point": ".prompts",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
