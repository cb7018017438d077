"""The original pre-processing of GroundingDINO and Segment Anything: resize the uint8 image with PIL, then convert.

* GroundingDINO (``groundingdino/util/inference.py`` ``load_image``): ``T.RandomResize([800], max_size=1333)``
  -> torchvision ``F.resize`` of the PIL image (bilinear) -> ``ToTensor`` (uint8 / 255) -> ``Normalize``
  (ImageNet mean / std).
* Segment Anything (``SamPredictor.set_image``): ``ResizeLongestSide.apply_image`` = torchvision
  ``resize(to_pil_image(image), size)`` (bilinear, PIL) -> uint8 tensor -> ``(x - pixel_mean) / pixel_std`` on
  the 0..255 scale (``build_sam.py``: 123.675, 116.28, 103.53 / 58.395, 57.12, 57.375) -> zero padding.

torchvision's ``resize`` of a PIL image is ``image.resize((w, h), Image.BILINEAR)``: PIL's filter, antialiased
when shrinking, with the result rounded to uint8. Float frames are first rounded to uint8 (what an image file
holds). Resizing float tensors with torch instead moves pixels by up to one uint8 level, which moves
GroundingDINO's logits by several per cent on the same weights.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..video_io import as_uint8

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def resize_uint8(frames, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, 3) frames (uint8, or float in [0, 1]) -> (B, h, w, 3) uint8 resized by PIL bilinear, ``size`` = (h, w)."""
    array = as_uint8(frames)
    height, width = size
    out = np.empty((array.shape[0], height, width, 3), dtype=np.uint8)
    for index, frame in enumerate(array):
        image = Image.fromarray(frame, "RGB")
        out[index] = np.asarray(image.resize((width, height), Image.BILINEAR))
    return torch.from_numpy(out)
