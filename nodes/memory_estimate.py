"""Working memory of a pipeline run (bytes besides the weights), the ``memory_required`` the nodes give
ComfyUI's ``load_models_gpu`` so that it offloads other models until the run fits.

The numbers are the pack's own CPU measurements (peak RSS above the loaded weights, fp32, one guided step or one
VAE call), fitted to a linear model in the latent positions (h/8 · w/8) and frames; activations scale with the
compute dtype's size. They estimate a GPU run's need from above (CPU allocators keep more than CUDA's):

* CoCoCo U-Net step (README "Benchmarks", docs/video_unet.md "Working memory"): at 512²×16 frames 4.10 GiB with
  batched CFG, 3.25 GiB with ``frame_chunk=4``, 1.85 GiB with ``split_cfg`` and ``frame_chunk=4``. With
  ``P`` latent positions, ``V`` videos per U-Net call (2 for batched CFG, else 1), ``F`` frames per call and
  ``k`` frames per chunk of the per-frame layers (``frame_chunk``, whole call when unset), a step holds
  ``C + P·(V·F·MOTION + min(k, V·F)·PER_FRAME)``: the motion modules' activations span all frames, the per-frame
  layers only a chunk. The three points give MOTION, PER_FRAME and C; the model then gives 0.80 GiB at 256²×8
  batched, measured 0.78 and 0.92 GiB.
* LGVI U-Net step (docs/lgvi.md "Benchmark"): 0.47 GiB at 256²×8; its three guidance passes run one after
  the other (``cococo_core.lgvi.pipeline``), so a step holds one pass: ``C + P·F·LGVI``.
* SD VAE (diffusers ``AutoencoderKL`` in the SD-1.5 layout, random weights, fp32, 256², one process per
  reading, docs/nodes.md "Memory"): decoding 1 / 2 / 4 frames 0.387 / 0.485 / 0.808 GiB, encoding 0.168 /
  0.324 / 0.637 GiB. Per pixel: decode 4047 B + 2290 B per frame (line through the 1- and 4-frame readings),
  encode 2750 B per frame (its largest per-frame reading).
"""
from __future__ import annotations

import torch

GIB = 1 << 30
FP32_BYTES = 4

# CoCoCo video U-Net, fp32 bytes (fitted above)
UNET_CONSTANT = int(0.329 * GIB)
UNET_MOTION_PER_POSITION_FRAME = 22938
UNET_PER_FRAME_LAYERS_PER_POSITION_FRAME = 7958
# LGVI U-Net: (0.47 GiB - UNET_CONSTANT) over 32·32 positions × 8 frames
LGVI_PER_POSITION_FRAME = 18481
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
    positions = (height // 8) * (width // 8)
    batch = (2 if guidance and not split_cfg else 1) * frames
    chunk = min(frame_chunk, batch) if frame_chunk else batch
    activations = positions * (batch * UNET_MOTION_PER_POSITION_FRAME + chunk * UNET_PER_FRAME_LAYERS_PER_POSITION_FRAME)
    return UNET_CONSTANT + int(activations * _dtype_scale(dtype))


def lgvi_step_bytes(width: int, height: int, frames: int, dtype: torch.dtype = torch.float32) -> int:
    """Working memory of one LGVI U-Net pass over ``frames`` frames (one window) at ``width``×``height``."""
    positions = (height // 8) * (width // 8)
    return UNET_CONSTANT + int(positions * frames * LGVI_PER_POSITION_FRAME * _dtype_scale(dtype))


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
                   dtype: torch.dtype = torch.float32, vae_frames: int = 8) -> int:
    """Peak working memory of an LGVI / LGVI-I removal: the larger of one U-Net pass over a window of
    ``window_length`` frames and a VAE call of ``vae_frames`` frames (the pipeline's ``vae_batch_size``)."""
    step = lgvi_step_bytes(width, height, min(frames, window_length), dtype)
    return max(step, vae_bytes(width, height, min(vae_frames, frames), dtype))
