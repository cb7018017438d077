"""CoCoCo's conditioning latents and the VAE round trip, in frame chunks (cococo-official.md §3.2, §3.6).

* masked image = (1 - m)·x with x in [-1, 1] (the hole becomes 0, mid-grey);
* latents = 0.18215 · VAE posterior *sample* (as upstream; ``noise=None`` gives the posterior mean);
* the latent mask is the pixel mask resized with nearest (pixel (8i, 8j) of each 8x8 cell), not binarized;
* decoding: z / 0.18215 -> VAE -> clamp(x/2 + 0.5, 0, 1).

The posterior noise is passed in (drawn by the caller from the seed on the CPU), so chunking and the
device never change the numbers drawn. Large frames can be encoded/decoded tiled (diffusers tiling).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..hooks import CancelCheck, check_cancelled

LATENT_SCALE = 0.18215  # hard-coded in the official code; equals SD-1.x VAE's scaling_factor


def module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


TILE_PIXELS = 1024 * 1024  # frames larger than this are VAE-encoded/decoded tiled unless told otherwise


def tiling_wanted(padded_hw: tuple[int, int], vae_tiling: bool | None) -> bool:
    """``vae_tiling`` as asked; None (auto) tiles frames above :data:`TILE_PIXELS` pixels."""
    return vae_tiling if vae_tiling is not None else padded_hw[0] * padded_hw[1] > TILE_PIXELS


@contextlib.contextmanager
def vae_tiling(vae, enabled: bool):
    """Switch diffusers' tiled encode/decode on for the ``with`` block, restoring the VAE's own setting."""
    if not enabled or not hasattr(vae, "use_tiling"):
        yield
        return
    previous = vae.use_tiling
    vae.use_tiling = True
    try:
        yield
    finally:
        vae.use_tiling = previous


def masked_image(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1] and (F, 1, H, W) -> (1 - m)·x with x mapped to [-1, 1]."""
    return (images * 2.0 - 1.0) * (1.0 - mask)


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(F, 1, H, W) -> (F, 1, h, w) by nearest, as ``F.interpolate``'s default mode in the official code."""
    return F.interpolate(mask, size=latent_hw, mode="nearest")


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, *, noise: torch.Tensor | None = None, chunk: int = 8,
                  cancel: CancelCheck | None = None) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, 4, H/8, W/8) float32 scaled latents: 0.18215·(mean + std·noise),
    or 0.18215·mean when ``noise`` is None. Runs ``chunk`` frames per VAE call."""
    device, dtype = module_device_dtype(vae)
    out = []
    for start in range(0, images.shape[0], max(1, chunk)):
        check_cancelled(cancel)
        piece = images[start : start + chunk].to(device, dtype)
        posterior = vae.encode(piece).latent_dist
        latents = posterior.mean.float()
        if noise is not None:
            latents = latents + posterior.std.float() * noise[start : start + chunk].to(device, torch.float32)
        out.append((latents * LATENT_SCALE).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, *, chunk: int = 8, cancel: CancelCheck | None = None) -> torch.Tensor:
    """(F, 4, h, w) scaled latents -> (F, 3, 8h, 8w) float32 in [0, 1] on the CPU."""
    device, dtype = module_device_dtype(vae)
    out = []
    for start in range(0, latents.shape[0], max(1, chunk)):
        check_cancelled(cancel)
        piece = (latents[start : start + chunk] / LATENT_SCALE).to(device, dtype)
        decoded = vae.decode(piece).sample.float()
        out.append((decoded / 2 + 0.5).clamp(0, 1).cpu())
    return torch.cat(out)
