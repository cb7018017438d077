"""A lower bound on the working memory of a video inpainting run, checked before any model loads.

``--width 100000`` used to load every model and then fail in the first resize, asking for hundreds of GB.
:func:`estimate` adds up the tensors a run cannot avoid holding at once, from the frame count, the padded
working size and the dtypes alone (the model weights are not included):

* host memory, float32 planes at the working size: CoCoCo (:mod:`.pipeline`) holds the frames (3 channels),
  the hole mask (1) and the masked frames given to the VAE (3), 28 bytes per working pixel per frame; LGVI
  (:mod:`cococo_core.lgvi.pipeline`) the frames given to the VAE (3), 12 bytes;
* the VAE, ``vae_chunk`` frames per call: diffusers' ``AutoencoderKL`` runs its outer blocks at full
  resolution with 128 channels, and a ResNet block holds at least its input and output: 2 x 128 values per
  pixel per frame in the VAE dtype (per 512 x 512 tile when the VAE is tiled);
* the U-Net: the skip activations SD-1.x's ``UNet2DConditionModel`` keeps for its up path
  (:meth:`.memory_plan.UNetShape.skip_elements`, 1620 values per latent pixel for SD-1.5) for each frame of a
  window (at least one) and each classifier-free-guidance branch (2, or 1 with split CFG), in the U-Net dtype.

:func:`check` refuses an estimate above the machine's memory (RAM, or the GPU's memory for what runs on
the GPU) with the numbers, and warns above what is free now.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from .memory_plan import COCOCO_SHAPE

log = logging.getLogger(__name__)

COCOCO_HOST_PLANES = 3 + 1 + 3  # float32 frames, hole mask, masked frames
LGVI_HOST_PLANES = 3  # float32 frames in [-1, 1]
VAE_CHANNELS, VAE_HELD = 128, 2
VAE_TILE = 512  # diffusers' tile_sample_min_size for SD-1.x VAEs (config sample_size)
LATENT_FACTOR = 8
GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part; ``host`` parts live in CPU memory, the others on the compute device."""

    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)
    describe: str = ""

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate(frames: int, padded_hw: tuple[int, int], *, host_planes: int, dtype: torch.dtype = torch.float32,
             vae_dtype: torch.dtype | None = None, vae_chunk: int = 8, vae_tiled: bool = False,
             window: int = 1, cfg_branches: int = 2) -> MemoryEstimate:
    """The lower bound described in the module docstring for ``frames`` frames padded to ``padded_hw``."""
    height, width = padded_hw
    pixels = height * width
    vae_pixels = min(pixels, VAE_TILE * VAE_TILE) if vae_tiled else pixels
    skips = COCOCO_SHAPE.skip_elements(height // LATENT_FACTOR, width // LATENT_FACTOR)
    return MemoryEstimate(
        host={"frames": frames * pixels * host_planes * 4},
        device={
            "vae": min(vae_chunk, frames) * vae_pixels * VAE_CHANNELS * VAE_HELD * _bytes(vae_dtype or dtype),
            "unet": max(1, min(window, frames)) * cfg_branches * skips * _bytes(dtype),
        },
        describe=f"{frames} frame(s) at {width}x{height} working pixels",
    )


def cococo(frames: int, padded_hw: tuple[int, int], *, dtype: torch.dtype, vae_dtype: torch.dtype | None = None,
           vae_chunk: int = 8, vae_tiled: bool = False, context_length: int | None = None, split_cfg: bool = False,
           guidance_scale: float = 2.0) -> MemoryEstimate:
    """:func:`estimate` for a :class:`~.pipeline.CoCoCoPipeline` call with these options (a window of
    ``context_length`` frames when given, else at least one; two guidance branches unless CFG is off (scale
    <= 1) or split)."""
    branches = 1 if split_cfg or guidance_scale <= 1 else 2
    return estimate(frames, padded_hw, host_planes=COCOCO_HOST_PLANES, dtype=dtype, vae_dtype=vae_dtype,
                    vae_chunk=vae_chunk, vae_tiled=vae_tiled, window=context_length or 1, cfg_branches=branches)


def lgvi(frames: int, work_hw: tuple[int, int], *, dtype: torch.dtype, vae_chunk: int = 8, window: int = 1,
         guided: bool = True) -> MemoryEstimate:
    """:func:`estimate` for a :class:`~cococo_core.lgvi.pipeline.LGVIPipeline` call: windows of ``window``
    frames, three guidance branches (text, video, unconditional) when guidance is on, else one."""
    return estimate(frames, work_hw, host_planes=LGVI_HOST_PLANES, dtype=dtype, vae_chunk=vae_chunk,
                    window=window, cfg_branches=3 if guided else 1)


def _cpu_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM; None where the system does not say."""
    total = available = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:  # a container's limit (cgroup v2) is the machine this process has
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as limit:
            text = limit.read().strip()
        if text.isdigit():
            total = min(total, int(text)) if total else int(text)
    except OSError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return total, available


def _device_memory(device: torch.device) -> tuple[int | None, int | None]:
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        return total, free
    return None, None


def _gib(count: int) -> str:
    return f"{count / GIB:,.1f} GiB" if count >= GIB // 10 else f"{count / 1024 ** 2:,.1f} MiB"


def check(estimate_: MemoryEstimate, device: str | torch.device = "cpu", *,
          options: str = "the working size or the number of frames",
          machine: tuple[int | None, int | None] | None = None) -> None:
    """Refuse (ValueError) an estimate above the memory there is; warn above the memory free now.

    ``options`` names what the user can lower (the options they typed); ``machine`` overrides the
    (total, available) RAM (tests)."""
    device = torch.device(device)
    ram_total, ram_free = machine if machine is not None else _cpu_memory()
    on_cpu = device.type == "cpu"
    needs = [("RAM", estimate_.host_bytes + (estimate_.device_bytes if on_cpu else 0), ram_total, ram_free)]
    if not on_cpu:
        gpu_total, gpu_free = _device_memory(device)
        needs.append((f"{device} memory", estimate_.device_bytes, gpu_total, gpu_free))
    parts = ", ".join(f"{name} {_gib(size)}" for name, size in {**estimate_.host, **estimate_.device}.items())
    for where, need, total, free in needs:
        if total is not None and need > total:
            raise ValueError(
                f"{estimate_.describe} need at least {_gib(need)} of {where} ({parts}; model weights not counted) "
                f"but this machine has {_gib(total)}; lower {options}")
        if free is not None and need > free:
            log.warning("%s need at least %s of %s (%s) and %s is free now; the run may swap or fail",
                        estimate_.describe, _gib(need), where, parts, _gib(free))
