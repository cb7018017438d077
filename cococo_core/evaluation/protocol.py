"""The evaluation protocol of CoCoCo (AAAI 2025, "Experimental Results"): "we random select 1000 videos from
the validation set of the WebVid-10M, and extract the first 16 frames in each video with the sample rate
of 4. We randomly generate the mask and prompt".

The paper gives no mask shape or prompt list; here, reproducibly from one seed:

* videos: ``sample_videos`` draws ``count`` of them (without replacement) from ``Random(f"{seed}/videos")``;
* frames: the first 16 at stride 4, resized to 384 x 256 (the training resolution, 256 x 384 in H x W);
* mask: one rectangle, the same in every frame, with width and height uniform in [1/4, 1/2] of the frame
  and a uniform position, from ``Random(f"{seed}/mask/{id}")``;
* prompt: one of :data:`PROMPTS` (or a user list) from ``Random(f"{seed}/prompt/{id}")``.

Every draw depends only on the seed and the video's id, so results do not depend on the order of the
dataset, on sharding or on resuming.

:data:`LGVI` is the removal protocol of LGVI (CVPR 2024, Tables 2-3, the ROVI test set): the dataset's
videos, ground truths (the videos without the object) and referring expressions, the first 24 frames
resized bilinearly to 512 x 320, as the official ``inference_referring.py`` ``load_video`` reads a clip
(``sorted(os.listdir(...))[:24]``, ``Image.BILINEAR``); the paper reports PSNR, SSIM, VFID and E*_warp.

Both presets come with the ``paper`` metric conventions (:data:`PROTOCOL_CONVENTIONS`,
:mod:`cococo_core.metrics.conventions`): the arithmetic of the evaluation code the papers follow.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

PROMPTS = (
    "a cat", "a dog", "a red car", "a white horse", "a teddy bear", "a bunch of flowers", "a wooden chair",
    "a man in a black suit", "a woman with a red umbrella", "a yellow taxi", "a bird", "a blue balloon",
    "a fire hydrant", "a potted plant", "a brown cow", "a motorcycle",
)


@dataclass(frozen=True)
class Protocol:
    """Frame selection, working size and the random draws (module docstring)."""

    start: int = 0
    stride: int = 1
    max_frames: int | None = None
    size: tuple[int, int] | None = None  # (width, height) the frames are resized to
    random_masks: bool = False
    random_prompts: bool = False
    seed: int = 0
    sample: int | None = None
    resample: str = "bicubic"  # the filter of the resize to ``size``: "bicubic" or "bilinear"

    def __post_init__(self):
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, not {self.resample!r}")


RESAMPLE = ("bicubic", "bilinear")
PAPER = Protocol(start=0, stride=4, max_frames=16, size=(384, 256), random_masks=True, random_prompts=True, seed=0,
                 sample=1000)
LGVI = Protocol(start=0, stride=1, max_frames=24, size=(512, 320), resample="bilinear")
PROTOCOLS = {"none": Protocol(), "paper": PAPER, "lgvi": LGVI}
PROTOCOL_CONVENTIONS = {"none": "pack", "paper": "paper", "lgvi": "paper"}  # the metric conventions of each preset


def sample_videos(samples: list, count: int | None, seed: int) -> list:
    """``count`` samples drawn without replacement (all, in order, when ``count`` is None or too large),
    kept in dataset order."""
    if count is None or count >= len(samples):
        return list(samples)
    chosen = set(random.Random(f"{seed}/videos").sample(range(len(samples)), count))
    return [s for i, s in enumerate(samples) if i in chosen]


def random_mask(sample_id: str, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(F, H, W) float32 mask: one rectangle of 1/4-1/2 of each side, at a random place (module docstring)."""
    rng = random.Random(f"{seed}/mask/{sample_id}")
    box_h = max(1, round(height * rng.uniform(0.25, 0.5)))
    box_w = max(1, round(width * rng.uniform(0.25, 0.5)))
    top, left = rng.randint(0, height - box_h), rng.randint(0, width - box_w)
    mask = np.zeros((frames, height, width), np.float32)
    mask[:, top:top + box_h, left:left + box_w] = 1
    return mask


def random_prompt(sample_id: str, seed: int, prompts=PROMPTS) -> str:
    return random.Random(f"{seed}/prompt/{sample_id}").choice(list(prompts))
