"""Three-way classifier-free guidance of LGVI (InstructPix2Pix form; official ``pipeline_rovi.py:555-561``).

    eps = eps_U + g_t (eps_T - eps_I) + g_i (eps_I - eps_U)

eps_T = eps(z, c_video, c_text), eps_I = eps(z, c_video, empty text), eps_U = eps(z, 0, empty text);
"empty text" is CLIP("") for LGVI and a zero context for LGVI-I. Guidance runs only when
g_t > 1 and g_i >= 1 (official ``:476``); otherwise the text-conditioned prediction is used alone.
"""
from __future__ import annotations

import torch

DEFAULT_TEXT_GUIDANCE = 3.0
DEFAULT_IMAGE_GUIDANCE = 1.5


def guidance_enabled(text_scale: float, image_scale: float) -> bool:
    return text_scale > 1.0 and image_scale >= 1.0


def combine_guidance(
    eps_text: torch.Tensor, eps_image: torch.Tensor, eps_uncond: torch.Tensor, text_scale: float, image_scale: float
) -> torch.Tensor:
    return eps_uncond + text_scale * (eps_text - eps_image) + image_scale * (eps_image - eps_uncond)
