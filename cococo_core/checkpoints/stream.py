"""Tensor-by-tensor access to an SD-1.x source under diffusers names, whatever its layout.

``open_sd(source)`` opens a diffusers folder (one reader per component weights file, shards included) or a
single LDM file (one reader, names mapped with :class:`.ldm_keys.SDKeyMap`), without loading tensors. The
merger walks ``keys(component)`` and calls ``get(component, key)`` one tensor at a time, so peak memory is
one tensor (plus the page cache). Text-encoder names are transformers 5's (no ``text_model.``); VAE
attention names are modern (``to_q ... to_out.0``) and their LDM 1x1-conv weights come back as Linear (C, C).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .base import MODEL_COMPONENTS, ema_substitutions, weight_files
from .detect import CheckpointInfo, detect_folder, detect_state, require_sd1
from .ldm_keys import SDKeyMap, Transform, UnknownKeyError, normalize_vae_key
from .safe_load import CheckpointError, StateReader, open_state


class SDStream:
    """Lazy view: ``keys(c)``, ``shape(c, k)``, ``dtype(c, k)``, ``get(c, k)``, ``source_key(c, k)`` for
    c in ``components``. Use as a context manager (closes the files)."""

    def __init__(self, info: CheckpointInfo, readers: list[StateReader],
                 index: dict[str, dict[str, tuple[StateReader, str, Transform | None]]], used_ema: bool = False):
        self.info, self.used_ema = info, used_ema
        self._readers, self._index = readers, index

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(c for c in MODEL_COMPONENTS if self._index.get(c))

    def keys(self, component: str) -> list[str]:
        return list(self._index.get(component, {}))

    def _entry(self, component: str, key: str):
        try:
            return self._index[component][key]
        except KeyError:
            raise KeyError(f"{self.info.name}: no {component} tensor named {key!r}") from None

    def source_key(self, component: str, key: str) -> str:
        """The tensor's name in the file it is read from."""
        return self._entry(component, key)[1]

    def shape(self, component: str, key: str) -> tuple[int, ...]:
        reader, name, transform = self._entry(component, key)
        shape = reader.shape(name)
        return tuple(transform(torch.empty(shape, device="meta")).shape) if transform else shape

    def dtype(self, component: str, key: str) -> torch.dtype:
        reader, name, _ = self._entry(component, key)
        return reader.dtype(name)

    def get(self, component: str, key: str) -> torch.Tensor:
        reader, name, transform = self._entry(component, key)
        tensor = reader.get(name)
        return transform(tensor) if transform else tensor

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []

    def __enter__(self) -> "SDStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _canonical(component: str, key: str) -> str | None:
    if component == "vae":
        return normalize_vae_key(key)
    if component == "text_encoder":
        return None if key.endswith("position_ids") else key.removeprefix("text_model.")
    return key


def open_sd(source: str | os.PathLike, *, components: Sequence[str] = MODEL_COMPONENTS, use_ema: bool = False,
            require_in_channels: int | Sequence[int] | None = None) -> SDStream:
    """Open an SD-1.x diffusers folder or single file for streaming (see :class:`SDStream`).

    Refuses SD-2.x / SDXL / non-SD files (and, with ``require_in_channels``, the wrong U-Net input width).
    Components the source lacks (e.g. a file without a baked VAE) are simply absent from ``components``."""
    path = Path(source)
    index: dict[str, dict] = {}
    readers: list[StateReader] = []
    if path.is_dir():
        info = detect_folder(path)
        require_sd1(info, in_channels=require_in_channels)
        try:
            for component in components:
                if not (path / component / "config.json").is_file():
                    continue
                index[component] = {}
                for file in weight_files(path, component):
                    reader = open_state(file)
                    readers.append(reader)
                    for key in reader.keys():
                        name = _canonical(component, key)
                        if name is not None:
                            index[component][name] = (reader, key, None)
        except BaseException:
            for reader in readers:
                reader.close()
            raise
        return SDStream(info, readers, index)
    reader = open_state(path)
    try:
        keys = reader.keys()
        info = detect_state(reader.shapes(), name=path.name, metadata=reader.metadata)
        require_sd1(info, in_channels=require_in_channels)
        substitute = ema_substitutions(keys, info, use_ema)
        key_map = SDKeyMap.from_ldm_keys(keys)
        unknown = []
        for key in keys:
            try:
                target = key_map.to_diffusers(key)
            except UnknownKeyError:
                unknown.append(key)
                continue
            if target is not None and target.component in components:
                index.setdefault(target.component, {})[target.key] = (reader, substitute.get(key, key), target.transform)
        if unknown:
            raise CheckpointError(f"{path}: {len(unknown)} tensors do not fit the SD-1.x layout, e.g. {', '.join(unknown[:8])}")
    except BaseException:
        reader.close()
        raise
    return SDStream(info, [reader], index, used_ema=bool(substitute))
