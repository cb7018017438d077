"""Opt-in ``torch.compile`` of the video U-Net (Inductor), and the checks that say when it cannot work.

The 2-D U-Net inside :class:`~cococo_core.models.video_unet.VideoUNet` is compiled in place with
``nn.Module.compile`` (its motion-module forward hooks are traced with it: one graph, no graph break), so the
wrapper, its input checks, ``frame_chunk`` and the sampler's per-step progress and cancel hooks stay as they are.
Compilation happens on the first call of each new input shape (minutes for the full-size U-Net on a CPU) and
cannot be cancelled while it runs. Where Inductor cannot work (no C/C++ compiler for a CPU model, no Triton for
a GPU one, a platform without TorchDynamo) the U-Net stays eager and the reason is logged.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

logger = logging.getLogger(__name__)


def compile_unavailable_reason(device) -> str | None:
    """Why Inductor cannot compile a model on ``device`` here, or None when it can."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)"
    dynamo_supported = getattr(torch._dynamo, "is_dynamo_supported", lambda: True)
    if not dynamo_supported():
        return f"torch.compile does not support this platform/Python ({torch.__version__}); run without compiling"
    if device.type == "cpu":
        compiler = os.environ.get("CXX") or next((c for c in ("g++", "clang++", "c++", "cl") if shutil.which(c)), None)
        if compiler is None or not shutil.which(compiler):
            return ("torch.compile on the CPU needs a C++ compiler (g++ or clang++ on PATH, or set CXX); "
                    "install one (e.g. 'apt install g++', Xcode command line tools, MSVC) or run without compiling")
    elif device.type in ("cuda", "xpu"):
        from torch.utils._triton import has_triton  # noqa: PLC0415

        if not has_triton():
            return f"torch.compile on {device.type} needs Triton ('pip install triton'); run without compiling"
    elif device.type != "mps":
        return f"torch.compile is not supported here for device {device.type!r}"
    return None


def compile_unet(video_unet: nn.Module, **options) -> bool:
    """Compile ``video_unet``'s inner 2-D U-Net (with its motion modules) in place; ``options`` go to
    ``torch.compile`` (e.g. ``mode="max-autotune"``). Returns True when compiled, False (with a warning
    that says why) when torch.compile cannot work here: the model then runs eager, unchanged."""
    inner = getattr(video_unet, "unet", video_unet)
    device = next(inner.parameters()).device
    reason = compile_unavailable_reason(device)
    if reason is not None:
        logger.warning("not compiling the U-Net: %s", reason)
        return False
    if device.type == "cpu" and options.get("backend", "inductor") == "inductor" and "mode" not in options:
        # Inductor's channels-last layout optimisation made a full-size CPU step 1.28x slower than eager; without
        # it the step was 0.93x (bench/bench_compile.py, README "Benchmarks")
        options["options"] = {"layout_optimization": False, **options.get("options", {})}
    inner.compile(**options)
    logger.info("the U-Net is compiled on first use of each input shape (minutes on a CPU, not cancellable)")
    return True


def is_compiled(video_unet: nn.Module) -> bool:
    inner = getattr(video_unet, "unet", video_unet)
    return getattr(inner, "_compiled_call_impl", None) is not None
