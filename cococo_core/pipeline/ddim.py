"""Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0) on CoCoCo's training noise schedule.

The official sampler is diffusers' ``DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085,
beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)`` with the defaults
``set_alpha_to_one=True``, ``prediction_type="epsilon"``, "leading" timestep spacing, eta 0
(cococo-official.md §3.5). It is written here as a stateless schedule + step so that the sampler
can step any slice of the latents; the tests check it against diffusers step for step.

    x0   = (z_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
    z_s  = sqrt(a_s) * x0 + sqrt(1 - a_s) * eps          (a = alphas_cumprod, s = t - 1000 // steps)

with a_s = 1 when s < 0 (``set_alpha_to_one``). ``scale_model_input`` is the identity and the
initial noise sigma is 1, so sampling starts from the noise as drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
STEPS_OFFSET = 1
INIT_NOISE_SIGMA = 1.0


@dataclass(frozen=True)
class DDIMSchedule:
    """The timesteps of one sampling run and the cumulative alphas they index."""

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor  # (1000,) float32, on the CPU
    step_ratio: int

    def alphas(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, a_prev) as float32 0-dim tensors, exactly the values diffusers' step uses."""
        previous = timestep - self.step_ratio
        alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else torch.tensor(1.0)
        return self.alphas_cumprod[timestep], alpha_prev


def linear_alphas_cumprod() -> torch.Tensor:
    """Cumulative product of 1 - beta for betas linear in [0.00085, 0.012] (diffusers "linear")."""
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_schedule(num_inference_steps: int) -> DDIMSchedule:
    """Leading spacing + offset 1: 50 steps give 981, 961, ..., 21, 1."""
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
        raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"num_inference_steps must be in [1, {NUM_TRAIN_TIMESTEPS}], got {num_inference_steps}")
    step_ratio = NUM_TRAIN_TIMESTEPS // num_inference_steps
    timesteps = tuple(int(n * step_ratio + STEPS_OFFSET) for n in reversed(range(num_inference_steps)))
    return DDIMSchedule(timesteps, linear_alphas_cumprod(), step_ratio)


def ddim_step(schedule: DDIMSchedule, eps: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
    """One eta = 0 DDIM update z_t -> z_{t - step_ratio} from the predicted noise ``eps``."""
    alpha_t, alpha_prev = schedule.alphas(timestep)
    beta_t = 1 - alpha_t
    pred_original = (sample - beta_t ** 0.5 * eps) / alpha_t ** 0.5
    return alpha_prev ** 0.5 * pred_original + (1 - alpha_prev) ** 0.5 * eps
