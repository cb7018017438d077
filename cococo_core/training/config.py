"""The training configuration: one flat dataclass of loop options plus the recipe's own ``options``.

A config file is JSON (``.json``) or YAML (``.yaml``/``.yml``) with the fields of :class:`TrainConfig`; the
recipe-specific settings (model paths, data, resolution, mask probabilities, ...) go under ``options``. Every
field can be overridden on the command line (``--set key=value``, ``options.key=value`` for recipe options).

The recipe receives :meth:`TrainConfig.recipe_config`: its ``options`` with the loop fields added under their own
names (``seed``, ``mixed_precision``, ``gradient_checkpointing``, ``output_dir``, ...), so it can e.g. cast frozen
weights to the mixed-precision dtype. Recipe options may not reuse a loop field's name.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

MIXED_PRECISION = ("no", "fp16", "bf16")
LOGGERS = ("tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Options of the shared training loop (Hugging Face Accelerate)."""

    recipe: str = "cococo"
    """a registered recipe name (``cococo``) or ``package.module:Class``"""
    output_dir: str = "runs/cococo"
    seed: int = 0
    max_steps: int = 1000
    """optimizer steps (each = ``gradient_accumulation_steps`` micro-batches on every process)"""
    max_epochs: int | None = None
    """stop after this many passes over the data (the paper: 1), whichever of the two comes first"""
    train_batch_size: int = 1
    """samples per process per micro-batch; the effective batch is this x processes x accumulation"""
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    learning_rate: float = 1e-4
    """default ``lr`` of parameter groups that do not set their own"""
    lr_scheduler: str = "constant"
    """any ``diffusers.optimization.get_scheduler`` name (``constant``, ``constant_with_warmup``, ``cosine``...)"""
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    ema: bool = False
    ema_decay: float = 0.9999
    ema_export: bool = True
    """with ``ema``, the exported weights (``save_pretrained``) are the EMA ones"""
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 3
    resume: str | None = None
    """``latest`` (newest checkpoint in ``output_dir/checkpoints``), a checkpoint folder, or none"""
    validate_every: int = 0
    validation_samples: int = 1
    log_every: int = 1
    log_with: list[str] = field(default_factory=list)
    """any of ``tensorboard``, ``wandb`` (metrics always go to ``output_dir/metrics.jsonl`` as well)"""
    project_name: str = "cococo-training"
    dataloader_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    """the recipe's own settings"""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        for name in ("max_steps", "train_batch_size", "gradient_accumulation_steps", "log_every",
                     "validation_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "validate_every", "lr_warmup_steps", "dataloader_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0 switches it off), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        unknown = [name for name in self.log_with if name not in LOGGERS]
        if unknown:
            raise ValueError(f"log_with: unknown logger(s) {unknown}; choose from {LOGGERS}")
        clash = sorted(set(self.options) & {f.name for f in dataclasses.fields(self)})
        if clash:
            raise ValueError(f"recipe options may not reuse loop option names: {clash}")

    def recipe_config(self) -> dict[str, Any]:
        """What the recipe methods receive: ``options`` plus the loop fields (see the module docstring)."""
        loop = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**self.options, **loop}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; recipe settings go under 'options'")
        return cls(**dict(data))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # accelerate depends on PyYAML

        data = yaml.safe_load(text) or {}
    elif path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"{path}: a training config is a .json, .yaml or .yml file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of option names to values")
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, null, lists), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` / ``options.key=value`` overrides on a config dict (a copy is returned)."""
    data = {**data, "options": dict(data.get("options") or {})}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set wants key=value, got {item!r}")
        if key.startswith("options."):
            data["options"][key[len("options."):]] = parse_value(value)
        else:
            data[key] = parse_value(value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    data = read_config_file(path) if path is not None else {}
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))
