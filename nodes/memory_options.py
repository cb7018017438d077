"""The pipeline nodes' memory options: ``frame_chunk`` and split CFG, "auto" chosen from the free memory
ComfyUI reports with the library's estimate (:mod:`cococo_core.pipeline.memory_plan`, the one source)."""
from __future__ import annotations

import contextlib
import logging

from . import comfy_adapter as comfy

logger = logging.getLogger(__name__)

AUTO = "auto"
SPLIT_CFG = (AUTO, "batched", "split")
MAX_FRAME_CHUNK = 256


def frame_chunk_input(what: str = "U-Net") -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_FRAME_CHUNK, "tooltip": f"Frames the {what}'s per-frame "
            "layers process at a time (same result, less memory for smaller values, a little slower). 0 = auto: "
            "the largest that fits the free memory ComfyUI reports (all frames at once when it fits). A value at "
            "least the frames of one call runs them all at once."})


def split_cfg_input() -> tuple:
    return (list(SPLIT_CFG), {"default": AUTO, "tooltip": "Classifier-free guidance as one batched U-Net call "
            "(faster, about twice the working memory) or two calls (split, as the official code). auto: batched "
            "when it fits the free memory ComfyUI reports, else split. Same result up to float rounding."})


def widget_values(frame_chunk: int, split_cfg: str = AUTO) -> dict:
    """Widget values -> ``plan_unet_memory`` keywords (0 and "auto" stay "auto")."""
    if split_cfg not in SPLIT_CFG:
        raise ValueError(f"split_cfg must be one of {', '.join(SPLIT_CFG)}, got {split_cfg!r}")
    if not isinstance(frame_chunk, int) or isinstance(frame_chunk, bool) or frame_chunk < 0:
        raise ValueError(f"frame_chunk must be 0 (auto) or a whole number of frames, got {frame_chunk!r}")
    return dict(frame_chunk=frame_chunk or AUTO, split_cfg=split_cfg if split_cfg == AUTO else split_cfg == "split")


def _plan(free_bytes, height, width, frames, dtype, *, frame_chunk, split_cfg, guided, lgvi):
    from cococo_core.pipeline import memory_plan

    shape = memory_plan.LGVI_SHAPE if lgvi else memory_plan.COCOCO_SHAPE
    return memory_plan.plan_unet_memory(free_bytes, height, width, frames, dtype, guided=guided, shape=shape,
                                        split_available=not lgvi, **widget_values(frame_chunk, split_cfg))


def plan(device, height: int, width: int, frames: int, dtype, *, frame_chunk: int = 0, split_cfg: str = AUTO,
         guided: bool = True, lgvi: bool = False):
    """The :class:`~cococo_core.pipeline.memory_plan.MemoryPlan` for a U-Net call on ``frames`` frames of
    ``height`` × ``width`` working pixels, from the free memory on ``device`` (call it once the model is
    there). A plan that does not fit is logged and run anyway (ComfyUI may still free memory)."""
    chosen = _plan(comfy.free_memory_bytes(device), height, width, frames, dtype, frame_chunk=frame_chunk,
                   split_cfg=split_cfg, guided=guided, lgvi=lgvi)
    if chosen.fits:
        logger.info("memory plan: %s", chosen.describe())
    else:
        logger.warning("memory plan: %s; the run may run out of memory: lower the size or the frames per window",
                       chosen.describe())
    return chosen


@contextlib.contextmanager
def frame_chunk(unet, chunk: int | None):
    """Set ``unet.frame_chunk`` for the block and put the previous value back (the model is cached and shared)."""
    previous = unet.frame_chunk
    unet.frame_chunk = chunk
    try:
        yield unet
    finally:
        unet.frame_chunk = previous
