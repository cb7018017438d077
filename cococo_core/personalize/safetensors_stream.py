"""Write a ``.safetensors`` file one tensor at a time, in bounded memory.

Format (safetensors spec): 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` padded
with spaces to a multiple of 8, then the tensors' raw little-endian bytes back to back. Since
every dtype and shape is known before any weight is computed, the header is written first and
each tensor is appended as soon as it exists; the file is written under a unique staging name and
renamed only when complete (:mod:`cococo_core.output_files`), so a cancelled or failed merge never leaves a
truncated checkpoint, and two merges to one new file never blend.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..output_files import StagedFile, cleanup_on_error

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SafetensorsStreamWriter:
    """``entries`` = ``[(name, dtype, shape), ...]`` in file order; then :meth:`write` each, in that order.

    Staged through :class:`cococo_core.output_files.StagedFile`: a unique staging file that an interruption at any
    moment removes, a no-replace rename at :meth:`close` unless ``overwrite``, errors naming ``path``."""

    def __init__(self, path, entries: Sequence[Tuple[str, torch.dtype, Sequence[int]]],
                 metadata: Optional[Mapping[str, str]] = None, *, overwrite: bool = False):
        if sys.byteorder != "little":
            raise RuntimeError("the safetensors writer needs a little-endian machine")
        self.path = Path(path)
        header: Dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self._order = []
        offset = 0
        for name, dtype, shape in entries:
            if dtype not in _DTYPES:
                raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
            if name in header:
                raise ValueError(f"duplicate tensor name {name!r}")
            shape = [int(s) for s in shape]
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
            self._order.append((name, dtype, tuple(shape), size))
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        self._next = 0
        self._file = None
        self._staged = StagedFile(self.path, overwrite=overwrite)
        with cleanup_on_error(self.path, self.abort):
            self._file = os.fdopen(self._staged.create(), "wb")
            self._file.write(len(blob).to_bytes(8, "little"))
            self._file.write(blob)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise ValueError(f"{name}: every tensor of the header was already written")
        expected, dtype, shape, size = self._order[self._next]
        if name != expected or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"expected tensor {expected} {dtype} {shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        with cleanup_on_error(self.path, self.abort):
            self._file.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> Path:
        """Finish: every tensor must have been written; the file then appears under its real name."""
        if self._next != len(self._order):
            self.abort()
            raise ValueError(f"only {self._next} of {len(self._order)} tensors were written")
        with cleanup_on_error(self.path, self.abort):
            self._file.close()
            return self._staged.commit()

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._file is not None and not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()
        self._staged.discard()

    def __enter__(self) -> "SafetensorsStreamWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._file.closed:
            self.close()
