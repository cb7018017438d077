"""Argument types and argument groups shared by the video commands (``inpaint``, ``mask``, ``remove``)."""
from __future__ import annotations

import argparse

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def positive(kind):
    """An argparse type: a ``kind`` (int or float) above zero."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_frame_selection(group, *, default_fps: float, max_frames_help: str = "use at most N frames (default: all)") -> None:
    """``--fps --start --stride --max-frames``: which input frames are used and the output frame rate."""
    group.add_argument("--fps", type=positive(float), metavar="FPS",
                       help=f"output frame rate (default: the input's divided by --stride; {default_fps:g} for image "
                            "sequences, which carry none)")
    group.add_argument("--start", type=non_negative, default=0, metavar="N", help="first frame to use (default 0)")
    group.add_argument("--stride", type=positive(int), default=1, metavar="K",
                       help="use every K-th frame (default 1; the official CoCoCo demo used 2)")
    group.add_argument("--max-frames", type=positive(int), metavar="N", help=max_frames_help)


def add_device_arguments(group, *, dtype: bool = True) -> None:
    """``--device`` (and ``--dtype``), resolved by :func:`device_and_dtype`."""
    group.add_argument("--device", default="auto",
                       help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default auto)")
    if dtype:
        group.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                           help="weights precision (default auto: fp16 on cuda/mps, fp32 on cpu)")


def device_and_dtype(device: str, dtype: str = "auto"):
    """The torch device and dtype that ``--device`` / ``--dtype`` name (``auto``: best available; fp16 off CPU)."""
    import torch  # noqa: PLC0415

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {error}") from error
    if dtype == "auto":
        dtype = "fp32" if resolved.type == "cpu" else "fp16"
    return resolved, getattr(torch, DTYPES[dtype])
