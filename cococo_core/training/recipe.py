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
        """Stack samples into one batch (a dict of tensors and lists).

        The loop adds ``batch["sample_seeds"]`` and ``batch["sample_indices"]`` (int64, one per sample): a seed
        that depends only on (config seed, epoch, dataset index), so per-sample randomness drawn from it is the
        same however the global batch is split over processes. A dataset with ``set_epoch(epoch)`` is told the
        epoch before its samples are read (also in data-loader workers)."""

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The total loss of a batch and its named parts (floats or 0-d tensors) for logging.

        All randomness (timesteps, noise, dropout of prompts) is drawn from ``generator`` (seeded from the config
        seed, the micro-step and the process index) or from ``batch["sample_seeds"]``, so that a resumed run
        reproduces the same steps; drawing per sample from ``sample_seeds`` also makes an N-process run equal to a
        one-process run with the same global batch. The loop calls this under ``accelerator.autocast()`` and
        must see the forward pass go through ``model`` (the wrapped module) for DDP to synchronise gradients."""

    def save_pretrained(self, model: torch.nn.Module, directory: Path) -> list[Path]:
        """Write the trained weights in the official layout(s) the pack loads; returns the files written."""

    def validate(self, model: torch.nn.Module, batch: dict, directory: Path, step: int) -> list[Path]:
        """Optional: write validation samples (videos) for ``batch``; returns the files written."""
