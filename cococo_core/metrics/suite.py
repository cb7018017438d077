"""Every available metric of one (original, result) video pair, for the ``evaluate`` command and the node.

Which metrics a :class:`MetricSuite` computes depends on what it was given: BP needs a mask; PSNR/SSIM
compare the result with the reference (the ground truth when there is one, else the original); CS needs a
CLIP model with a text tower and a prompt; TC any CLIP image tower; E_warp a flow estimator; VFID the I3D
model (per video only its features; the distance is over a dataset). Missing ones are left out of the row.
The metrics follow the suite's :class:`~.conventions.Conventions` (default: the ``pack`` preset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .background import background_preservation
from .conventions import Conventions
from .frames import as_frames
from .peak_snr import psnr
from .structural import WINDOW, ssim

# key -> (label, better, definition)
METRICS = {
    "cs": ("CS", "higher", "CLIP text-image similarity x100 (CoCoCo)"),
    "bp": ("BP", "lower", "mean |original - result| on [0, 255] outside the mask (CoCoCo)"),
    "tc": ("TC", "higher", "cosine of consecutive CLIP image embeddings x100 (CoCoCo)"),
    "psnr": ("PSNR", "higher", "dB vs the reference, per frame, capped at 100 (LGVI)"),
    "ssim": ("SSIM", "higher", "scikit-image SSIM, 65 px uniform window (LGVI)"),
    "ewarp": ("E*_warp", "lower", "flow warping error x100 (Lai et al. 2018, LGVI)"),
    "vfid": ("VFID", "lower", "Frechet distance of I3D features over a dataset (LGVI)"),
}


@dataclass
class PairResult:
    values: dict[str, float]
    flow_backend: str | None = None
    features: tuple[np.ndarray, np.ndarray] | None = None  # I3D (reference, result)


@dataclass
class MetricSuite:
    """The models the metrics need; any of them may be None (that metric is then skipped)."""

    clip: object | None = None
    i3d: object | None = None
    flow: object | None = None
    clip_crop: str = "frame"
    ssim_window: int = WINDOW
    warp_flow_from: str = "result"  # or "reference": the video the flow is estimated on
    conventions: Conventions = Conventions()

    def evaluate(self, original, result, *, mask=None, prompt: str | None = None, reference=None) -> PairResult:
        from .text_alignment import clip_score  # noqa: PLC0415
        from .temporal import temporal_consistency  # noqa: PLC0415
        from .video_fid import i3d_features  # noqa: PLC0415
        from .warping import warp_error  # noqa: PLC0415

        original, result = as_frames(original, name="original"), as_frames(result, name="result")
        reference = original if reference is None else as_frames(reference, name="reference")
        values: dict[str, float] = {}
        embeddings = None if self.clip is None else self.clip.image_embeddings(result / 255)  # shared by CS and TC
        if self.clip is not None and prompt and self.clip.has_text:
            values["cs"] = clip_score(result / 255, prompt, self.clip, mask=mask, crop=self.clip_crop,
                                      image_embeddings=embeddings if self.clip_crop == "frame" else None,
                                      clamp=self.conventions.cs_clamp)
        if mask is not None:
            values["bp"] = background_preservation(original / 255, result / 255, mask)
        if self.clip is not None:
            values["tc"] = temporal_consistency(result / 255, self.clip, image_embeddings=embeddings)
        values["psnr"] = psnr(reference / 255, result / 255)
        values["ssim"] = ssim(reference / 255, result / 255, window=self.ssim_window)
        backend = None
        if self.flow is not None:
            source = reference if self.warp_flow_from == "reference" else result
            values["ewarp"] = 100 * warp_error(result / 255, flow=self.flow, flow_frames=source / 255,
                                               occluded=self.conventions.warp_occluded)
            backend = self.flow.name
        features = None
        if self.i3d is not None:
            norm = self.conventions.i3d_norm
            features = (i3d_features(reference / 255, self.i3d, norm=norm), i3d_features(result / 255, self.i3d, norm=norm))
        return PairResult(values, backend, features)


def format_table(values: dict[str, float], flow_backend: str | None = None, notes: list[str] | None = None) -> str:
    """A plain-text table of metric values (label, value, better, definition)."""
    lines = [f"{'metric':<8} {'value':>10}  better  definition"]
    for key, (label, better, definition) in METRICS.items():
        if key in values:
            value = values[key]
            shown = "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
            extra = f" [flow: {flow_backend}]" if key == "ewarp" and flow_backend else ""
            lines.append(f"{label:<8} {shown:>10}  {better:<6}  {definition}{extra}")
    lines.extend(notes or [])
    return "\n".join(lines)
