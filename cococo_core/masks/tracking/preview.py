"""Preview of tracked masks: each object tinted in its own colour, its id written at the mask's centre."""
from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

from .base import TrackResult


def object_color(object_id: int) -> tuple[float, float, float]:
    """A colour per id (golden-ratio hue steps, so neighbouring ids differ clearly)."""
    return colorsys.hsv_to_rgb((object_id * 0.618034) % 1.0, 0.85, 1.0)


def draw_track_preview(frames, result: TrackResult, *, alpha: float = 0.5) -> torch.Tensor:
    """(F, H, W, 3) float image: ``frames`` (uint8 or float) with every object of ``result`` blended in."""
    from .api import as_uint8_frames

    pictures = as_uint8_frames(frames).float() / 255
    if pictures.shape[:3] != result.masks.shape:
        raise ValueError(f"preview: frames {tuple(pictures.shape[:3])} and masks {tuple(result.masks.shape)} differ")
    masks = result.object_masks
    for row, object_id in enumerate(result.object_ids):
        weight = alpha * masks[row].float()[..., None]
        pictures = pictures * (1 - weight) + torch.tensor(object_color(object_id)) * weight
    out = []
    for index, image in enumerate(pictures):
        picture = Image.fromarray((image.numpy() * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for row, object_id in enumerate(result.object_ids):
            ys, xs = torch.nonzero(masks[row, index], as_tuple=True)
            if ys.numel():
                centre = (float(xs.float().mean()), float(ys.float().mean()))
                draw.text(centre, str(object_id), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0),
                          anchor="mm")
        out.append(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0))
    return torch.stack(out)
