"""Progress and cancellation hooks shared by every long-running job (sampling, masking, merging).

A job takes ``callback(step, total, latents_or_None)`` called after each unit of work and
``cancel()`` polled before each one. ``cancel`` either returns True (the job then raises
:class:`Cancelled`) or raises its own exception (ComfyUI's interrupt does), which propagates as is.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

StepCallback = Callable[[int, int, Optional[torch.Tensor]], None]
CancelCheck = Callable[[], bool]


class Cancelled(RuntimeError):
    """The user cancelled a running job; nothing it produced so far is returned."""


def check_cancelled(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def report(callback: StepCallback | None, step: int, total: int, value: torch.Tensor | None = None) -> None:
    if callback is not None:
        callback(step, total, value)
