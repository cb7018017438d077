"""The CoCoCo sampling loop: DDIM + classifier-free guidance over temporal context windows.

Per step (cococo-official.md §3.3-3.5): the U-Net input is the 9-channel concatenation
[noisy latents 4 | mask 1 | masked-image latents 4]; the guided noise is ε = ε_u + g·(ε_c − ε_u)
with ε_u from the negative prompt; then one eta = 0 DDIM update. Sampling starts from pure noise and
the conditioning is the same at every step (no known-region blending).

Differences from upstream, none of which change the numbers of the plain path beyond float rounding:
both CFG halves go through one batched U-Net call (``split_cfg=True`` gives upstream's two calls);
g <= 1 runs only the conditional half (upstream crashes there); the latents, CFG and DDIM arithmetic
stay in float32 whatever the U-Net dtype (upstream does them in fp16; a float64 U-Net gets float64).

Any length: the noise prediction of each step is computed per overlapping window of frames and
blended (:mod:`cococo_core.windows`). Windows are used when asked for, or automatically when the video
exceeds the positional-encoding limits the motion modules were built and trained with: 64 frames
(temporal PE) or 10,000 damped-global-attention tokens (DGA PE, §1.4-1.5).
"""
from __future__ import annotations

import logging
import math

import torch

from ..hooks import CancelCheck, StepCallback, check_cancelled, report
from ..windows import blend_windows, plan_windows
from .ddim import INIT_NOISE_SIGMA, ddim_schedule, ddim_step

logger = logging.getLogger(__name__)

MAX_TEMPORAL_FRAMES = 64  # temporal PE max_len
MAX_DGA_TOKENS = 10000  # DGA PE max_len
UNET_LEVELS = 4


def dga_tokens_per_frame(latent_h: int, latent_w: int) -> int:
    """Largest per-frame DGA token count over the U-Net levels (§1.4: ``(12, int(12/H·W))`` if H > 12)."""
    from ..models.motion_attention import dga_grid  # noqa: PLC0415 - keeps this module free of model imports

    most = 0
    height, width = latent_h, latent_w
    for _ in range(UNET_LEVELS):
        rows, cols = dga_grid(height, width)
        most = max(most, rows * cols)
        height, width = -(-height // 2), -(-width // 2)  # stride-2 conv with padding 1
    return most


def _trained_frames(latent_h: int, latent_w: int) -> int:
    """Most frames one U-Net call holds within both PE limits (0 when not even one frame fits)."""
    return min(MAX_TEMPORAL_FRAMES, MAX_DGA_TOKENS // dga_tokens_per_frame(latent_h, latent_w))


def max_window_frames(latent_h: int, latent_w: int) -> int:
    """Most frames one U-Net call may hold within both PE limits."""
    frames = _trained_frames(latent_h, latent_w)
    if frames < 1:
        raise ValueError(f"a {latent_w}x{latent_h} latent gives {dga_tokens_per_frame(latent_h, latent_w)} damped-global-"
                         f"attention tokens per frame, more than the {MAX_DGA_TOKENS} the model supports; use a smaller "
                         f"or less elongated working size")
    return frames


def resolve_context(num_frames: int, latent_h: int, latent_w: int, length: int | None,
                    overlap: int | None) -> tuple[int, int]:
    """(window length, overlap). Defaults: the whole video when it fits the PE limits, else the longest
    window that fits, overlapping by a quarter of its length. An explicit length is used as given (the
    position encodings are computed for any length) with a warning past the trained limits."""
    if length is None:
        limit = max_window_frames(latent_h, latent_w)
        length = num_frames if num_frames <= limit else limit
    elif length < 1:
        raise ValueError(f"context length must be >= 1 frame, got {length}")
    elif min(length, num_frames) > _trained_frames(latent_h, latent_w):
        logger.warning("%d frames per U-Net call exceed the motion modules' trained limits (%d frames at this size)",
                       min(length, num_frames), _trained_frames(latent_h, latent_w))
    if overlap is None:
        overlap = length // 4 if num_frames > length else 0
    if num_frames > length and not 0 <= overlap < length:
        raise ValueError(f"context overlap must be in [0, {length}) for windows of {length} frames, got {overlap}")
    return length, overlap


def _prediction(output) -> torch.Tensor:
    """The noise tensor from a U-Net result: a tensor, a diffusers output (``.sample``) or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    return output[0]


def _check_inputs(noise, masked_latents, mask, prompt_embeds, negative_prompt_embeds, guidance_scale):
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
    if noise.dim() != 5 or noise.shape[1] != 4:
        raise ValueError(f"noise must be (batch, 4, frames, h, w), got {tuple(noise.shape)}")
    if masked_latents.shape != noise.shape:
        raise ValueError(f"masked latents {tuple(masked_latents.shape)} must match the noise {tuple(noise.shape)}")
    expected_mask = (noise.shape[0], 1) + tuple(noise.shape[2:])
    if tuple(mask.shape) != expected_mask:
        raise ValueError(f"latent mask must be {expected_mask}, got {tuple(mask.shape)}")
    for name, embeds in (("prompt", prompt_embeds), ("negative prompt", negative_prompt_embeds)):
        if embeds is None:
            continue
        if embeds.dim() != 3 or embeds.shape[0] not in (1, noise.shape[0]):
            raise ValueError(f"{name} embeddings must be (1 or batch, tokens, dim), got {tuple(embeds.shape)}")
    if guidance_scale > 1 and negative_prompt_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative prompt embeddings (those of \"\" by default)")


@torch.no_grad()
def denoise(unet, noise: torch.Tensor, masked_latents: torch.Tensor, mask: torch.Tensor,
            prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None,
            num_inference_steps: int = 50, guidance_scale: float = 14.0, *,
            context_length: int | None = None, context_overlap: int | None = None, split_cfg: bool = False,
            callback: StepCallback | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
    """Sample CoCoCo latents; returns the final latents (B, 4, F, h, w) on the U-Net's device (float32;
    float64 for a float64 U-Net).

    ``noise`` (B, 4, F, h, w) is used as given (times the initial sigma, 1); ``masked_latents`` are the
    scaled VAE latents of the masked frames, same shape; ``mask`` (B, 1, F, h, w) is the latent-size mask.
    ``unet(sample, timestep, encoder_hidden_states)`` maps (N, 9, f, h, w) to (N, 4, f, h, w).
    ``callback(step, total, latents)`` runs after each step; ``cancel()`` is polled before every U-Net call.
    """
    _check_inputs(noise, masked_latents, mask, prompt_embeds, negative_prompt_embeds, guidance_scale)
    parameter = next(unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    batch, _, num_frames, latent_h, latent_w = noise.shape
    length, overlap = resolve_context(num_frames, latent_h, latent_w, context_length, context_overlap)
    windows = plan_windows(num_frames, length, overlap)
    schedule = ddim_schedule(num_inference_steps)
    guided = guidance_scale > 1

    condition = torch.cat([mask, masked_latents], dim=1).to(device, work)
    positive = prompt_embeds.to(device, dtype).expand(batch, -1, -1)
    negative = negative_prompt_embeds.to(device, dtype).expand(batch, -1, -1) if guided else None
    latents = noise.to(device, work) * INIT_NOISE_SIGMA

    def guided_noise(frames: list[int], timestep: torch.Tensor) -> torch.Tensor:
        if len(frames) == num_frames:
            sample = torch.cat([latents, condition], dim=1)
        else:
            index = torch.tensor(frames, device=device)
            sample = torch.cat([latents.index_select(2, index), condition.index_select(2, index)], dim=1)
        sample = sample.to(dtype)
        if not guided:
            check_cancelled(cancel)
            return _prediction(unet(sample, timestep, positive)).to(work)
        if split_cfg:
            check_cancelled(cancel)
            uncond = _prediction(unet(sample, timestep, negative)).to(work)
            check_cancelled(cancel)
            cond = _prediction(unet(sample, timestep, positive)).to(work)
        else:
            check_cancelled(cancel)
            both = _prediction(unet(torch.cat([sample, sample]), timestep, torch.cat([negative, positive]))).to(work)
            uncond, cond = both.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    total = len(schedule.timesteps)
    for step, t in enumerate(schedule.timesteps):
        check_cancelled(cancel)
        timestep = torch.tensor(t, device=device, dtype=torch.long)
        eps = blend_windows(num_frames, windows, lambda frames: guided_noise(frames, timestep), frame_dim=2)
        latents = ddim_step(schedule, eps, t, latents)
        report(callback, step + 1, total, latents)
    return latents
