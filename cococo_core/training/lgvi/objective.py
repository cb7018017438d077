"""The LGVI / LGVI-I training objective (paper eqs. 2, 3 and 5).

    z_0 = E(Y), c_x = E(X), z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps       (a_t = alphas_cumprod[t])
    L_diff = || eps - eps_theta(z_t, c_x, c, t) ||^2
    L_mask = CrossEntropy(M_hat, M)      binary, on the mask decoder's logits, at latent resolution
    L_lm   = CrossEntropy(w_hat, w)      next-token, on the chat response (LGVI-I)
    L_LGVI   = l1 L_diff + l2 L_mask                 (l1 = 1, l2 = 0.001)
    L_LGVI-I = l1 L_diff + l2 L_mask + l3 L_lm       (l3 = 0.1)

The ground-truth mask is area-averaged to the latent grid (a soft target where an edge crosses a latent
pixel). Optional: the official ``get_mask_loss_weight_scale_quadratic`` weight ``4 t (T - t) / T^2`` per
sample. Classifier-free guidance at inference (three passes: text+video, video, nothing) needs the model
to see missing conditions, so the text and the video condition are each dropped with a probability
(InstructPix2Pix's 5 % by default); the mask loss counts only where both conditions were kept.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F

MASK_WEIGHTINGS = ("none", "quadratic")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    diffusion: float = 1.0  # lambda_1
    mask: float = 0.001  # lambda_2
    lm: float = 0.1  # lambda_3 (LGVI-I)
    text_dropout: float = 0.05
    video_dropout: float = 0.05
    mask_weighting: str = "none"

    def __post_init__(self):
        if self.mask_weighting not in MASK_WEIGHTINGS:
            raise ValueError(f"mask_weighting must be one of {MASK_WEIGHTINGS}, got {self.mask_weighting!r}")
        for name in ("text_dropout", "video_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LossSettings":
        weights = dict(config.get("loss_weights") or {})
        dropout = dict(config.get("condition_dropout") or {})
        unknown = set(weights) - {"diffusion", "mask", "lm"}
        if unknown:
            raise ValueError(f"unknown loss_weights {sorted(unknown)}; expected diffusion, mask, lm")
        return cls(
            diffusion=float(weights.get("diffusion", cls.diffusion)), mask=float(weights.get("mask", cls.mask)),
            lm=float(weights.get("lm", cls.lm)),
            text_dropout=float(dropout.get("text", cls.text_dropout)),
            video_dropout=float(dropout.get("video", cls.video_dropout)),
            mask_weighting=str(config.get("mask_loss_weighting", cls.mask_weighting)),
        )


def sample_generators(group: dict, sample_seeds: torch.Tensor | None, generator: torch.Generator) -> list[torch.Generator]:
    """One CPU generator per sample of a collated group. With the loop's ``sample_seeds`` (a seed per dataset
    item from (seed, epoch, index)) a sample gets the same noise whichever process or batch position it lands
    in; without them (a direct call) the seeds come from one draw of ``generator`` and the sample indices."""
    if sample_seeds is not None:
        seeds = [int(sample_seeds[int(slot)]) for slot in group["seed_slot"]]
    else:
        base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        seeds = [base + 7919 * int(index) for index in group["index"]]
    return [torch.Generator().manual_seed((seed + 1_000_003 * int(offset)) % 2**63)
            for seed, offset in zip(seeds, group["seed_offset"])]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when the model runs in float64 (losses never lose precision to the cast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(z_t | z_0) for (B, ...) latents and (B,) integer timesteps."""
    alpha = alphas_cumprod.to(latents.device, torch.float64)[timesteps.to(latents.device)]
    shape = (-1,) + (1,) * (latents.dim() - 1)
    signal, sigma = alpha.sqrt().reshape(shape), (1 - alpha).sqrt().reshape(shape)
    return (signal * latents.double() + sigma * noise.double()).to(latents.dtype)


def quadratic_mask_weight(timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Official ``get_mask_loss_weight_scale_quadratic``: 4 t (T - t) / T^2 (0 at both ends, 1 at T/2)."""
    t = timesteps.double()
    total = float(num_train_timesteps)
    return 4.0 * t * (total - t) / total**2


def mask_targets(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, F, H, W) pixel masks -> (B, 1, F, h, w) area fractions on the latent grid."""
    batch, _, frames, height, width = mask.shape
    flat = mask.transpose(1, 2).reshape(batch * frames, 1, height, width).float()
    small = F.interpolate(flat, size=latent_size, mode="area")
    return small.reshape(batch, frames, 1, *latent_size).transpose(1, 2)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the mask decoder's logits, averaged per sample, weighted, averaged over the batch."""
    per_element = F.binary_cross_entropy_with_logits(_wide(logits), targets.to(_wide(logits).dtype), reduction="none")
    per_sample = per_element.flatten(1).mean(dim=1)
    return (per_sample * weights.to(per_sample)).mean()


def diffusion_loss(prediction: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """epsilon-MSE (mean over every element of the batch)."""
    return F.mse_loss(_wide(prediction), noise.to(_wide(prediction).dtype))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: ``logits[k]`` (already the prediction at the position before token k) vs ``labels[k]``."""
    return F.cross_entropy(_wide(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1))
