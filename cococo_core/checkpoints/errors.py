"""The errors raised when a checkpoint file cannot be used. Every message names the file."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or not what was expected. The message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint asked for a Python object outside torch's weights-only allow-list."""


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint tensor holds NaN or infinite values. The message names the file and the tensor."""
