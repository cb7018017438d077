"""Comparing a checkpoint's tensors with a model's: which are missing, unexpected, or of another shape.

Every loader of the pack checks this before copying a weight (transformers 5 and diffusers load wrong
names silently under ``strict=False``); each one words its own error from the :class:`KeyReport`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Mapping


@dataclasses.dataclass
class KeyReport:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, checkpoint shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({_grouped(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({_grouped(self.unexpected, limit)})")
        if self.mismatched:
            shown = ", ".join(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} with other shapes ({shown})")
        return "; ".join(parts) or "all keys match"


def _grouped(keys: list[str], limit: int) -> str:
    """Collapse block indices so repeated layers read as one pattern: 'down_blocks.*.attentions.*...' x16."""
    patterns = Counter(".".join("*" if part.isdigit() else part for part in key.split(".")) for key in keys)
    shown = [f"{pattern} x{count}" if count > 1 else pattern for pattern, count in patterns.most_common(limit)]
    if len(patterns) > limit:
        shown.append(f"... {len(patterns) - limit} more patterns")
    return ", ".join(shown)


def compare_keys(model_shapes: dict[str, tuple], file_shapes: dict[str, tuple]) -> KeyReport:
    missing = sorted(set(model_shapes) - set(file_shapes))
    unexpected = sorted(set(file_shapes) - set(model_shapes))
    mismatched = [
        (key, file_shapes[key], model_shapes[key])
        for key in sorted(set(model_shapes) & set(file_shapes))
        if tuple(file_shapes[key]) != tuple(model_shapes[key])
    ]
    return KeyReport(missing, unexpected, mismatched)


def shapes_of(tensors: Mapping) -> dict[str, tuple]:
    """``{name: shape}`` of a state dict (tensors, or anything with a ``shape``)."""
    return {key: tuple(value.shape) for key, value in tensors.items()}
