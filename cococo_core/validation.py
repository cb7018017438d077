"""One validation layer for every frame, mask and number that enters from a node or the command line.

Frames are (F, H, W, 3) RGB (where the caller allows it, one (H, W, 3) image is one frame and RGBA loses its alpha):
uint8 0..255, bool, or float in [0, 1]. Masks are (F, H, W) (or (F, H, W, 1), or one (H, W) mask):
bool, uint8 0..255 or float in [0, 1], 1 = the region to fill.

Float values are checked the same way everywhere:

* NaN or infinity is refused;
* overshoots of at most :data:`OVERSHOOT` past 0 or 1 (rounding left by image operations such as a
  resize or a colour correction) are clamped;
* anything further out is a real range error; values that look like 0..255 say so, with what to do.

Numbers: step counts are integers >= 1, seeds lie in ``[0, SEED_MAX]`` (what ``torch.Generator`` takes),
scales and strengths are finite.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

OVERSHOOT = 1e-3  # tolerated float overshoot past [0, 1], clamped
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed accepts [0, 2**64 - 1]


def as_tensor(value, name: str) -> torch.Tensor:
    """A CPU tensor (not copied when it already is one) from a tensor or numeric array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"{name} must be a numeric array, got an array of Python objects")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")


def unit_range(values: torch.Tensor, name: str) -> torch.Tensor:
    """Float ``values`` checked to lie in [0, 1]: NaN/inf refused, overshoots <= OVERSHOOT clamped."""
    if values.numel() == 0:
        return values
    finite = torch.isfinite(values)
    if not finite.all():
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); fix the node or file that produced "
                         "them (a division by zero or an overflow upstream)")
    low, high = values.min().item(), values.max().item()
    if low >= 0 and high <= 1:
        return values
    tolerance = OVERSHOOT + torch.finfo(values.dtype).eps  # 1 + 1e-3 itself rounds up in float32
    if low >= -tolerance and high <= 1 + tolerance:
        return values.clamp(0, 1)
    if low >= 0 and 2 < high <= 255:
        raise ValueError(f"{name} holds float values up to {high:.4g}: it looks like 0..255 pixel values, but float "
                         "input must lie in [0, 1]; divide by 255 (or pass uint8)")
    raise ValueError(f"{name} values must lie in [0, 1] for float input, found [{low:.4g}, {high:.4g}]; rescale "
                     "them (a float image is 0 = black, 1 = white)")


def frames(value, name: str = "video", *, min_side: int = 1, drop_alpha: bool = False,
           single_image: bool = False) -> torch.Tensor:
    """(F, H, W, 3) frames, checked: uint8 kept as is, float checked by :func:`unit_range`, bool as 0/1.
    ``drop_alpha`` accepts RGBA and keeps RGB (ComfyUI IMAGEs may carry alpha); ``single_image`` accepts
    one (H, W, 3) image as one frame."""
    tensor = as_tensor(value, name)
    channels = (3, 4) if drop_alpha else (3,)
    if single_image and tensor.dim() == 3 and tensor.shape[-1] in channels:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[-1] not in channels:
        raise ValueError(f"{name} must be shaped (frames, height, width, 3) RGB, got {tuple(tensor.shape)}")
    tensor = tensor[..., :3]
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} has zero frames")
    if tensor.shape[1] < min_side or tensor.shape[2] < min_side:
        raise ValueError(f"{name} frames must be at least {min_side}x{min_side} pixels, got "
                         f"{tensor.shape[2]}x{tensor.shape[1]}")
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.dtype == torch.bool:
        return tensor.to(torch.float32)
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float in [0, 1], got dtype {tensor.dtype}")
    return unit_range(tensor, name)


def to_float(values: torch.Tensor) -> torch.Tensor:
    """Checked uint8 or float values -> float32 in [0, 1]."""
    if values.dtype == torch.uint8:
        return values.to(torch.float32) / 255.0
    return values.to(torch.float32)


def mask(value, name: str = "mask") -> torch.Tensor:
    """float32 (F, H, W) mask in [0, 1] from bool / uint8 (0..255) / float input (see :func:`unit_range`)."""
    values = as_tensor(value, name)
    if values.dim() == 4 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.dim() == 2:
        values = values[None]
    if values.dim() != 3:
        raise ValueError(f"{name} must have shape (frames, height, width), got {tuple(values.shape)}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} has zero frames")
    if values.dtype == torch.bool:
        return values.to(torch.float32)
    if values.dtype == torch.uint8:
        return values.to(torch.float32) / 255.0
    if not values.is_floating_point():
        raise ValueError(f"{name} must be bool, uint8 (0..255) or float in [0, 1], got dtype {values.dtype}")
    return unit_range(values.to(torch.float32), name)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole(value, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum]."""
    if not _is_integer(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return int(value)


def steps(value, name: str = "steps", maximum: int = 1000) -> int:
    """A denoising step count: an integer in [1, maximum]."""
    return whole(value, name, 1, maximum)


def seed(value, name: str = "seed") -> int | None:
    """A seed in [0, SEED_MAX] (None: random)."""
    if value is None:
        return None
    return whole(value, name, 0, SEED_MAX)


def finite(value, name: str) -> float:
    """A finite real number (a guidance scale, a strength, a weight)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def unit_interval(value, name: str) -> float:
    """A finite number in [0, 1] (a threshold)."""
    number = finite(value, name)
    if not 0 <= number <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {number}")
    return number
