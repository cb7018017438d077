"""Working memory of a pipeline run (bytes besides the weights), the ``memory_required`` the nodes give
ComfyUI's ``load_models_gpu`` so that it offloads other models until the run fits: the larger of a denoising
step and a VAE call.

* U-Net steps (CoCoCo and LGVI): :func:`cococo_core.pipeline.memory_plan.unet_working_bytes`, the one estimate
  the nodes' "auto" memory options, this module and ``bench/gpu_paper_case.py --budget`` share (derived from the
  U-Net's block layout; against the measured 512²×16 peaks: docs/pipeline.md "Memory and devices").
* SD VAE (diffusers ``AutoencoderKL`` in the SD-1.5 layout, random weights, fp32, 256², one process per
  reading, docs/nodes.md "Memory"): decoding 1 / 2 / 4 frames 0.387 / 0.485 / 0.808 GiB, encoding 0.168 /
  0.324 / 0.637 GiB. Per pixel: decode 4047 B + 2290 B per frame (line through the 1- and 4-frame readings),
  encode 2750 B per frame (its largest per-frame reading).
"""
from __future__ import annotations

import torch

from cococo_core.pipeline import memory_plan

GIB = 1 << 30
FP32_BYTES = 4

# SD VAE, fp32 bytes per pixel (fitted above)
VAE_DECODE_PER_PIXEL = 4047
VAE_DECODE_PER_PIXEL_FRAME = 2290
VAE_ENCODE_PER_PIXEL_FRAME = 2750


def _dtype_scale(dtype: torch.dtype) -> float:
    return torch.empty((), dtype=dtype).element_size() / FP32_BYTES


def vae_bytes(width: int, height: int, frames: int, dtype: torch.dtype = torch.float32) -> int:
    """Working memory of one SD VAE call (the larger of decoding and encoding) on ``frames`` frames."""
    decode = VAE_DECODE_PER_PIXEL + frames * VAE_DECODE_PER_PIXEL_FRAME
    encode = frames * VAE_ENCODE_PER_PIXEL_FRAME
    return int(width * height * max(decode, encode) * _dtype_scale(dtype))


def cococo_step_bytes(width: int, height: int, frames: int, *, frame_chunk: int | None = None,
                      split_cfg: bool = False, guidance: bool = True, dtype: torch.dtype = torch.float32) -> int:
    """Working memory of one CoCoCo denoising step over ``frames`` frames (one window) at ``width``×``height``."""
    batch = 2 if guidance and not split_cfg else 1
    return memory_plan.unet_working_bytes(height, width, frames, dtype, batch=batch, frame_chunk=frame_chunk)


def lgvi_step_bytes(width: int, height: int, frames: int, dtype: torch.dtype = torch.float32, *,
                    frame_chunk: int | None = None) -> int:
    """Working memory of one LGVI U-Net pass over ``frames`` frames (one window) at ``width``×``height`` (the
    three guidance passes run one after the other)."""
    return memory_plan.unet_working_bytes(height, width, frames, dtype, batch=1, frame_chunk=frame_chunk,
                                          shape=memory_plan.LGVI_SHAPE)


def cococo_run_bytes(width: int, height: int, frames: int, *, frame_chunk: int | None = None,
                     split_cfg: bool = False, guidance: bool = True, context_length: int | None = None,
                     dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype | None = None,
                     vae_frames: int = 8) -> int:
    """Peak working memory of a CoCoCo run at ``width``×``height`` (working size, pixels) over ``frames``
    frames: the larger of a denoising step (per window of ``context_length`` frames) and a VAE call of
    ``vae_frames`` frames (the pipeline's ``vae_chunk``). See the module doc for the sources."""
    window = min(frames, context_length) if context_length else frames
    step = cococo_step_bytes(width, height, window, frame_chunk=frame_chunk, split_cfg=split_cfg, guidance=guidance,
                             dtype=dtype)
    return max(step, vae_bytes(width, height, min(vae_frames, frames), vae_dtype or dtype))


def lgvi_run_bytes(width: int, height: int, frames: int, *, window_length: int = 24,
                   dtype: torch.dtype = torch.float32, vae_frames: int = 8, frame_chunk: int | None = None) -> int:
    """Peak working memory of an LGVI / LGVI-I removal: the larger of one U-Net pass over a window of
    ``window_length`` frames and a VAE call of ``vae_frames`` frames (the pipeline's ``vae_batch_size``)."""
    step = lgvi_step_bytes(width, height, min(frames, window_length), dtype, frame_chunk=frame_chunk)
    return max(step, vae_bytes(width, height, min(vae_frames, frames), dtype))
