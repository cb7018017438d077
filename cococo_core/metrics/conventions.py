"""Named conventions of the metrics: the choices on which two correct implementations of the same metric give
different numbers. Each has a name, and a preset picks one value per metric:

* ``pack``: the pack's own choices (the numbers it reported before the presets existed);
* ``paper``: the arithmetic of the evaluation code the papers' peers publish, which the video inpainting
  tables (LGVI, CVPR 2024, Tables 2-3) follow: E2FGVI / ProPainter ``core/metrics.py`` + ``evaluate.py``
  and Lai et al.'s ``evaluate_WarpError.py``.

=================  ==============================================  ==============================================
name               values                                          published code
=================  ==============================================  ==============================================
``i3d_norm``       ``running``: I3D in eval mode (BatchNorm with   E2FGVI ``core/metrics.py`` ``init_i3d_model``
                   its running statistics); ``per-video``: every   never calls ``.eval()``: each clip (fed alone,
                   BatchNorm normalises with the statistics of     batch 1) is normalised with its own statistics
                   the one video it is given (train mode)          -> ``per-video``
``warp_occluded``  E_warp of a frame pair whose pixels are all     ``evaluate_WarpError.py``: ``N = 0`` is
                   occluded: ``all-pixels`` (the error averaged    replaced by H*W*C while the masked difference
                   over every pixel) or ``zero`` (the pair adds 0, is 0 -> ``zero``
                   but still counts in the 1/(T-1) mean)
``average``        PSNR / SSIM over a dataset: ``video`` (mean of  E2FGVI / ProPainter ``evaluate.py``:
                   the per-video means) or ``frame`` (mean over    ``total_frame_psnr`` over all frames ->
                   every frame of every video)                     ``frame``
``cs_clamp``       CS: ``frame`` (each frame's score clamped at 0, no code published for CoCoCo; ``frame``
                   Hessel et al. 2021's CLIP-S) or ``mean`` (the   in both presets; ``mean`` is torchmetrics'
                   mean clamped once, torchmetrics ``CLIPScore``)  ``CLIPScore.compute``
=================  ==============================================  ==============================================

BP, TC and E_warp are averaged per video in both presets (E_warp: ``err_all.mean()`` in Lai et al.'s script).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

CHOICES = {
    "i3d_norm": ("running", "per-video"),
    "warp_occluded": ("all-pixels", "zero"),
    "average": ("video", "frame"),
    "cs_clamp": ("frame", "mean"),
}
# which metric each convention changes
AFFECTS = {"i3d_norm": ("vfid",), "warp_occluded": ("ewarp",), "average": ("psnr", "ssim"), "cs_clamp": ("cs",)}
FRAME_AVERAGED = AFFECTS["average"]  # the metrics a frame-level ``average`` applies to
DESCRIPTIONS = {
    ("i3d_norm", "running"): "I3D BatchNorm with its running statistics (eval mode)",
    ("i3d_norm", "per-video"): "I3D BatchNorm with each video's own statistics (E2FGVI/ProPainter core/metrics.py: "
                               "the model is never put in eval mode)",
    ("warp_occluded", "all-pixels"): "a fully occluded frame pair is averaged over all pixels",
    ("warp_occluded", "zero"): "a fully occluded frame pair adds 0 (Lai et al. evaluate_WarpError.py)",
    ("average", "video"): "mean of the per-video means",
    ("average", "frame"): "mean over every frame of every video (E2FGVI/ProPainter evaluate.py)",
    ("cs_clamp", "frame"): "each frame's score clamped at 0, then averaged (Hessel et al. 2021 CLIP-S)",
    ("cs_clamp", "mean"): "the mean over frames clamped at 0 (torchmetrics CLIPScore)",
}


@dataclass(frozen=True)
class Conventions:
    """One value per convention (module docstring); the defaults are the ``pack`` preset."""

    i3d_norm: str = "running"
    warp_occluded: str = "all-pixels"
    average: str = "video"
    cs_clamp: str = "frame"

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if value not in CHOICES[field.name]:
                raise ValueError(f"{field.name} must be one of {', '.join(CHOICES[field.name])}, not {value!r}")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def of_metric(self, metric: str) -> dict[str, str]:
        """The conventions a metric's number depends on, ``{name: value}`` (empty for none)."""
        return {name: getattr(self, name) for name, metrics in AFFECTS.items() if metric in metrics}

    def describe(self, metric: str) -> str:
        """Plain words for the conventions of ``metric`` ("" when none applies)."""
        return "; ".join(DESCRIPTIONS[(name, value)] for name, value in self.of_metric(metric).items())


PRESETS = {
    "pack": Conventions(),
    "paper": Conventions(i3d_norm="per-video", warp_occluded="zero", average="frame", cs_clamp="frame"),
}


def conventions_preset(preset: str = "pack", **overrides) -> Conventions:
    """The named preset with any convention given (not None) in ``overrides`` replaced."""
    if preset not in PRESETS:
        raise ValueError(f"conventions must be one of {', '.join(PRESETS)}, not {preset!r}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
