"""Exponential moving average of the trained parameters (float32 shadow copies).

    shadow <- d_k · shadow + (1 - d_k) · θ,   d_k = min(decay, (1 + k) / (10 + k))   (k = optimizer steps so far)

The warm-up ``(1 + k) / (10 + k)`` is the usual one (diffusers ``EMAModel``), so early averages are not dominated
by the initial weights. Saved and restored as a ``.safetensors`` file (step count in its metadata).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch


class EMAWeights:
    def __init__(self, named_parameters: dict[str, torch.nn.Parameter], decay: float):
        self.parameters = dict(named_parameters)
        self.decay = float(decay)
        self.steps = 0
        self.shadow = {name: p.detach().float().clone() for name, p in self.parameters.items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, param in self.parameters.items():
            self.shadow[name].mul_(decay).add_(param.detach().float(), alpha=1.0 - decay)
        self.steps += 1

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the EMA weights inside the block and its own weights again after it."""
        saved = {name: p.detach().clone() for name, p in self.parameters.items()}
        with torch.no_grad():
            for name, param in self.parameters.items():
                param.copy_(self.shadow[name].to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.parameters.items():
                    param.copy_(saved[name])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from ..output_files import staged_file

        with staged_file(path, overwrite=True) as temporary:
            save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(temporary),
                      metadata={"steps": str(self.steps), "decay": repr(self.decay)})

    def load(self, path: Path) -> None:
        from ..checkpoints.safe_load import open_state

        with open_state(path) as f:
            missing = sorted(set(self.shadow) - set(f.keys()))
            if missing:
                raise ValueError(f"{path}: EMA weights lack {len(missing)} trained tensors, e.g. {missing[:3]}")
            for name in self.shadow:
                self.shadow[name] = f.get(name).float()
            self.steps = int(f.metadata.get("steps", 0))
