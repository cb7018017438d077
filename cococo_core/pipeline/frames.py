"""Checking user videos and masks, and the geometry between the user's frame size and the model's.

Videos are (F, H, W, 3) RGB, uint8 or float in [0, 1]; masks are (F, H, W) (or (F, H, W, 1)), 1 = region
to fill, bool / uint8 (0..255) / float in [0, 1]. Both may be numpy arrays or torch tensors.

Geometry: frames are optionally resized to a working size (``width`` / ``height``), then padded by
reflection on the bottom and right up to a multiple of ``size_multiple`` pixels (64 by default, so
the latent is a multiple of 8 and every U-Net level halves exactly). Reflection keeps pixels 1:1,
so no resampling happens unless a working size is asked for; the padding is cropped off after
decoding and the frames are resized back to the input size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import validation

LATENT_FACTOR = 8  # VAE downsampling


def as_video(video) -> torch.Tensor:
    """The video as given (uint8 or float), on the CPU, checked by :func:`cococo_core.validation.frames`."""
    return validation.frames(video, "video", min_side=LATENT_FACTOR)


video_to_float = validation.to_float


def as_mask(mask, num_frames: int, height: int, width: int) -> torch.Tensor:
    """float32 (F, H, W) in [0, 1]; a single mask is used for every frame."""
    values = validation.mask(mask, "mask")
    if tuple(values.shape[1:]) != (height, width):
        raise ValueError(f"mask size {values.shape[2]}x{values.shape[1]} does not match the video frame size {width}x{height}")
    if values.shape[0] not in (1, num_frames):
        raise ValueError(f"mask has {values.shape[0]} frames but the video has {num_frames}; give one mask per frame (or a single mask for all)")
    return values.expand(num_frames, height, width).contiguous()


def resize_mask(mask, height: int, width: int) -> torch.Tensor:
    """A checked mask (see :func:`cococo_core.validation.mask`) stretched to ``height`` x ``width`` by bilinear
    interpolation with antialiasing (edges stay soft, values stay in [0, 1]); unchanged when the size already
    matches. For a mask painted on a frame of another resolution of the same video."""
    values = validation.mask(mask, "mask")
    if tuple(values.shape[1:]) == (height, width):
        return values
    resized = F.interpolate(values[:, None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized[:, 0].clamp(0, 1)


@dataclass(frozen=True)
class Geometry:
    """User frame size -> working size (resize) -> padded size (multiple of ``size_multiple``)."""

    input_hw: tuple[int, int]
    work_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.padded_hw[0] // LATENT_FACTOR, self.padded_hw[1] // LATENT_FACTOR


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_geometry(height: int, width: int, *, work_width: int | None = None, work_height: int | None = None,
                  size_multiple: int = 64) -> Geometry:
    """Working size: both given -> exactly that; one given -> the other keeps the aspect (multiple of 8)."""
    if size_multiple < LATENT_FACTOR or size_multiple % LATENT_FACTOR:
        raise ValueError(f"size_multiple must be a positive multiple of {LATENT_FACTOR}, got {size_multiple}")
    for name, value in (("width", work_width), ("height", work_height)):
        if value is not None and (not isinstance(value, int) or value < LATENT_FACTOR):
            raise ValueError(f"working {name} must be an integer >= {LATENT_FACTOR}, got {value!r}")
    if work_width is None and work_height is None:
        work = (height, width)
    elif work_width is None:
        work = (work_height, _round_to(width * work_height / height, LATENT_FACTOR))
    elif work_height is None:
        work = (_round_to(height * work_width / width, LATENT_FACTOR), work_width)
    else:
        work = (work_height, work_width)
    padded = tuple(-(-side // size_multiple) * size_multiple for side in work)
    return Geometry((height, width), work, padded)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _pad_bottom_right(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    pad_h, pad_w = size[0] - images.shape[-2], size[1] - images.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return images
    # reflection needs the pad to be smaller than the side; wider pads repeat the reflection
    while pad_h > 0 or pad_w > 0:
        step_h = min(pad_h, images.shape[-2] - 1)
        step_w = min(pad_w, images.shape[-1] - 1)
        images = F.pad(images, (0, step_w, 0, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return images


def to_working(images: torch.Tensor, geometry: Geometry, *, binary: bool = False) -> torch.Tensor:
    """(N, C, H, W) at the input size -> (N, C, padded H, padded W). ``binary`` keeps a 0/1 mask 0/1
    (any pixel the resized hole touches is filled)."""
    resized = _resize(images, geometry.work_hw)
    if binary and resized is not images:
        resized = (resized > 1e-6).to(images.dtype)
    return _pad_bottom_right(resized.clamp(0, 1), geometry.padded_hw)


def from_working(images: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(N, C, padded H, padded W) -> (N, C, H, W) at the input size."""
    height, width = geometry.work_hw
    return _resize(images[..., :height, :width], geometry.input_hw)
