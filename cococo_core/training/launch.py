"""Did the launcher start the processes that were asked for? (No torch / accelerate import.)

* ``WORLD_SIZE`` > 1 (torchrun started several processes) but the process group has one: no GPU and no gloo;
* ``accelerate launch --cpu --num_processes N`` without ``mpirun`` starts ONE process (accelerate 1.x): its
  simple launcher sets ``MASTER_ADDR`` only when more than one process or machine was asked for, and torchrun
  (which does start N) also sets ``WORLD_SIZE``; ``MASTER_ADDR`` without ``WORLD_SIZE`` and one process means
  the other N - 1 were never started. Training would then run with 1/N of the configured global batch.
"""
from __future__ import annotations

import os
from typing import Mapping

CPU_HINT = ("on CPU-only machines start the processes with ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
            "--num_processes N ... (gloo); `accelerate launch --cpu --num_processes N` needs mpirun")


class LaunchError(ValueError):
    """The processes that run are not the processes that were asked for."""


def launch_mismatch(num_processes: int, environ: Mapping[str, str] | None = None) -> str | None:
    """Why the ``num_processes`` processes that run are not what was launched, or None when they are."""
    environ = os.environ if environ is None else environ
    launched = int(environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and num_processes == 1:
        return f"{launched} processes were launched but only one takes part (no GPU found); " + CPU_HINT
    simple_launcher = "MASTER_ADDR" in environ and "ACCELERATE_MIXED_PRECISION" in environ
    if num_processes == 1 and simple_launcher and "WORLD_SIZE" not in environ:
        return ("accelerate launch was asked for several processes (it set MASTER_ADDR) but started only this one; "
                + CPU_HINT)
    return None


def check_launch(num_processes: int, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`LaunchError` on a :func:`launch_mismatch` (before any model is built)."""
    reason = launch_mismatch(num_processes, environ)
    if reason:
        raise LaunchError(reason + ". Training alone would use a fraction of the configured global batch; for one "
                          "process run python -m cococo_core train (or accelerate launch --num_processes 1)")
