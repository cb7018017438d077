"""Masks from boxes with Segment Anything (transformers ``SamModel``), following ``SamPredictor``:

* image: longest side resized to ``image_size`` (1024) with PIL bilinear on the uint8 image as the original does
  (or by torch on float frames, on request), ``pixel_mean``/``pixel_std``, zero-padded bottom/right to a square; one image-encoder pass per frame (frames are batched);
* boxes: xyxy pixels scaled by the same resize (``ResizeLongestSide.apply_boxes``), all boxes of a frame decoded in
  one mask-decoder call with ``multimask_output=False``;
* masks: low-res logits upsampled (bilinear) to the padded square, cropped to the resized image, upsampled to the
  frame size and thresholded at 0 (``mask_threshold``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .detect import IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING
from .pil_resize import SAM_PIXEL_MEAN, SAM_PIXEL_STD, resize_uint8


def resized_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: (h, w) with the long side = ``longest``, rounded half up."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(frames: torch.Tensor, image_size: int, method: str = "original") -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, 3) frames (float in [0, 1] or uint8) -> ((B, 3, S, S) normalised and padded pixels, resized (h, w)).

    ``method="original"``: ``ResizeLongestSide.apply_image`` (PIL bilinear on the uint8 image) and ``Sam.preprocess``
    ((x - pixel_mean) / pixel_std on the 0..255 scale; :mod:`.pil_resize`); ``"torch"``: float frames resized by
    torch (bilinear, antialiased) and normalised with the same constants on the 0..1 scale."""
    height, width = frames.shape[1:3]
    size = resized_size(height, width, image_size)
    if method == "original":
        x = resize_uint8(frames, size).to(frames.device).permute(0, 3, 1, 2).float()
        mean = torch.tensor(SAM_PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    elif method == "torch":
        x = frames.permute(0, 3, 1, 2).float()
        if frames.dtype == torch.uint8:
            x = x / 255
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    else:
        raise ValueError(f"pre-processing must be one of {PREPROCESSING}, got {method!r}")
    x = (x - mean) / std
    return F.pad(x, (0, image_size - size[1], 0, image_size - size[0])), size


@torch.no_grad()
def image_embeddings(model, frames: torch.Tensor, *, batch_size: int | None = None, preprocessing: str = "original"):
    """(embeddings (B, C, h', w'), resized size) for (B, H, W, 3) frames; ``batch_size`` frames per encoder pass."""
    image_size = model.config.vision_config.image_size
    parameter = next(model.parameters())
    pixels, size = preprocess(frames.to(parameter.device), image_size, preprocessing)
    pixels = pixels.to(parameter.dtype)
    step = batch_size or pixels.shape[0]
    chunks = [model.get_image_embeddings(pixels[i:i + step]) for i in range(0, pixels.shape[0], step)]
    return torch.cat(chunks), size


@torch.no_grad()
def masks_from_boxes(model, embedding: torch.Tensor, boxes: torch.Tensor, frame_size: tuple[int, int],
                     resized: tuple[int, int]) -> torch.Tensor:
    """(n, H, W) bool masks of one frame for its (n, 4) xyxy pixel boxes; ``embedding`` is (1, C, h', w')."""
    height, width = frame_size
    if boxes.shape[0] == 0:
        return torch.zeros(0, height, width, dtype=torch.bool)
    image_size = model.config.vision_config.image_size
    scale = torch.tensor([resized[1] / width, resized[0] / height] * 2)
    scaled = (boxes.float().cpu() * scale).to(embedding.device, embedding.dtype)
    output = model(image_embeddings=embedding, input_boxes=scaled[None], multimask_output=False)
    logits = output.pred_masks[0, :, 0].float()  # (n, 256, 256)
    logits = F.interpolate(logits[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
    logits = logits[..., : resized[0], : resized[1]]
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return (logits[:, 0] > 0).cpu()
