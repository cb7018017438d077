"""CoCoCo motion weights: reading the official files, the pack's single .safetensors, and loading them.

Official release (spec §2.2): a folder with ``model_0.pth … model_3.pth``, written from a DDP-wrapped module.
The official loader merges them in order (later files override earlier ones), drops the stale position-encoding
buffers (``…pos_encoder.pe``, saved with max_len 24/4800 and no longer matching; they are computed here),
keeps the text after the first ``module.`` and loads non-strictly on top of the SD-inpainting U-Net. The same
is done here, except that nothing is loaded silently: every one of the motion tensors the U-Net expects (840
for SD1.5) must be present with the right shape, keys that are not motion-module keys but name U-Net
parameters are applied and logged (as the official loader applies them), anything else is listed.

The pack's converter writes the normalised result as one ``.safetensors`` file (no pickle, one file).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..checkpoints.keys import compare_keys, shapes_of
from ..checkpoints.safe_load import CheckpointError, load_state_dict
from ..output_files import staged_file
from .video_unet import MOTION_MARKER, VideoUNet

log = logging.getLogger(__name__)

OFFICIAL_FILE = re.compile(r"^model_(\d+)\.pth$")
STALE_BUFFER = "pos_encoder.pe"
FORMAT_TAG = "cococo-motion"


class MotionWeightsError(ValueError):
    """Motion weights that do not fit the U-Net: the message lists what is missing / mis-shaped / unexpected."""


def official_files(folder: str | os.PathLike) -> list[Path]:
    """``model_<n>.pth`` files of an official CoCoCo folder, in numeric order."""
    folder = Path(folder)
    found = sorted(
        ((int(m.group(1)), p) for p in folder.iterdir() if (m := OFFICIAL_FILE.match(p.name)) and p.is_file()),
        key=lambda item: item[0],
    )
    if not found:
        raise FileNotFoundError(
            f"{folder}: no CoCoCo motion weights here; expected the official model_0.pth … model_3.pth "
            "or a .safetensors file written by `python -m cococo_core convert-motion`"
        )
    indices = [index for index, _ in found]
    if indices != list(range(len(indices))):
        log.warning("%s: official files are model_0..model_3.pth; found indices %s", folder, indices)
    return [path for _, path in found]


def motion_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files to merge for ``source``: a folder (official ``model_i.pth``, else its one .safetensors), a file,
    or a list of files (merged in the given order)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            if any(OFFICIAL_FILE.match(p.name) for p in path.iterdir()):
                return official_files(path)
            single = sorted(path.glob("*.safetensors"))
            if len(single) == 1:
                return single
            return official_files(path)  # raises the explanatory FileNotFoundError (or lists >1 candidates)
        if not path.is_file():
            raise FileNotFoundError(f"motion weights not found: {path}")
        return [path]
    paths = [Path(p) for p in source]
    if not paths:
        raise FileNotFoundError("no motion weight files given")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"motion weights file not found: {path}")
    return paths


def normalize_key(key: str) -> str:
    """The official rename: the text after the first ``module.`` (DDP prefix); keys without it are kept."""
    return key.split("module.", 1)[1] if "module." in key else key


def merge_motion_state(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge official state dicts in order (later overrides earlier), drop stale ``pe`` buffers, strip ``module.``."""
    merged: dict[str, torch.Tensor] = {}
    dropped = 0
    for state in states:
        for key, tensor in state.items():
            if key.endswith(STALE_BUFFER):
                dropped += 1
                continue
            merged[normalize_key(key)] = tensor
    if dropped:
        log.debug("dropped %d stale position-encoding buffers (recomputed at run time)", dropped)
    return merged


def read_motion_weights(source) -> dict[str, torch.Tensor]:
    """Read and normalise motion weights from a folder, a file or a list of files (see :func:`motion_files`)."""
    return merge_motion_state(load_state_dict(path) for path in motion_files(source))


# the one thing to do first, before any tensor name (a wrong file lists hundreds of them)
FIX_MOTION_WEIGHTS = (
    "These are not CoCoCo motion weights for this model: pick the official CoCoCo folder (model_0.pth ... "
    "model_3.pth) or a file written by `python -m cococo_core convert-motion`. (An incomplete download, or a "
    "base model with other channel or text widths, gives this error too.)"
)


def check_motion_state(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`MotionWeightsError` unless every expected motion tensor is present with its shape."""
    report = compare_keys({k: tuple(shape) for k, shape in expected.items()}, shapes_of(state))
    missing = report.missing  # tensors the motion modules do not have are not an error here (they are logged)
    wrong = [f"{k}: file {file_shape} vs model {model_shape}" for k, file_shape, model_shape in report.mismatched]
    if not missing and not wrong:
        return
    lines = [FIX_MOTION_WEIGHTS, "Details:"]
    if missing:
        lines.append(f"{len(missing)} of {len(expected)} motion tensors are missing: " + _preview(missing, 4))
    if wrong:
        lines.append(f"{len(wrong)} motion tensors have the wrong shape: " + _preview(wrong, 4))
    raise MotionWeightsError("\n".join(lines))


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def load_motion_weights(video_unet: VideoUNet, state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load normalised motion weights into ``video_unet`` (tensors are cast to its device and dtype).

    Every motion-module tensor must be present with the right shape (else :class:`MotionWeightsError`).
    Keys naming other U-Net parameters are applied too (the official loader does) and logged; keys matching
    nothing are logged as unexpected. Returns ``{"applied_base": [...], "unexpected": [...]}``.
    """
    target = video_unet.unet.state_dict(keep_vars=True)
    expected = {k: v.shape for k, v in target.items() if MOTION_MARKER in k}
    check_motion_state(expected, state)
    device, dtype = _real_device(video_unet), video_unet.dtype
    motion = {k: _cast(state[k], device, dtype) for k in expected}
    base = {k: v for k, v in state.items() if k not in expected and k in target}
    unexpected = sorted(k for k in state if k not in expected and k not in target)
    wrong_base = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in base.items()
                        if v.shape != target[k].shape)
    if wrong_base:
        raise MotionWeightsError(f"{FIX_MOTION_WEIGHTS}\nDetails: {len(wrong_base)} U-Net tensors in the motion file "
                                 "have the wrong shape: " + _preview(wrong_base, 4))
    video_unet.unet.load_state_dict(motion, strict=False, assign=True)
    if base:
        log.warning("motion weights also replace %d base U-Net tensors (as the official loader does): %s",
                    len(base), _preview(sorted(base), 6))
        video_unet.unet.load_state_dict(base, strict=False)
    if unexpected:
        log.warning("ignored %d keys that match nothing in the U-Net: %s", len(unexpected), _preview(unexpected))
    return {"applied_base": sorted(base), "unexpected": unexpected}


def _real_device(video_unet: VideoUNet) -> torch.device:
    for param in video_unet.unet.parameters():
        if not param.is_meta:
            return param.device
    return torch.device("cpu")


def _cast(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    if not tensor.is_floating_point():
        raise MotionWeightsError(f"a motion tensor has dtype {tensor.dtype}; expected floating point weights")
    return tensor.to(device=device, dtype=dtype).contiguous()


def save_motion_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike, *, dtype=None,
                            overwrite: bool = False) -> Path:
    """Write normalised motion weights as one .safetensors file (optionally cast, e.g. to fp16); an existing
    ``path`` is replaced only with ``overwrite`` (:func:`cococo_core.output_files.staged_file`)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in sorted(state.items())}
    path.parent.mkdir(parents=True, exist_ok=True)

    def verify(written: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(written), framework="pt") as handle:
            if len(list(handle.keys())) != len(tensors):
                raise ValueError(f"wrote {len(tensors)} tensors but the file reads back fewer")

    with staged_file(path, verify, overwrite=overwrite) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt", "content": FORMAT_TAG})
    return path


__all__ = [
    "CheckpointError", "MotionWeightsError", "check_motion_state", "load_motion_weights", "merge_motion_state",
    "motion_files", "normalize_key", "official_files", "read_motion_weights", "save_motion_safetensors",
]
