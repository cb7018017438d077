"""CS, the CLIP score (CoCoCo, AAAI 2025, Table 1: "CLIP score (CS) to evaluate text alignment", 24.9 for
CoCoCo), in the common x100 form. Where the clamp at 0 applies is the ``cs_clamp`` convention
(:mod:`.conventions`; the two differ only when some cosine is negative):

    frame (default):  CS = mean over frames f of  max(100 * cos(E_I(O_f), E_T(p)), 0)
                      (each image-text pair clamped, as Hessel et al. 2021 define CLIP-S, with 100 for 2.5)
    mean:             CS = max(mean over frames f of 100 * cos(E_I(O_f), E_T(p)), 0)
                      (torchmetrics ``CLIPScore.compute``: ``max(score / n_samples, 0)``)

with E_I / E_T the projected CLIP image / text embeddings, O_f the whole output frame (as the paper) or,
with ``crop="mask"``, the bounding box of the frame's mask (the inpainted region only), and p the prompt.
CLIP ViT-L/14 (the text encoder of SD-1.5) is the default model of the ``evaluate`` command.
"""
from __future__ import annotations

import math

import torch

from .frames import as_frames, as_mask


def mask_box_crops(frames: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each frame cropped to the bounding box of its mask (> 0.5); the whole frame where the mask is empty."""
    crops = []
    for frame, region in zip(frames, mask):
        rows, cols = torch.nonzero(region > 0.5, as_tuple=True)
        if rows.numel() == 0:
            crops.append(frame)
        else:
            crops.append(frame[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
    return crops


def clip_score(frames, prompt: str, clip, *, mask=None, crop: str = "frame", image_embeddings=None,
               clamp: str = "frame") -> float:
    """CS of ``frames`` for ``prompt`` (module docstring); ``crop`` = "frame" (default) or "mask"; ``clamp`` =
    "frame" (default) or "mean". ``image_embeddings``: the frames' ``clip.image_embeddings`` when already
    computed (whole frames only)."""
    if clamp not in ("frame", "mean"):
        raise ValueError(f"clamp must be 'frame' or 'mean', not {clamp!r}")
    frames = as_frames(frames).round().to(torch.uint8)  # [0, 255] as uint8, so crops keep their scale
    text = torch.nn.functional.normalize(clip.text_embeddings([prompt]), dim=-1)
    if crop == "frame":
        images = clip.image_embeddings(frames) if image_embeddings is None else image_embeddings
    elif crop == "mask":
        if mask is None:
            raise ValueError("crop='mask' needs the mask")
        crops = mask_box_crops(frames, as_mask(mask, *frames.shape[:3]))
        images = torch.cat([clip.image_embeddings(c[None]) for c in crops])
    else:
        raise ValueError(f"crop must be 'frame' or 'mask', not {crop!r}")
    cosine = torch.nn.functional.normalize(images, dim=-1) @ text[0]
    scores = 100 * cosine.double()
    value = float(scores.clamp(min=0).mean() if clamp == "frame" else scores.mean().clamp(min=0))
    return value if math.isfinite(value) else math.nan
