"""Which models a combo widget lists: cheap checks of what a file or folder is (safetensors header shapes,
config files), so each loader offers only models of its kind. Files that cannot be told apart cheaply
(pickled .ckpt/.pth) stay listed; the loaders' own checks give the clear error for anything that slips through."""
from __future__ import annotations

import functools
import json
from pathlib import Path

HEADER_ONLY_SUFFIXES = (".safetensors", ".sft")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def inpainting_base(path: Path) -> bool:
    """An SD-1.x inpainting base (9-channel U-Net): single file (header read only) or diffusers folder."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() not in HEADER_ONLY_SUFFIXES:
        return True  # reading a pickle means loading it: the loader checks it
    probe = path / "unet" / "config.json" if path.is_dir() else path
    try:
        stat = probe.stat()
    except OSError:
        stat = None
    return _inpainting_base(str(path), stat and (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=1024)
def _inpainting_base(path: str, identity) -> bool:
    """Cached per file identity (size, mtime): the combo lists are rebuilt on every /object_info request."""
    from cococo_core.checkpoints.detect import detect_checkpoint, detect_folder
    from cococo_core.checkpoints.safe_load import CheckpointError

    try:
        info = detect_folder(path) if Path(path).is_dir() else detect_checkpoint(path)
    except (CheckpointError, OSError, ValueError):
        return True  # unreadable: listed, so that loading it explains what is wrong
    return info.family in ("sd1", "unknown") and info.unet_in_channels in (9, None)


def diffusion_folder(path: Path) -> bool:
    """A diffusers pipeline folder (LGVI / LGVI-I): ``model_index.json``."""
    return (Path(path) / "model_index.json").is_file()


def lgvi_i_folder(path: Path) -> bool:
    """An LGVI-I checkpoint: a diffusers folder with the multimodal weights ``llava/llava_weights.pth``."""
    return diffusion_folder(path) and (Path(path) / "llava" / "llava_weights.pth").is_file()


def llava_folder(path: Path) -> bool:
    """LLaVA-1.5: llava-hf (``model_type: llava``) or the original layout (``llava_llama`` / ``mm_*`` keys)."""
    config = _json(Path(path) / "config.json")
    return config.get("model_type") in ("llava", "llava_llama") or any(key.startswith("mm_") for key in config)


def clip_vision_folder(path: Path) -> bool:
    """A CLIP (vision) transformers folder."""
    return _json(Path(path) / "config.json").get("model_type") in ("clip", "clip_vision_model")


TRACKER_MODEL_TYPES = ("sam2_video", "sam3_video", "sam3_tracker_video", "edgetam_video")
TRACKER_NAME_HINTS = ("sam2", "sam3", "edgetam")


def tracker_model(path: Path) -> bool:
    """A video tracker among Segment Anything models (``models/sams`` may hold SAM 2 files): a transformers folder
    of a video model type, a .safetensors with SAM 2's memory tensors, or a pickle named like one."""
    path = Path(path)
    if path.is_dir():
        return _json(path / "config.json").get("model_type") in TRACKER_MODEL_TYPES
    if path.suffix.lower() in HEADER_ONLY_SUFFIXES:
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                return any(key.endswith("maskmem_tpos_enc") for key in handle.keys())
        except (OSError, ValueError, RuntimeError):
            return True
    return any(hint in path.name.lower() for hint in TRACKER_NAME_HINTS)
