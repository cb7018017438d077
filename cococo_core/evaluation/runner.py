"""The per-video loop of ``evaluate``: read a sample with the protocol, make the result (CoCoCo inpainting,
LGVI removal, or an existing result video), compute the metrics, store the row. One process or one shard
of an ``accelerate launch`` run (videos ``rank, rank + N, ...`` of those not finished yet)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..metrics.suite import MetricSuite
from ..video_io import read_frames, read_mask
from .dataset import Sample, _media
from .protocol import PROMPTS, Protocol, random_mask, random_prompt
from .results import ResultStore

logger = logging.getLogger(__name__)


@dataclass
class Inputs:
    frames: np.ndarray  # (F, H, W, 3) uint8
    mask: np.ndarray | None  # (F, H, W) float32
    prompt: str | None
    target: np.ndarray | None


def _resize_frames(frames: np.ndarray, size, resample: str = "bicubic") -> np.ndarray:
    if size is None or (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames
    from PIL import Image  # noqa: PLC0415

    method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample]
    return np.stack([np.asarray(Image.fromarray(f).resize(tuple(size), method)) for f in frames])


def _resize_mask(mask: np.ndarray, size) -> np.ndarray:
    if size is None or (mask.shape[2], mask.shape[1]) == tuple(size):
        return mask
    from PIL import Image  # noqa: PLC0415

    return np.stack([np.asarray(Image.fromarray(m).resize(tuple(size), Image.NEAREST)) for m in mask.astype(np.float32)])


def _fit_frames(frames: np.ndarray, count: int, what: str, sample_id: str) -> np.ndarray:
    if frames.shape[0] == count:
        return frames
    if frames.shape[0] == 1:
        return np.repeat(frames, count, axis=0)
    raise ValueError(f"{sample_id}: the {what} has {frames.shape[0]} frames, the video {count}")


def load_inputs(sample: Sample, protocol: Protocol, prompts=PROMPTS) -> Inputs:
    """The sample's frames, mask, prompt and ground truth as the protocol selects them."""
    selection = dict(start=protocol.start, stride=protocol.stride, max_frames=protocol.max_frames)
    frames = _resize_frames(read_frames(sample.video, **selection).frames, protocol.size, protocol.resample)
    count, height, width = frames.shape[:3]
    mask = None
    if sample.mask is not None and not protocol.random_masks:
        mask = _fit_frames(_resize_mask(read_mask(sample.mask, **selection), protocol.size), count, "mask", sample.id)
        if mask.shape[1:] != (height, width):
            raise ValueError(f"{sample.id}: the mask is {mask.shape[2]}x{mask.shape[1]}, the video {width}x{height}")
    elif protocol.random_masks:
        mask = random_mask(sample.id, count, height, width, protocol.seed)
    prompt = random_prompt(sample.id, protocol.seed, prompts) if protocol.random_prompts else sample.prompt
    target = None
    if sample.target is not None:
        target = _fit_frames(_resize_frames(read_frames(sample.target, **selection).frames, (width, height),
                                            protocol.resample), count, "target", sample.id)
    return Inputs(frames, mask, prompt, target)


def _check_frame_count(found: int, wanted: int, what: str, protocol: Protocol) -> None:
    """A result must have one frame per evaluated input frame: keeping its first frames would pair frame i
    of the result with input frame ``start + i * stride``, misaligned as soon as a stride or start is set."""
    if found != wanted:
        selection = f"start {protocol.start}, stride {protocol.stride}, max frames {protocol.max_frames or 'all'}"
        raise ValueError(f"{what} has {found} frames, the input {wanted} ({selection}); give one result frame per "
                         "evaluated input frame (results made from the same --start/--stride/--max-frames)")


@dataclass
class Evaluator:
    """``make_result(inputs) -> (frames uint8 (F, H, W, 3), predicted mask or None)``; ``None`` evaluates
    the results found in ``results_dir`` (``<id>.*`` or ``<id>/``)."""

    store: ResultStore
    protocol: Protocol
    suite: MetricSuite
    make_result: Callable[[Inputs], tuple[np.ndarray, np.ndarray | None]] | None = None
    results_dir: Path | None = None
    save_results: Path | None = None
    prompts: tuple = PROMPTS
    score_prompt: bool = True  # CS of the prompt; off for removal, whose prompt names what should be gone

    def _result(self, sample: Sample, inputs: Inputs):
        if self.make_result is not None:
            return self.make_result(inputs)
        path = _media(self.results_dir, sample.id) if self.results_dir else None
        if path is None:
            raise FileNotFoundError(f"no result for {sample.id} in {self.results_dir} (<id>.mp4 or <id>/)")
        frames = read_frames(path).frames
        _check_frame_count(frames.shape[0], inputs.frames.shape[0], f"the result {path}", self.protocol)
        return _resize_frames(frames, (inputs.frames.shape[2], inputs.frames.shape[1]), self.protocol.resample), None

    def run_one(self, sample: Sample) -> dict:
        started = time.perf_counter()
        row = {"id": sample.id, "video": str(sample.video)}
        try:
            inputs = load_inputs(sample, self.protocol, self.prompts)
            result, predicted = self._result(sample, inputs)
            _check_frame_count(result.shape[0], inputs.frames.shape[0], "the result", self.protocol)
            mask = inputs.mask if inputs.mask is not None else predicted
            if self.save_results is not None:
                from ..video_io import write_video  # noqa: PLC0415
                from .results import file_id  # noqa: PLC0415

                write_video(self.save_results / f"{file_id(sample.id)}.mp4", result, 8.0)
            measured = self.suite.evaluate(inputs.frames, result, mask=mask,
                                           prompt=inputs.prompt if self.score_prompt else None, reference=inputs.target)
            if measured.features is not None:
                self.store.save_features(sample.id, *measured.features)
            row.update(prompt=inputs.prompt, frames=int(result.shape[0]), width=int(result.shape[2]),
                       height=int(result.shape[1]), flow=measured.flow_backend, **measured.values)
        except Exception as error:  # noqa: BLE001 - one bad video must not stop a long run; its row records why
            logger.error("%s: %s", sample.id, error, exc_info=logger.isEnabledFor(logging.DEBUG))
            row["error"] = str(error)
        row["seconds"] = round(time.perf_counter() - started, 3)
        return row


def cococo_result(pipe, steps: int, guidance: float, seed: int, **options):
    """``make_result`` for CoCoCo inpainting (the prompt fills the mask)."""
    def make(inputs: Inputs):
        if inputs.mask is None or not inputs.prompt:
            raise ValueError("inpainting needs a mask and a prompt (give them in the dataset or use random ones)")
        frames = pipe(inputs.frames, inputs.mask, inputs.prompt, "", steps, guidance, seed, output="uint8", **options)
        return frames.numpy() if isinstance(frames, torch.Tensor) else frames, None
    return make


def lgvi_result(pipe, steps: int, guidance: float, image_guidance: float, seed: int, **options):
    """``make_result`` for LGVI removal (the prompt is the referring expression); returns the predicted mask,
    used for BP when the dataset has none."""
    def make(inputs: Inputs):
        if not inputs.prompt:
            raise ValueError("LGVI removal needs a referring expression as the prompt")
        result = pipe(torch.from_numpy(inputs.frames).float() / 255, inputs.prompt, num_inference_steps=steps,
                      guidance_scale=guidance, image_guidance_scale=image_guidance, seed=seed, **options)
        frames = (result.frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        mask = None if result.mask is None else (result.mask.numpy() > 0.5).astype(np.float32)
        return frames, mask
    return make
