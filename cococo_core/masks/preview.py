"""Preview of text masks: the mask tinted over each frame, boxes outlined and labelled with score."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

MASK_COLOR = (1.0, 0.2, 0.2)
BOX_COLOR = (40, 255, 80)


def draw_preview(frames: torch.Tensor, result, *, alpha: float = 0.5, line: int = 2) -> torch.Tensor:
    """(F, H, W, 3) float image: ``frames`` with ``result.masks`` blended in red and the boxes drawn in green.

    ``result`` is a :class:`~.text_masks.TextMaskResult` for these frames; boxes carried over from an earlier
    frame (``detect_every > 1``) are drawn thinner than detected ones.
    """
    from .text_masks import as_float, as_frames

    frames = as_float(as_frames(frames))
    if frames.shape[:3] != result.masks.shape:
        raise ValueError(f"preview: frames {tuple(frames.shape[:3])} and masks {tuple(result.masks.shape)} differ")
    color = torch.tensor(MASK_COLOR).view(1, 1, 1, 3)
    weight = (alpha * result.masks.float().clamp(0, 1))[..., None]
    tinted = frames * (1 - weight) + color * weight
    out = []
    for index, image in enumerate(tinted):
        picture = Image.fromarray((image.numpy() * 255).round().astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        boxes = result.boxes[index] if index < len(result.boxes) else torch.zeros(0, 4)
        width = line if (index >= len(result.detected) or result.detected[index]) else max(1, line // 2)
        for number, box in enumerate(boxes.tolist()):
            draw.rectangle(box, outline=BOX_COLOR, width=width)
            label = result.labels[index][number] if index < len(result.labels) else ""
            score = float(result.scores[index][number]) if index < len(result.scores) else float("nan")
            draw.text((box[0] + 3, box[1] + 2), f"{label} {score:.2f}".strip(), fill=BOX_COLOR)
        out.append(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0))
    return torch.stack(out) if out else tinted
