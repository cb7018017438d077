"""Which tracker a file or folder holds, and loading it.

Backends register themselves with :func:`register_tracker` (``kind``, a detector that looks at a
:class:`TrackerSource`, a loader). :func:`load_tracker` reads the file once (``torch.load(weights_only=True)`` /
safetensors, through :func:`cococo_core.masks.loading.read_checkpoint`) or the folder's ``config.json``, asks every
registered backend whether it recognises it, and loads with the one that does.

The built-in backends live in the modules of :data:`BUILTIN_BACKENDS`, imported on first use (each registers at
import), so importing this module stays cheap.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .base import Tracker

# each backend module adds its line here (it registers itself when imported)
BUILTIN_BACKENDS: tuple[str, ...] = (
    "cococo_core.masks.tracking.sam2",
    "cococo_core.masks.tracking.edgetam",
    "cococo_core.masks.tracking.sam3",
)


@dataclass
class TrackerSource:
    """A tracker file or Hugging Face folder, read lazily and at most once.

    ``model_type``: ``config.json``'s ``model_type`` for a folder (None for a file); :meth:`state`: the tensors of a
    file (``{"model": ...}`` unwrapped, a ``module.`` prefix stripped)."""

    path: Path
    model_type: Optional[str] = None
    _state: Optional[dict] = field(default=None, repr=False)

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    def state(self) -> dict[str, torch.Tensor]:
        if self.is_folder:
            raise ValueError(f"{self.path} is a folder, not a checkpoint file")
        if self._state is None:
            from ..loading import read_checkpoint

            self._state = read_checkpoint(self.path)
        return self._state

    def config(self) -> dict:
        """The folder's ``config.json`` ({} when absent or unreadable)."""
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


DetectFn = Callable[[TrackerSource], bool]
LoadFn = Callable[..., Tracker]


@dataclass(frozen=True)
class _Backend:
    kind: str
    detect: DetectFn
    load: LoadFn
    accepts: str
    reads_text: bool


_BACKENDS: dict[str, _Backend] = {}
_builtins_loaded = False


def register_tracker(kind: str, detect_fn: DetectFn, load_fn: LoadFn, accepts: str = "",
                     reads_text: bool = False) -> None:
    """Make ``load_tracker`` know a tracker backend.

    ``detect_fn(source)`` -> True when ``source`` (a :class:`TrackerSource`) is this backend's file/folder; it must
    not raise for other files. ``load_fn(source, device=..., dtype=...)`` -> a :class:`~.base.Tracker`.
    ``accepts``: what users can give, for the error message of an unknown file (e.g. "sam2.1_hiera_*.pt");
    ``reads_text``: the tracker takes a text phrase itself (its ``supports_text``), known before loading so a
    command line can check its arguments first. Registering a kind again replaces it.
    """
    _BACKENDS[kind] = _Backend(kind, detect_fn, load_fn, accepts or kind, reads_text)


def reads_text(kind: str) -> bool:
    """Whether trackers of ``kind`` read text themselves (SAM 3) rather than needing a detector's boxes."""
    _load_builtins()
    return _BACKENDS[kind].reads_text


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_BACKENDS:
            importlib.import_module(module)


def supported() -> str:
    """One line per registered kind: what files/folders it accepts."""
    _load_builtins()
    return "; ".join(f"{b.kind}: {b.accepts}" for b in _BACKENDS.values())


def open_source(path: str | os.PathLike) -> TrackerSource:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tracker model not found: {path}")
    source = TrackerSource(path)
    if source.is_folder:
        source.model_type = source.config().get("model_type")
    return source


def detect_kind(source: TrackerSource) -> Optional[str]:
    """The registered kind whose detector recognises ``source``, or None."""
    _load_builtins()
    for backend in _BACKENDS.values():
        if backend.detect(source):
            return backend.kind
    return None


def tracker_kind(source: TrackerSource) -> str:
    """The kind of tracker ``source`` holds (its file is read once here and kept in ``source``), or a ValueError
    that lists what is supported."""
    if not source.is_folder:
        try:
            source.state()
        except Exception as error:  # an unreadable or non-checkpoint file: say what is supported
            raise ValueError(f"{source.path}: not a readable checkpoint ({error}). Supported: {supported()}") from error
    kind = detect_kind(source)
    if kind is None:
        what = (f"a folder with model_type {source.model_type!r}" if source.is_folder and source.model_type
                else "a folder without a config.json model_type" if source.is_folder else "a file")
        raise ValueError(f"{source.path}: {what} that no tracker recognises. Supported: {supported()}")
    return kind


def load_tracker(path: str | os.PathLike | TrackerSource, device=None, dtype=None, **options) -> Tracker:
    """The tracker in ``path``: an original checkpoint file (e.g. ``sam2.1_hiera_tiny.pt``) or a Hugging Face folder
    (``config.json`` + weights), or a :class:`TrackerSource` already opened. ``device`` defaults to the CPU,
    ``dtype`` to float32; ``options`` go to the backend's loader (e.g. SAM 2's ``image_size`` for an original
    file of a non-released size)."""
    source = path if isinstance(path, TrackerSource) else open_source(path)
    kind = tracker_kind(source)
    return _BACKENDS[kind].load(source, device=torch.device(device or "cpu"), dtype=dtype or torch.float32, **options)
