"""Per-component, tensor-at-a-time views of a Stable Diffusion 1.x model, in diffusers names.

A :class:`ModelSource` gives ``unet`` / ``text_encoder`` / ``vae`` :class:`ComponentSource` s whose
keys are the names of diffusers' ``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers 5's
``CLIPTextModel`` state dicts. Nothing is read until :meth:`ComponentSource.get` asks for one tensor,
so a merge never holds more than the tensor it is working on (safetensors are memory-mapped;
``.ckpt`` files are read with ``torch.load(weights_only=True, mmap=True)`` by
:mod:`cococo_core.checkpoints.safe_load`).

Inputs: an SD-1.x single file (LDM layout, ``.safetensors`` or weights-only ``.ckpt``), a diffusers
folder (``unet/``, ``text_encoder/``, ``vae/`` sub-folders), in-memory modules or state dicts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..checkpoints import ldm_keys
from ..checkpoints.safe_load import StateReader, open_state

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
        return key in self._key_set()

    def _key_set(self):
        cached = getattr(self, "_keys_cache", None)
        if cached is None:
            cached = self._keys_cache = set(self.keys())
        return cached

    def __len__(self) -> int:
        return len(self._key_set())


class MappedSource(ComponentSource):
    """Keys of a :class:`StateReader` renamed (and reshaped) into one component's names."""

    def __init__(self, reader: StateReader, mapping: Mapping[str, Tuple[str, Optional[Callable]]]):
        self._reader = reader
        self._mapping = dict(mapping)  # component key -> (file key, transform)

    def keys(self) -> List[str]:
        return list(self._mapping)

    def file_key(self, key: str) -> str:
        return self._mapping[key][0]

    def shape(self, key: str) -> Tuple[int, ...]:
        file_key, transform = self._mapping[key]
        shape = self._reader.shape(file_key)
        if transform is not None:
            shape = tuple(transform(torch.empty(shape, device="meta")).shape)
        return tuple(shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._reader.dtype(self._mapping[key][0])

    def get(self, key: str) -> torch.Tensor:
        file_key, transform = self._mapping[key]
        tensor = self._reader.get(file_key)
        return transform(tensor) if transform is not None else tensor


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
    """One SD-1.x model: its components, what file(s) it came from and keys it had that are not weights."""

    name: str
    components: Dict[str, ComponentSource]
    kind: str  # "single-file" | "diffusers" | "memory"
    ignored: Dict[str, str] = field(default_factory=dict)  # file key -> reason it is not merged
    metadata: Dict[str, str] = field(default_factory=dict)
    file_keys: List[str] = field(default_factory=list)
    readers: List[StateReader] = field(default_factory=list)

    def get(self, component: str) -> Optional[ComponentSource]:
        return self.components.get(component)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers.clear()

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _single_file(path: Path, *, use_ema: bool) -> ModelSource:
    reader = open_state(path)
    keys = reader.keys()
    key_map = ldm_keys.SDKeyMap.from_ldm_keys(keys)
    ema = {k for k in keys if k.startswith(ldm_keys.EMA_PREFIX)}
    per_component: Dict[str, Dict[str, Tuple[str, Optional[Callable]]]] = {c: {} for c in COMPONENTS}
    ignored: Dict[str, str] = {}
    for key in keys:
        if key in ema:
            continue
        try:
            target = key_map.to_diffusers(key)
        except ldm_keys.UnknownKeyError as error:
            ignored[key] = str(error)
            continue
        if target is None:
            ignored[key] = ("CLIP position_ids buffer; never merged (the output gets a fresh one)"
                            if key.endswith("position_ids") else "not a model weight (buffer or marker); never merged")
            continue
        file_key = key
        if use_ema and target.component == "unet":
            candidate = ldm_keys.ema_key(key)
            if candidate in ema:
                file_key = candidate
        per_component[target.component][target.key] = (file_key, target.transform)
    used = {file_key for mapping in per_component.values() for file_key, _ in mapping.values()}
    for key in ema - used:
        ignored[key] = "EMA copy of a U-Net weight; " + ("no matching U-Net key" if use_ema else "non-EMA weights are used (use_ema=False)")
    components = {c: MappedSource(reader, m) for c, m in per_component.items() if m}
    return ModelSource(str(path), components, "single-file", ignored, dict(reader.metadata), keys, [reader])


_FOLDER_FILES = {
    "unet": ("diffusion_pytorch_model", "unet"),
    "vae": ("diffusion_pytorch_model", "vae"),
    "text_encoder": ("model", "text_encoder"),
}
_SUFFIX_ORDER = (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin")


def _folder_file(folder: Path, component: str) -> Optional[Path]:
    stem, sub = _FOLDER_FILES[component]
    names = [stem, "pytorch_model"] if component == "text_encoder" else [stem]
    for name in names:
        for suffix in _SUFFIX_ORDER:
            candidate = folder / sub / (name + suffix)
            if candidate.is_file():
                return candidate
    return None


def _diffusers_folder(path: Path) -> ModelSource:
    components: Dict[str, ComponentSource] = {}
    readers: List[StateReader] = []
    ignored: Dict[str, str] = {}
    for component in COMPONENTS:
        file = _folder_file(path, component)
        if file is None:
            continue
        reader = open_state(file)
        readers.append(reader)
        mapping = {}
        for key in reader.keys():
            name = normalize_key(component, key)
            if name is None:
                ignored[f"{component}/{key}"] = "constant buffer; never merged"
            else:
                mapping[name] = (key, None)
        components[component] = MappedSource(reader, mapping)
    metadata = {}
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        try:
            prediction = json.loads(scheduler.read_text(encoding="utf-8")).get("prediction_type")
        except (OSError, ValueError, AttributeError):
            prediction = None
        if isinstance(prediction, str):
            metadata["prediction_type"] = prediction
    if "unet" not in components:
        raise FileNotFoundError(f"{path}: is a folder but has no unet/diffusion_pytorch_model.safetensors (or .bin); "
                                "expected a diffusers Stable Diffusion folder or a single-file checkpoint")
    return ModelSource(str(path), components, "diffusers", ignored, metadata, [], readers)


def open_model(source, *, use_ema: bool = False) -> ModelSource:
    """A :class:`ModelSource` for a single-file checkpoint path, a diffusers folder path, a mapping
    ``{component: nn.Module | state dict}`` or an existing :class:`ModelSource` (returned as is).

    ``use_ema``: for single files that carry ``model_ema.*`` copies, read the U-Net from them.
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
        return ModelSource("<in memory>", components, "memory")
    path = Path(os.fspath(source))
    if path.is_dir():
        return _diffusers_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    return _single_file(path, use_ema=use_ema)
