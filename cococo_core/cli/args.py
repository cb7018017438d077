"""Argument types and argument groups shared by the video commands (``inpaint``, ``mask``, ``remove``)."""
from __future__ import annotations

import argparse
import os

from .. import validation

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def positive(kind):
    """An argparse type: a ``kind`` (int or float) above zero."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number (no nan / inf)."""
    try:
        return validation.finite(float(text), "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}") from None


def seed(text: str) -> int:
    """An argparse type: a seed in [0, 2**64 - 1]."""
    try:
        return validation.seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number in [0, {validation.SEED_MAX}], got {text}") from None


def steps(text: str) -> int:
    """An argparse type: a step count in [1, 1000]."""
    try:
        return validation.steps(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number in [1, 1000], got {text}") from None


def add_overwrite(group) -> None:
    group.add_argument("--overwrite", action="store_true",
                       help="replace outputs that exist (an output that is one of the inputs is always refused)")


def require_paths(**paths) -> None:
    """FileNotFoundError naming the option of the first path that does not exist (None: not given)."""
    for option, path in paths.items():
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"--{option.replace('_', '-')} not found: {path}")


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
    check_device(resolved)
    if dtype == "auto":
        dtype = "fp32" if resolved.type == "cpu" else "fp16"
    return resolved, getattr(torch, DTYPES[dtype])


def check_device(device) -> None:
    """ValueError in one line when ``device`` is not usable with this torch (a CPU-only build, a missing GPU)."""
    import torch  # noqa: PLC0415

    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available (torch {torch.__version__}"
                             f"{', built without CUDA' if torch.version.cuda is None else ', no GPU found'}); "
                             "use --device cpu or auto, or install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device {device}: Apple MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise ValueError(f"--device {device}: use auto, cpu, cuda, cuda:N or mps")
