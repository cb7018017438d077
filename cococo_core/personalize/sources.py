"""Per-component, tensor-at-a-time views of a Stable Diffusion 1.x model, in diffusers names.

A :class:`ModelSource` gives ``unet`` / ``text_encoder`` / ``vae`` :class:`ComponentSource` s whose
keys are the names of diffusers' ``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers 5's
``CLIPTextModel`` state dicts. Files are opened with :func:`cococo_core.checkpoints.stream.open_sd`
(single LDM files and diffusers folders, detection of the model family, EMA selection); nothing is
read until :meth:`ComponentSource.get` asks for one tensor, so a merge never holds more than the
tensor it is working on. In-memory modules and state dicts are wrapped without copying.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..checkpoints import ldm_keys
from ..checkpoints.detect import CheckpointInfo
from ..checkpoints.safe_load import open_state
from ..checkpoints.stream import SDStream, open_sd

COMPONENTS = ldm_keys.COMPONENTS  # ("unet", "vae", "text_encoder")


class ComponentSource:
    """Read-only ``{key: tensor}`` view of one component; ``get`` reads one tensor on demand."""

    def keys(self) -> List[str]:
        raise NotImplementedError

    def shape(self, key: str) -> Tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def __contains__(self, key: object) -> bool:
        cached = getattr(self, "_keys_cache", None)
        if cached is None:
            cached = self._keys_cache = set(self.keys())
        return key in cached


class StreamSource(ComponentSource):
    """One component of an :class:`SDStream`."""

    def __init__(self, stream: SDStream, component: str):
        self._stream, self._component = stream, component

    def keys(self) -> List[str]:
        return self._stream.keys(self._component)

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self._stream.shape(self._component, key))

    def dtype(self, key: str) -> torch.dtype:
        return self._stream.dtype(self._component, key)

    def get(self, key: str) -> torch.Tensor:
        return self._stream.get(self._component, key)


class DictSource(ComponentSource):
    """A component held as a state dict (or an ``nn.Module``'s state dict, without copying)."""

    def __init__(self, state: Mapping[str, torch.Tensor], normalize: Callable[[str], Optional[str]] = lambda k: k):
        self._state: Dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            name = normalize(key)
            if name is not None:
                self._state[name] = tensor

    def keys(self) -> List[str]:
        return list(self._state)

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._state[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


def normalize_key(component: str, key: str) -> Optional[str]:
    """A diffusers/transformers component key in the names used here (None for buffers never merged):
    transformers < 5 ``text_model.`` prefixes and legacy diffusers VAE attention names are accepted."""
    if component == "text_encoder":
        key = key[len("text_model."):] if key.startswith("text_model.") else key
        return None if key.endswith("position_ids") else key
    if component == "vae":
        return ldm_keys.normalize_vae_key(key)
    return key


@dataclass
class ModelSource:
    """One SD-1.x model: its components, what it was detected as, and file keys that are not merged."""

    name: str
    components: Dict[str, ComponentSource]
    info: Optional[CheckpointInfo] = None  # None for in-memory models
    ignored: Dict[str, str] = field(default_factory=dict)  # file key -> reason it is not merged
    used_ema: bool = False
    stream: Optional[SDStream] = None

    def get(self, component: str) -> Optional[ComponentSource]:
        return self.components.get(component)

    def describe(self, component: str, key: str) -> str:
        """Where one tensor comes from, for messages: the file (or folder) and the tensor's name in it."""
        if self.stream is not None:
            folder = f" ({component})" if Path(self.name).is_dir() else ""
            return f"{self.name}{folder} tensor {self.stream.source_key(component, key)}"
        return f"{self.name} tensor {component}:{key}"

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unused_file_keys(path: Path, stream: SDStream, use_ema: bool) -> Dict[str, str]:
    """Keys of a single file that feed no component weight, with the reason."""
    consumed = {stream.source_key(c, k) for c in stream.components for k in stream.keys(c)}
    with open_state(path) as reader:
        keys = reader.keys()
    ignored = {}
    for key in keys:
        if key in consumed:
            continue
        if key.endswith("position_ids"):
            ignored[key] = "CLIP position_ids buffer; never merged (the output gets a fresh one)"
        elif key.startswith(ldm_keys.EMA_PREFIX):
            ignored[key] = "EMA copy of the U-Net; " + ("not a U-Net weight" if use_ema else "the non-EMA weights are used")
        elif key.startswith(ldm_keys.UNET_PREFIX):
            ignored[key] = "non-EMA U-Net weight; the EMA copy is used"
        else:
            ignored[key] = "not a weight of an SD-1.x U-Net, text encoder or VAE"
    return ignored


def open_model(source, *, use_ema: bool = False) -> ModelSource:
    """A :class:`ModelSource` for a single-file checkpoint path, a diffusers folder path, a mapping
    ``{component: nn.Module | state dict}`` or an existing :class:`ModelSource` (returned as is).

    ``use_ema``: for single files that carry ``model_ema.*`` copies, read the U-Net from them.
    SD-2.x / SDXL / non-SD files are refused by :func:`open_sd` with what was found.
    """
    if isinstance(source, ModelSource):
        return source
    if isinstance(source, Mapping):
        components = {}
        for component, value in source.items():
            if value is None:
                continue
            if component not in COMPONENTS:
                raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
            state = value.state_dict(keep_vars=True) if isinstance(value, torch.nn.Module) else value
            components[component] = DictSource(state, lambda k, c=component: normalize_key(c, k))
        return ModelSource("<in memory>", components)
    path = Path(os.fspath(source))
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    stream = open_sd(path, use_ema=use_ema and not path.is_dir())
    try:
        ignored = {} if path.is_dir() else _unused_file_keys(path, stream, use_ema)
    except BaseException:
        stream.close()
        raise
    components = {c: StreamSource(stream, c) for c in stream.components}
    return ModelSource(str(path), components, stream.info, ignored, stream.used_ema, stream)
