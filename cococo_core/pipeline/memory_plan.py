"""Working memory of one video U-Net call, and the ``frame_chunk`` / split-CFG choice that fits a budget.

One source for every caller that needs the number: the ComfyUI nodes choose their memory options with
:func:`plan_unet_memory`, ComfyUI's ``load_models_gpu(memory_required=...)`` gets :func:`unet_working_bytes`,
and ``bench/gpu_paper_case.py --budget`` checks the choice on a GPU.

The estimate counts the activations that are alive together at the peak of one call on N = B·F frames
(B = 2 for batched CFG, 1 for split CFG or no guidance) at an ``h × w`` latent (the working size / 8), with
``C0`` the U-Net's first block width (SD-1.5: 320) and ``s`` the bytes per element:

* **skip connections** (exact, from the block layout): ``conv_in``'s output and every down-block resnet
  output at its level, and every down-sampler output one level lower; for SD-1.5 that is
  ``(3·320 + (320 + 2·640)/4 + (640 + 2·1280)/16 + 3·1280/64)·h·w = 1620·h·w`` elements per frame;
* **full-resolution tensors** outside the chunked layers, ``full_copies`` × ``C0·h·w`` per frame. At the
  top level a motion module holds its input (the residual), the LayerNorm output, the per-location
  (b·h·w, f, C) layout copy, q, k, v, the attention output, its projection, the residual sum and the copy
  back (10); around it the chunked layer's input, its output chunks and their concatenation (3), and the
  up path's skip concatenation (2·C0) and the block output (1): 16 for CoCoCo. LGVI's resnets pool their
  GroupNorm statistics over all frames (so they are not chunked): their normalised input, convolution
  output and the time-embedding sum add 3 (19);
* **one chunk of a per-frame layer**, ``chunk_copies`` × ``C0·h·w`` per frame of the chunk: the
  spatial transformer's GEGLU projection, 2 × ``ff_mult`` × C0 = 8·C0 (the largest per-frame tensor).

Against the measured peaks above the weights (fp32, 512²×16, docs/video_unet.md "Working memory"):
batched 4.54 GiB estimated / 4.10 measured, batched with ``frame_chunk=4`` 3.45 / 3.25, split with
``frame_chunk=4`` 1.80 / 1.85. :data:`SAFETY` (1.15) covers that spread and allocator fragmentation when
a plan is chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

AUTO = "auto"
SAFETY = 1.15  # the estimate's spread against the measurements (-3 % .. +11 %) plus allocator fragmentation
CHUNK_SIZES = (16, 8, 4, 2, 1)  # frame_chunk values the planner tries
VAE_FACTOR = 8


@dataclass(frozen=True)
class UNetShape:
    """What the estimate needs from a U-Net's config (defaults: SD-1.5 as CoCoCo and LGVI use it)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    ff_mult: int = 4  # GEGLU inner width / channels
    full_copies: int = 16  # full-resolution (N, C0, h, w) tensors alive at the peak, see the module docstring

    @classmethod
    def from_config(cls, config, **overrides) -> "UNetShape":
        """From a diffusers-style config (a mapping or an object with the two attributes)."""
        get = config.get if isinstance(config, Mapping) else (lambda key, default: getattr(config, key, default))
        return cls(tuple(get("block_out_channels", cls.block_out_channels)),
                   int(get("layers_per_block", cls.layers_per_block)), **overrides)

    @property
    def chunk_copies(self) -> int:
        """Per frame of a chunk, in units of C0·h·w: the GEGLU projection (2 × ff_mult × C0)."""
        return 2 * self.ff_mult

    def skip_elements(self, latent_h: int, latent_w: int) -> int:
        """Elements of the skip connections the down path keeps for the up path, per frame."""
        height, width = latent_h, latent_w
        total = self.block_out_channels[0] * height * width  # conv_in
        last = len(self.block_out_channels) - 1
        for level, channels in enumerate(self.block_out_channels):
            total += self.layers_per_block * channels * height * width
            if level < last:  # stride-2 down-sampler with padding 1
                height, width = -(-height // 2), -(-width // 2)
                total += channels * height * width
        return total


COCOCO_SHAPE = UNetShape()
LGVI_SHAPE = UNetShape(full_copies=19)


@dataclass(frozen=True)
class MemoryPlan:
    """The options for one run and the working memory they need (``fits``: within the budget)."""

    frame_chunk: int | None  # None: all frames of a call at once
    split_cfg: bool
    working_bytes: int
    budget_bytes: int | None = None
    fits: bool = True

    def describe(self) -> str:
        chunk = "all frames" if self.frame_chunk is None else f"frame_chunk={self.frame_chunk}"
        budget = "" if self.budget_bytes is None else f" of {self.budget_bytes / 2**30:.2f} GiB free"
        return (f"{'split' if self.split_cfg else 'batched'} CFG, {chunk}: ~{self.working_bytes / 2**30:.2f} GiB "
                f"working memory{budget}")


def latent_size(height: int, width: int) -> tuple[int, int]:
    """The latent grid of a working size in pixels (the VAE's factor 8, rounded up)."""
    return -(-int(height) // VAE_FACTOR), -(-int(width) // VAE_FACTOR)


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype (``torch.float16.itemsize``) or a number of bytes."""
    return int(dtype) if isinstance(dtype, int) else int(dtype.itemsize)


def unet_working_bytes(height: int, width: int, frames: int, dtype, *, batch: int = 2, frame_chunk: int | None = None,
                       shape: UNetShape = COCOCO_SHAPE) -> int:
    """Activation bytes at the peak of one U-Net call on ``batch`` × ``frames`` frames of ``height`` × ``width``
    pixels (the working size), the per-frame layers run ``frame_chunk`` frames at a time (None: all)."""
    for name, value in (("height", height), ("width", width), ("frames", frames), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    latent_h, latent_w = latent_size(height, width)
    calls = batch * frames
    chunk = calls if frame_chunk is None else min(_chunk(frame_chunk), calls)
    level0 = shape.block_out_channels[0] * latent_h * latent_w
    elements = (calls * (shape.skip_elements(latent_h, latent_w) + shape.full_copies * level0)
                + chunk * shape.chunk_copies * level0)
    return elements * dtype_bytes(dtype)


def plan_unet_memory(free_bytes: int | None, height: int, width: int, frames: int, dtype, *, guided: bool = True,
                     frame_chunk: int | str | None = AUTO, split_cfg: bool | str = AUTO,
                     shape: UNetShape = COCOCO_SHAPE, split_available: bool = True) -> MemoryPlan:
    """Choose ``frame_chunk`` and split CFG for a U-Net call on ``frames`` frames (the longest window).

    Explicit values are kept; each ``"auto"`` one is chosen as the least restrictive option (the most
    working memory, i.e. the fewest extra kernel launches) whose estimate times :data:`SAFETY` fits
    ``free_bytes``. ``free_bytes=None`` (unknown, e.g. a CPU without a limit) keeps everything whole and
    batched. When nothing fits, the smallest plan is returned with ``fits=False``. Without guidance
    (``guided=False``) there is one half only; ``split_available=False`` (LGVI, whose three guidance passes
    always run one at a time) counts one video per call.
    """
    auto_chunk = frame_chunk == AUTO
    auto_split = split_cfg == AUTO
    chunks = [None, *CHUNK_SIZES] if auto_chunk else [_chunk(frame_chunk)]
    splits = [False, True] if auto_split else [bool(split_cfg)]
    if not guided or not split_available:
        splits = [not split_available and guided]

    def batch(split: bool) -> int:
        return 1 if split or not guided or not split_available else 2

    plans = sorted(
        (MemoryPlan(chunk, split, unet_working_bytes(height, width, frames, dtype, batch=batch(split),
                                                     frame_chunk=chunk, shape=shape), free_bytes)
         for chunk in chunks for split in splits
         if not auto_chunk or chunk is None or chunk < batch(split) * frames),  # a chunk of all frames = None
        key=lambda plan: (-plan.working_bytes, plan.split_cfg),
    )
    if free_bytes is None:
        return plans[0]
    for plan in plans:
        if plan.working_bytes * SAFETY <= free_bytes:
            return plan
    smallest = plans[-1]
    return MemoryPlan(smallest.frame_chunk, smallest.split_cfg, smallest.working_bytes, free_bytes, fits=False)


def _chunk(value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"frame_chunk must be 'auto', None or a whole number of frames >= 1, got {value!r}")
    return value


__all__ = ["AUTO", "COCOCO_SHAPE", "LGVI_SHAPE", "MemoryPlan", "SAFETY", "UNetShape", "dtype_bytes", "latent_size",
           "plan_unet_memory", "unet_working_bytes"]
