"""Shared helpers of the pipeline tests (``import test_pipeline_helpers``): tiny CoCoCo pipelines, a U-Net
spy, a cheap stand-in video U-Net, the official sampling loop transcribed literally, and a rendered clip."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

import tiny_models


@functools.lru_cache(maxsize=None)
def tiny_parts(motion: str = "random", dtype: torch.dtype = torch.float32):
    """(vae, text_encoder, tokenizer, video_unet) on tiny random weights; ``motion="identity"`` keeps the
    official zero ``proj_out`` init, so every motion module is the identity and frames are independent.
    ``dtype=torch.float64`` makes comparisons free of batch-size-dependent float32 rounding. Cached: copy a part
    before changing it."""
    from transformers import CLIPTokenizer

    from cococo_core.models import VideoUNet, video_unet_from_unet2d

    parts = tiny_models.components()
    for module in parts.values():
        module.to(dtype)
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_models.tokenizer_folder()))
    if motion == "identity":
        unet = VideoUNet(parts["unet"], motion_init="official")
    else:
        unet = video_unet_from_unet2d(parts["unet"], tiny_models.motion_state())
    return parts["vae"], parts["text_encoder"], tokenizer, unet.eval()


def tiny_pipeline(motion: str = "random", unet=None, dtype: torch.dtype = torch.float32, **kwargs):
    """A CoCoCoPipeline on tiny models; ``dtype=torch.float64`` runs every part in float64 (for comparisons of
    differently shaped computations, whose float32 rounding differs by CPU)."""
    from cococo_core.pipeline import CoCoCoPipeline

    vae, text_encoder, tokenizer, video_unet = tiny_parts(motion, dtype)
    return CoCoCoPipeline(vae, text_encoder, tokenizer, unet if unet is not None else video_unet, **kwargs)


class Spy(nn.Module):
    """Wraps a video U-Net and records the frame count and batch of every call."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.inner = unet
        self.calls: list[tuple[int, int]] = []

    def forward(self, sample, timestep, encoder_hidden_states):
        self.calls.append((sample.shape[0], sample.shape[2]))
        return self.inner(sample, timestep, encoder_hidden_states)


class StandInUNet(nn.Module):
    """A cheap video U-Net with the real call signature: per-frame mixing of the 9 channels plus the mean
    over frames (so windows matter), modulated by the timestep and the text."""

    def __init__(self, text_dim: int = 32):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.mix = nn.Parameter(0.3 * torch.randn(4, 9, generator=generator))
        self.text = nn.Parameter(0.3 * torch.randn(text_dim, generator=generator))
        self.calls: list[tuple[int, int]] = []

    def forward(self, sample, timestep, encoder_hidden_states):
        self.calls.append((sample.shape[0], sample.shape[2]))
        per_frame = torch.einsum("oc,bcfhw->bofhw", self.mix, sample)
        temporal = sample[:, :4].mean(dim=2, keepdim=True)
        text = (encoder_hidden_states.mean(dim=1) @ self.text).view(-1, 1, 1, 1, 1)
        return torch.tanh(per_frame + temporal * text) * (1 + float(timestep) / 1000)


def official_loop(unet, noise, masked_latents, mask, cond, uncond, steps, guidance_scale):
    """``AnimationInpaintPipeline.__call__``'s loop (cococo-official.md §3.4-3.5) transcribed literally:
    diffusers DDIM with the yaml config, two batch-1 U-Net calls per step ([0:1] uncond, [1:2] cond)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                              steps_offset=1, clip_sample=False)
    scheduler.set_timesteps(steps)
    text_embeddings = torch.cat([uncond, cond])
    latents = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            latent_model_input = scheduler.scale_model_input(latents, t)
            inputs = torch.cat([latent_model_input, mask, masked_latents], dim=1)
            noise_pred_uncond = unet(inputs, t, text_embeddings[0:1])
            noise_pred_text = unet(inputs, t, text_embeddings[1:2])
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents, eta=0.0).prev_sample
    return latents


def pan_clip(frames: int = 6, height: int = 72, width: int = 100, seed: int = 0) -> np.ndarray:
    """A camera pan over a procedurally drawn scene (sky gradient, hills, sun, textured ground): uint8 RGB."""
    rng = np.random.default_rng(seed)
    scene_w = width + 4 * frames
    y, x = np.mgrid[0:height, 0:scene_w].astype(np.float32)
    sky = np.stack([80 + 100 * y / height, 140 + 60 * y / height, 230 - 40 * y / height], axis=-1)
    hills = height * (0.6 + 0.12 * np.sin(x / 11.0) + 0.05 * np.sin(x / 4.3))
    ground = np.stack([60 + 40 * np.sin(x / 3.0), 120 + 50 * np.cos(y / 2.5), 50 + 20 * np.sin((x + y) / 5.0)], -1)
    scene = np.where((y > hills)[..., None], ground, sky)
    sun = (x - scene_w * 0.7) ** 2 + (y - height * 0.25) ** 2 < (height * 0.12) ** 2
    scene[sun] = (250, 220, 90)
    scene += rng.normal(0, 4, scene.shape)
    scene = np.clip(scene, 0, 255).astype(np.uint8)
    return np.stack([scene[:, 4 * f : 4 * f + width] for f in range(frames)])


def moving_disc_mask(frames: int = 6, height: int = 72, width: int = 100) -> np.ndarray:
    """uint8 0/255 (F, H, W): a disc (the object to remove) moving left to right."""
    y, x = np.mgrid[0:height, 0:width]
    radius = max(4, min(height, width) // 5)
    masks = []
    for f in range(frames):
        cx = width * (0.3 + 0.4 * f / max(1, frames - 1))
        masks.append(((x - cx) ** 2 + (y - height / 2) ** 2 < radius**2) * 255)
    return np.stack(masks).astype(np.uint8)

