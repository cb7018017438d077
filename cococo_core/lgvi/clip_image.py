"""The image LGVI-I shows the chat model (official ``_clip_transform``, spec §2.4), without torchvision.

Only the first frame: ``Resize(S, BICUBIC)`` on the short side (long side ``int(S * long / short)``,
torchvision's rule) -> ``CenterCrop(S)`` (offsets ``round((size - S) / 2)``) -> [0, 1] -> CLIP
normalisation. S is the vision tower's image size (336 for CLIP ViT-L/14-336). This is not LLaVA-1.5's
default pad-to-square: wide frames lose their left and right margins, as upstream.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_pil(image) -> Image.Image:
    """A PIL RGB image from PIL, or an (H, W, 3) array/tensor (float in [0, 1] or uint8)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an (height, width, 3) image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def clip_image_tensor(image, size: int = 336) -> torch.Tensor:
    """(1, 3, size, size) normalised pixel values for the vision tower."""
    pil = to_pil(image)
    width, height = pil.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    pil = pil.resize((new_width, new_height), resample=Image.BICUBIC)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)
