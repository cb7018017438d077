"""The contract between the one training loop and a model recipe.

``cococo_core.training.loop`` (Hugging Face Accelerate: DDP / FSDP / DeepSpeed, mixed precision, gradient
accumulation, checkpoint save/resume, logging) knows nothing about CoCoCo or LGVI. Each trainable system is a
``Recipe``: it builds the model (frozen parts with ``requires_grad=False``), names its optimizer parameter groups
(each with its own ``lr``), provides the dataset and collate function, computes the loss of one batch, and saves
the trained weights in the layouts the pack's loaders (and the official code) read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import torch


@runtime_checkable
class Recipe(Protocol):
    """One trainable system (CoCoCo motion modules, LGVI, LGVI-I) for the shared training loop."""

    name: str

    def build_model(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """The module the loop wraps with ``accelerator.prepare``; frozen parts have ``requires_grad=False``."""

    def parameter_groups(self, model: torch.nn.Module, config: Mapping[str, Any]) -> list[dict]:
        """``torch.optim.AdamW`` parameter groups, each ``{"params": [...], "lr": float, "name": str}``."""

    def build_dataset(self, config: Mapping[str, Any], split: str = "train") -> torch.utils.data.Dataset:
        """A map-style dataset (so the loop can shard it, resume at a position and keep the same order)."""

    def collate(self, samples: list) -> dict:
        """Stack samples into one batch (a dict of tensors and lists)."""

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The total loss of a batch and its named parts (floats or 0-d tensors) for logging.

        All randomness (timesteps, noise, dropout of prompts) is drawn from ``generator`` so that a resumed
        run and a multi-process run reproduce the same steps."""

    def save_pretrained(self, model: torch.nn.Module, directory: Path) -> list[Path]:
        """Write the trained weights in the official layout(s) the pack loads; returns the files written."""

    def validate(self, model: torch.nn.Module, batch: dict, directory: Path, step: int) -> list[Path]:
        """Optional: write validation samples (videos) for ``batch``; returns the files written."""
