"""Safe reading of untrusted checkpoint files.

Every floating tensor is checked for NaN / infinity as it is read (:mod:`.finite`); a damaged one is refused
with a :class:`NonFiniteWeightsError` naming the file and the tensor.

Formats:

* ``.safetensors`` (preferred): 8-byte little-endian header length, a JSON header (``dtype``, ``shape``,
  ``data_offsets`` per tensor, optional ``__metadata__`` string map), then raw bytes. Read with
  ``safetensors``; nothing in it can execute code.
* ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``: torch pickles, read ONLY with
  ``torch.load(weights_only=True)``, whose unpickler accepts tensors, containers and primitives and refuses
  every other Python global (a Lightning callback, ``os.system``, ...) before calling it. A top-level
  ``{"state_dict": {...}, "global_step": ...}`` wrapper (Lightning/LDM) is unwrapped. Lightning / numpy
  training objects pickled beside the weights (RunwayML's SD-1.x ``.ckpt`` files carry a ``ModelCheckpoint``
  callback) are read as inert :class:`TrainingObjectPlaceholder` objects: their code is never imported or run.

The format is recognised from the file's first bytes (not trusted from its extension): ``PK`` = zip
torch file, ``\\x80`` = legacy pickle, otherwise a safetensors header is expected.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch

from .errors import CheckpointError, NonFiniteWeightsError, UnsafeCheckpointError
from .finite import check_tensor

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


__all__ = ["CheckpointError", "NonFiniteWeightsError", "StateReader", "UnsafeCheckpointError", "load_state_dict",
           "open_state", "read_metadata"]


def sniff(path: Path) -> str:
    """'zip' | 'pickle' | 'safetensors' from the first bytes; raises CheckpointError otherwise."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 8:
        raise CheckpointError(f"{path}: the file is empty or truncated ({len(head)} bytes); it is not a checkpoint")
    if head[:4] == b"PK\x03\x04":
        return "zip"
    # before the pickle test: a safetensors header length whose low byte is 0x80 starts with b"\x80" too
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < header_len <= 100_000_000:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a .safetensors header nor a torch pickle); "
        "expected a .safetensors or .ckpt/.pt/.pth/.bin file"
    )


def misnamed_pickle_error(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(f"{path}: named .safetensors but it is a torch pickle ({kind} format); rename it to .ckpt "
                           "(it is then read weights-only) or convert it to .safetensors with a tool you trust")


def _safetensors_error(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: cannot read this .safetensors file, it is truncated or corrupt ({error})")


# Training-time objects pickled next to the weights (RunwayML's SD-1.x .ckpt files hold
# ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``; some GroundingDINO releases hold their
# ``argparse.Namespace`` of training arguments). Their names are mapped to an inert local class, so the file
# loads without importing or running any of that code; everything else stays refused.
INERT_GLOBAL_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "numpy.", "argparse.Namespace")
_MAX_PLACEHOLDERS = 64


class TrainingObjectPlaceholder:
    """Stands in for a pickled training object (callback, numpy scalar); it only keeps the data given to it."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.__dict__["state"] = state


def _unsupported_global(error: Exception) -> Optional[str]:
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def _torch_load(path: Path, device) -> object:
    kind = sniff(path)
    if kind == "safetensors":
        raise CheckpointError(f"{path}: this is a safetensors file, not a pickle")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:  # torch.load would hand it to safetensors by its name
        raise misnamed_pickle_error(path, kind)
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: this torch checkpoint is truncated or corrupt (its zip directory is missing)")
    placeholders: list[str] = []
    while True:
        try:
            with torch.serialization.safe_globals([(TrainingObjectPlaceholder, name) for name in placeholders]):
                loaded = torch.load(path, map_location=device, weights_only=True, mmap=kind == "zip")
        except pickle.UnpicklingError as error:
            name = _unsupported_global(error)
            if name and name.startswith(INERT_GLOBAL_PREFIXES) and name not in placeholders \
                    and len(placeholders) < _MAX_PLACEHOLDERS:
                placeholders.append(name)
                continue
            lines = str(error).split("\n")
            detail = next((line.strip() for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])
            raise UnsafeCheckpointError(
                f"{path}: refused to load this pickle checkpoint: it contains Python objects that are not plain "
                f"weights ({detail}). Unpickling them could run arbitrary code, so it was not done. Use a "
                ".safetensors version of this model, or convert the file to .safetensors with a tool you trust."
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise CheckpointError(f"{path}: cannot read this torch checkpoint, it is truncated or corrupt ({error})") from None
        if placeholders:
            log.info("%s: training objects stored beside the weights were read as inert placeholders "
                     "(their code was not run): %s", path, ", ".join(placeholders))
        return loaded


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # LDM/Lightning files wrap the weights as {"state_dict": ...}, GroundingDINO's as {"model": ...}
    while isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("state_dict", "model")):
        obj = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of named tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if dropped:
        log.info("%s: ignoring %d non-tensor entries: %s", path, len(dropped), ", ".join(dropped[:8]))
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors; it is not a model checkpoint")
    return tensors


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return path


def load_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint file into a ``{name: tensor}`` dict on ``device``.

    Raises FileNotFoundError, :class:`CheckpointError` (truncated/corrupt/not a checkpoint) or
    :class:`UnsafeCheckpointError` (pickle needing non-allow-listed globals; never executed).
    """
    path = _existing(path)
    if sniff(path) == "safetensors":
        with _SafetensorsReader(path, str(device)) as reader:
            return {key: reader.get(key) for key in reader.keys()}
    state = _unwrap(_torch_load(path, device), path)
    for key, tensor in state.items():
        check_tensor(tensor, path, key)
    return state


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file ({} for pickles or when absent)."""
    path = _existing(path)
    if sniff(path) != "safetensors":
        return {}
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise _safetensors_error(path, error) from None
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


class StateReader:
    """Lazy, read-only view of a checkpoint: names, shapes and dtypes without loading, tensors one by one.

    Use as a context manager: ``with open_state(path) as state: for k in state.keys(): t = state.get(k)``.
    """

    path: Path
    metadata: dict[str, str]

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: self.shape(key) for key in self.keys()}

    def close(self) -> None:
        pass

    def __contains__(self, key: object) -> bool:
        return key in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __enter__(self) -> "StateReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _missing(self, key: str) -> KeyError:
        return KeyError(f"{self.path}: has no tensor named {key!r}")


class _SafetensorsReader(StateReader):
    def __init__(self, path: Path, device: str):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt", device=device)
            self._keys = list(self._file.keys())
            self.metadata = dict(self._file.metadata() or {})
        except Exception as error:
            raise _safetensors_error(path, error) from None

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._keys:
            raise self._missing(key)
        return tuple(self._file.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if key not in self._keys:
            raise self._missing(key)
        return _SAFETENSORS_DTYPES[self._file.get_slice(key).get_dtype()]

    def get(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise self._missing(key)
        try:
            tensor = self._file.get_tensor(key)
        except Exception as error:  # safetensors raises its own SafetensorError / OSError types
            raise _safetensors_error(self.path, error) from None
        return check_tensor(tensor, self.path, key)

    def close(self) -> None:
        self._file = None


class _MemoryReader(StateReader):
    """Fallback for pickles: torch.load (mmap'ed for zip files, so tensors are paged in on use)."""

    def __init__(self, path: Path, state: dict[str, torch.Tensor]):
        self.path, self._state, self.metadata = path, state, {}

    def keys(self) -> list[str]:
        return list(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensor(key).shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensor(key).dtype

    def _tensor(self, key: str) -> torch.Tensor:
        try:
            return self._state[key]
        except KeyError:
            raise self._missing(key) from None

    def get(self, key: str) -> torch.Tensor:
        return check_tensor(self._tensor(key), self.path, key)

    def close(self) -> None:
        self._state = {}


def open_state(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> StateReader:
    """Open a checkpoint for streaming (see :class:`StateReader`). Same errors as :func:`load_state_dict`."""
    path = _existing(path)
    if sniff(path) == "safetensors":
        return _SafetensorsReader(path, str(device))
    return _MemoryReader(path, _unwrap(_torch_load(path, device), path))
