"""``from_pretrained`` of a local diffusers / transformers folder, with this pack's checks around it.

transformers and diffusers read a folder's weights themselves, so the checks of :mod:`.safe_load` are
repeated around them: every ``*.safetensors`` file of the folder must carry a safetensors header (a torch
pickle renamed ``.safetensors`` is named as such, instead of a raw ``SafetensorError`` traceback), a load
error names the folder, and the loaded module's tensors are checked for NaN / infinity once each
(:func:`.finite.check_module`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError
from .finite import check_module
from .safe_load import SAFETENSORS_SUFFIXES, misnamed_pickle_error, sniff


def check_safetensors_headers(folder: str | os.PathLike) -> None:
    """Refuse a folder whose ``.safetensors`` files are not safetensors (read: the first 9 bytes of each)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in SAFETENSORS_SUFFIXES and path.is_file():
            kind = sniff(path)
            if kind != "safetensors":
                raise misnamed_pickle_error(path, kind)


def load_pretrained(load: Callable[..., Any], folder: str | os.PathLike, **kwargs) -> Any:
    """``load(folder, **kwargs)`` (a ``from_pretrained``), checked: see the module docstring."""
    check_safetensors_headers(folder)
    try:
        model = load(str(folder), **kwargs)
    except (CheckpointError, MemoryError, ImportError):
        raise
    except Exception as error:  # noqa: BLE001 - safetensors / transformers / diffusers raise many types
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{folder}: cannot load this model folder ({type(error).__name__}: {detail})") from error
    if hasattr(model, "state_dict"):
        check_module(model, folder)
    return model
