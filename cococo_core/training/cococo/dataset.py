"""CoCoCo training clips from prepared shards: 16 frames (stride 4 is applied at preparation) at 256x384.

Sample ``i`` of epoch ``e`` is fully determined by ``sample_seed(seed, e, i)``: the window start, the crop and
the mask / prompt (:func:`.masks.training_mask`). A clip is resized so that it covers the training size (aspect
kept) and cropped at a random offset; the boxes go through the same transform. No horizontal flip: captions say
"left" and "right".
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..sampling import sample_seed
from ..shards import ShardReader
from .masks import MaskMix, training_mask
from .prepare import decode_clip


def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The smallest (h, w) with the aspect of (height, width) that covers (target_h, target_w)."""
    scale = max(target_h / height, target_w / width)
    return max(target_h, int(round(height * scale))), max(target_w, int(round(width * scale)))


def transform_boxes(boxes: list[list[float]], size: tuple[int, int], offset: tuple[int, int],
                    crop: tuple[int, int]) -> np.ndarray:
    """[0, 1] boxes ``[x0, y0, x1, y1, phrase, (score)]`` -> (n, 5) pixels of the crop; boxes outside dropped."""
    if not boxes:
        return np.zeros((0, 5))
    array = np.asarray([b[:5] for b in boxes], dtype=np.float64)
    h, w = size
    top, left = offset
    ch, cw = crop
    array[:, [0, 2]] = np.clip(array[:, [0, 2]] * w - left, 0, cw)
    array[:, [1, 3]] = np.clip(array[:, [1, 3]] * h - top, 0, ch)
    keep = (array[:, 2] - array[:, 0] >= 1) & (array[:, 3] - array[:, 1] >= 1)
    return array[keep]


class CoCoCoClipDataset(torch.utils.data.Dataset):
    """Map-style clips ``{"pixels": (F, 3, H, W) float in [0, 1], "mask": (F, 1, H, W), "prompt", "kind"}``."""

    def __init__(self, shards: str | Path, *, frames: int = 16, height: int = 256, width: int = 384,
                 mix: MaskMix | None = None, seed: int = 0):
        if height % 8 or width % 8:
            raise ValueError(f"the training size must be a multiple of 8 (latents), got {height}x{width}")
        self.reader = ShardReader(shards)
        self.frames, self.height, self.width = frames, height, width
        self.mix, self.seed, self.epoch = mix or MaskMix(), seed, 0
        short = [i for i in range(len(self.reader)) if self.reader.meta(i).get("frames", frames) < frames]
        if short:
            raise ValueError(f"{len(short)} prepared videos have fewer than {frames} frames; prepare with "
                             f"--min-frames {frames} or train with fewer frames")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def record(self, index: int) -> dict:
        return json.loads(self.reader.read(index, ("json",))["json"])

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index))
        data = self.reader.read(index)
        record = json.loads(data["json"])
        start = int(rng.integers(0, record["frames"] - self.frames + 1))
        clip = decode_clip(data["mp4"], start=start, max_frames=self.frames)
        if len(clip) < self.frames:
            raise ValueError(f"sample {record['key']}: {len(clip)} frames decoded, {self.frames} expected")
        size = cover_size(clip.shape[1], clip.shape[2], self.height, self.width)
        top = int(rng.integers(0, size[0] - self.height + 1))
        left = int(rng.integers(0, size[1] - self.width + 1))
        pixels = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255.0)
        if tuple(pixels.shape[-2:]) != size:
            pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False,
                                                     antialias=True).clamp(0, 1)
        pixels = pixels[:, :, top:top + self.height, left:left + self.width].contiguous()
        boxes = [transform_boxes(record["boxes"][start + f], size, (top, left), (self.height, self.width))
                 for f in range(self.frames)]
        sample = training_mask(boxes, record["phrases"], record["caption"], self.height, self.width, rng, self.mix)
        return {"pixels": pixels, "mask": torch.from_numpy(sample.masks)[:, None], "prompt": sample.prompt,
                "kind": sample.kind, "key": record["key"]}


def collate_clips(samples: list[dict]) -> dict:
    return {"pixels": torch.stack([s["pixels"] for s in samples]), "mask": torch.stack([s["mask"] for s in samples]),
            "prompt": [s["prompt"] for s in samples], "kind": [s["kind"] for s in samples],
            "key": [s["key"] for s in samples]}
