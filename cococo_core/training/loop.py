"""The one training loop (Hugging Face Accelerate), driven only through the :class:`~.recipe.Recipe` protocol.

One process, multi-GPU DDP, several nodes, DeepSpeed ZeRO / FSDP: whatever ``accelerate launch`` (and its config
file) sets up. What the loop does:

* builds the recipe's model, its AdamW parameter groups (frozen parameters must be ``requires_grad=False`` and in
  no group), an LR schedule stepped once per optimizer step, and wraps model + optimizer with ``prepare``;
* feeds each process its slice of every global micro-batch in the order of :mod:`.sampling` (so the result does
  not depend on the number of processes), adds ``batch["sample_seeds"]`` / ``batch["sample_indices"]`` (one per
  sample; recipes draw per-sample randomness from these) and calls ``recipe.loss(model, batch, generator)`` under
  autocast, with ``generator`` seeded from ``(seed, micro-step, rank)``;
* gradient accumulation (``accelerator.accumulate``), gradient clipping, optional EMA, logging (always
  ``metrics.jsonl``; TensorBoard / W&B when asked), a progress bar;
* checkpoints every N steps into ``output_dir/checkpoints/step-XXXXXXXX``: optimizer, RNG states (Accelerate),
  the *trained* tensors only (``trainable_0.safetensors``; frozen weights are rebuilt by the recipe), EMA, and
  ``train_state.json`` (step, micro-step = data position). ``resume="latest"`` or a folder continues exactly;
* validation samples every N steps (``recipe.validate`` on the main process, EMA weights when EMA is on);
* at the end ``recipe.save_pretrained`` into ``output_dir/weights/step-XXXXXXXX`` (never over existing files),
  staged as a whole folder (:func:`cococo_core.output_files.staged_folder`).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..output_files import staged_file, staged_folder, write_json
from .config import TrainConfig
from .ema import EMAWeights
from .launch import check_launch
from .recipe import Recipe
from .registry import resolve_recipe
from .sampling import RankBatchSampler, mixed_seed, sample_seed

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
STATE_FILE = "train_state.json"
EMA_FILE = "ema.safetensors"
WEIGHTS_DIR = "weights"
ANY_FILE = re.compile(r".+")  # every file of an export folder is the export's


@dataclass
class TrainResult:
    """What a finished (or stopped) run did."""

    step: int
    micro_step: int
    losses: list[float] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)


# -- data --------------------------------------------------------------------------------------------------------
class _EpochIndexed(torch.utils.data.Dataset):
    """Reads ``(epoch, index)`` items: tells an epoch-aware dataset its epoch, returns the sample with its seed."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self._epoch = dataset, seed, None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        epoch, index = item
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._epoch = epoch
        return sample_seed(self.seed, epoch, index), index, self.dataset[index]


class _Collate:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        batch = dict(self.collate([sample for _, _, sample in items]))
        batch["sample_seeds"] = torch.tensor([seed for seed, _, _ in items], dtype=torch.int64)
        batch["sample_indices"] = torch.tensor([index for _, index, _ in items], dtype=torch.int64)
        return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; everything else as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


# -- checkpoints --------------------------------------------------------------------------------------------------
def trainable_named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir()
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(config: TrainConfig) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "latest":
        found = list_checkpoints(Path(config.output_dir))
        if not found:
            log.info("resume=latest: no checkpoint in %s yet; starting from scratch", config.output_dir)
            return None
        return found[-1]
    path = Path(config.resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume: {path} is not a checkpoint folder (no {STATE_FILE})")
    return path


def _install_weight_hooks(accelerator) -> None:
    """Accelerate saves the whole model by default; here only the trained tensors are written and read back
    (the frozen ones come from the base weights the recipe loads). DeepSpeed / FSDP keep their own formats."""
    from safetensors.torch import save_file

    from ..checkpoints.safe_load import load_state_dict

    def save_hook(models, weights, output_dir):
        if len(weights) != len(models):
            return
        if accelerator.is_main_process:
            for i, model in enumerate(models):
                named = trainable_named_parameters(accelerator.unwrap_model(model))
                tensors = {k: v.detach().contiguous().cpu() for k, v in named.items()}
                with staged_file(Path(output_dir) / f"trainable_{i}.safetensors", overwrite=True) as temporary:
                    save_file(tensors, str(temporary))
        weights.clear()

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            path = Path(input_dir) / f"trainable_{i}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the checkpoint has no trained weights")
            named = trainable_named_parameters(accelerator.unwrap_model(model))
            state = load_state_dict(path)
            if set(state) != set(named):
                raise ValueError(f"{path}: trained tensors differ from this model's "
                                 f"({len(set(named) - set(state))} missing, {len(set(state) - set(named))} unexpected)")
            with torch.no_grad():
                for name, param in named.items():
                    param.copy_(state[name])
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# -- the loop -----------------------------------------------------------------------------------------------------
class Trainer:
    """Build with a config (and optionally a recipe object instead of ``config.recipe``); :meth:`run` trains."""

    def __init__(self, config: TrainConfig, recipe: Recipe | None = None, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.config = config
        self.output_dir = Path(config.output_dir)
        self.trackers = [name for name in config.log_with if _tracker_available(name)]
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=self.trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
        )
        check_launch(self.accelerator.num_processes)
        set_seed(config.seed)
        self.recipe = recipe if recipe is not None else resolve_recipe(config.recipe)
        check_recipe(self.recipe)
        self.recipe_config = config.recipe_config()
        self._build()

    # building ------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        config, accelerator = self.config, self.accelerator
        model = self.recipe.build_model(self.recipe_config)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.recipe, model)
        groups = self.recipe.parameter_groups(model, self.recipe_config)
        check_parameter_groups(model, groups)
        for group in groups:
            group.setdefault("lr", config.learning_rate)
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_epsilon, weight_decay=config.weight_decay)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = _lr_scheduler(config, self.optimizer)  # stepped here, once per optimizer step
        unwrapped = accelerator.unwrap_model(self.model)
        self.trainable = trainable_named_parameters(unwrapped)
        self.ema = EMAWeights(self.trainable, config.ema_decay) if config.ema else None
        _install_weight_hooks(accelerator)
        self.dataset = self.recipe.build_dataset(self.recipe_config, "train")
        self.step, self.micro_step = 0, 0

    # checkpoints ---------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        folder = self.output_dir / CHECKPOINT_DIR / f"step-{self.step:08d}"
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(folder))
        if self.accelerator.is_main_process:
            if self.ema is not None:
                self.ema.save(folder / EMA_FILE)
            state = {"step": self.step, "micro_step": self.micro_step, "num_processes": self.accelerator.num_processes,
                     "train_batch_size": self.config.train_batch_size, "seed": self.config.seed}
            write_json(folder / STATE_FILE, state, overwrite=True, indent=1)
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()
        return folder

    def _rotate_checkpoints(self) -> None:
        limit = self.config.checkpoints_total_limit
        if not limit:
            return
        for old in list_checkpoints(self.output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        global_batch = self.config.train_batch_size * self.accelerator.num_processes
        saved_batch = state["train_batch_size"] * state["num_processes"]
        if saved_batch != global_batch or state["seed"] != self.config.seed:
            log.warning("resuming with another global micro-batch (%d, was %d) or seed: the data order changes",
                        global_batch, saved_batch)
        self.accelerator.load_state(str(folder))
        self.step, self.micro_step = int(state["step"]), int(state["micro_step"])
        if self.ema is not None:
            if (folder / EMA_FILE).is_file():
                self.ema.load(folder / EMA_FILE)
            else:
                log.warning("%s has no EMA weights; the EMA restarts from the resumed weights", folder)
        with warnings.catch_warnings():  # fast-forward of the schedule: no optimizer step belongs to these
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.step):
                self.scheduler.step()
        log.info("resumed from %s at step %d (micro-step %d)", folder, self.step, self.micro_step)

    # data ----------------------------------------------------------------------------------------------------
    def _loader(self):
        config, accelerator = self.config, self.accelerator
        sampler = RankBatchSampler(len(self.dataset), config.train_batch_size, accelerator.num_processes,
                                   accelerator.process_index, config.seed, start=self.micro_step,
                                   max_epochs=config.max_epochs)
        return torch.utils.data.DataLoader(
            _EpochIndexed(self.dataset, config.seed), batch_sampler=sampler, collate_fn=_Collate(self.recipe.collate),
            num_workers=config.dataloader_workers, persistent_workers=False,
        )

    def _validation_batch(self):
        try:
            dataset = self.recipe.build_dataset(self.recipe_config, "validation")
        except (FileNotFoundError, ValueError, NotImplementedError) as error:
            log.info("no validation split (%s); validating on the first training samples", error)
            dataset = self.dataset
        count = min(self.config.validation_samples, len(dataset))
        items = [(sample_seed(self.config.seed, 0, i), i, dataset[i]) for i in range(count)]
        return _Collate(self.recipe.collate)(items)

    # running -------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        resume = resolve_resume(config)
        if resume is not None:
            self.load_checkpoint(resume)
        result = TrainResult(self.step, self.micro_step)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.output_dir / "config.json", config.to_dict(), overwrite=True, indent=1, default=str)
        if self.trackers:
            accelerator.init_trackers(config.project_name, config=_flat_config(config))
        validation_batch = None
        if config.validate_every and hasattr(self.recipe, "validate") and accelerator.is_main_process:
            validation_batch = self._validation_batch()
        progress = _progress(accelerator, self.total_steps(), self.step)
        window: list[dict[str, torch.Tensor]] = []
        started = time.perf_counter()
        self.model.train()
        for batch in self._loader():
            if self.step >= config.max_steps:
                break
            batch = to_device(batch, accelerator.device)
            generator = torch.Generator(device=accelerator.device)
            generator.manual_seed(mixed_seed(config.seed, 2, self.micro_step, accelerator.process_index))
            with accelerator.accumulate(self.model):
                with accelerator.autocast():
                    loss, parts = self.recipe.loss(self.model, batch, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(list(self.trainable.values()), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.micro_step += 1
            window.append({"loss": loss.detach().float(), **{k: torch.as_tensor(v).detach().float().to(loss.device)
                                                             for k, v in parts.items()}})
            if not accelerator.sync_gradients:
                continue
            self.step += 1
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
            metrics = self._reduce(window)
            window = []
            result.losses.append(metrics["loss"])
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                metrics.update(lr=self.scheduler.get_last_lr()[0], step=self.step,
                               seconds=time.perf_counter() - started)
                self._log(metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                result.checkpoints.append(self.save_checkpoint())
            if validation_batch is not None and self.step % config.validate_every == 0:
                result.validation += self.validate(validation_batch)
        progress.close()
        result.step, result.micro_step = self.step, self.micro_step
        result.saved = self.save_final()
        accelerator.end_training()
        return result

    def total_steps(self) -> int:
        """Optimizer steps this run ends at: ``max_steps``, or fewer when ``max_epochs`` ends the data first."""
        if self.config.max_epochs is None:
            return self.config.max_steps
        per_epoch = len(self.dataset) // (self.config.train_batch_size * self.accelerator.num_processes)
        return min(self.config.max_steps, self.config.max_epochs * per_epoch // self.config.gradient_accumulation_steps)

    def _reduce(self, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Mean of each logged value over the micro-steps of this optimizer step and over the processes."""
        names = list(window[0])
        stacked = torch.stack([torch.stack([w[n] for n in names]) for w in window]).mean(0)
        stacked = self.accelerator.reduce(stacked, reduction="mean")
        return {name: float(value) for name, value in zip(names, stacked.tolist())}

    def _log(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=self.step)

    def validate(self, batch) -> list[Path]:
        folder = self.output_dir / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast(), \
                    (self.ema.swapped_in() if self.ema is not None else _nothing()):
                files = self.recipe.validate(model, to_device(batch, self.accelerator.device), folder, self.step)
        finally:
            model.train()
        return list(files or [])

    def weights_dir(self) -> Path:
        """Where the exported weights of the current step go: ``output_dir/weights/step-XXXXXXXX``."""
        return self.output_dir / WEIGHTS_DIR / f"step-{self.step:08d}"

    def save_final(self) -> list[Path]:
        self.accelerator.wait_for_everyone()
        saved: list[Path] = []
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            use_ema = self.ema is not None and self.config.ema_export
            folder = self.weights_dir()
            if folder.exists() and any(folder.iterdir()):
                log.info("%s exists already (this step was exported before); not written again", folder)
                return sorted(p for p in folder.rglob("*") if p.is_file())
            folder.parent.mkdir(parents=True, exist_ok=True)
            # staged as a whole: an interrupted export leaves no half folder that a later run would take as done
            with (self.ema.swapped_in() if use_ema else _nothing()), staged_folder(folder, ANY_FILE) as staging:
                written = list(self.recipe.save_pretrained(model, staging))
            saved = [folder / Path(path).relative_to(staging) for path in written]
        self.accelerator.wait_for_everyone()
        return saved


def train(config: TrainConfig, recipe: Recipe | None = None) -> TrainResult:
    """Train with ``config`` (the recipe named by ``config.recipe`` unless one is given)."""
    return Trainer(config, recipe).run()


# -- helpers ------------------------------------------------------------------------------------------------------
class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


REQUIRED_RECIPE_MEMBERS = ("name", "build_model", "parameter_groups", "build_dataset", "collate", "loss",
                           "save_pretrained")


def check_recipe(recipe) -> None:
    """The members of :class:`Recipe` a recipe must have (``validate`` is optional)."""
    missing = [member for member in REQUIRED_RECIPE_MEMBERS if not hasattr(recipe, member)]
    if missing:
        raise TypeError(f"{type(recipe).__name__} is not a training recipe: it lacks {missing} (see training/recipe.py)")


def enable_gradient_checkpointing(recipe, model: torch.nn.Module) -> None:
    """The recipe's ``enable_gradient_checkpointing(model)`` if it has one, else the model's own method."""
    if hasattr(recipe, "enable_gradient_checkpointing"):
        recipe.enable_gradient_checkpointing(model)
    elif hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    else:
        raise ValueError(f"gradient_checkpointing is on, but neither the recipe {recipe.name!r} nor its model "
                         "offers enable_gradient_checkpointing()")


def check_parameter_groups(model: torch.nn.Module, groups: list[dict]) -> None:
    """Every trainable parameter in exactly one group, and no frozen one in any."""
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    seen: dict[int, str] = {}
    for group in groups:
        for param in group["params"]:
            if not param.requires_grad:
                raise ValueError(f"parameter group {group.get('name', '?')!r} holds a frozen parameter")
            if id(param) in seen:
                raise ValueError(f"a parameter is in two groups ({seen[id(param)]!r}, {group.get('name', '?')!r})")
            seen[id(param)] = group.get("name", "?")
    left = sorted(name for pid, name in trainable.items() if pid not in seen)
    if left:
        raise ValueError(f"{len(left)} trainable parameters are in no optimizer group, e.g. {left[:3]}")
    if not seen:
        raise ValueError("the recipe's model has nothing to train (no parameter with requires_grad=True)")


def _lr_scheduler(config: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=config.max_steps)


def _tracker_available(name: str) -> bool:
    import importlib.util

    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
    if importlib.util.find_spec(module) is None and not (name == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        log.warning("log_with=%s, but the %s package is not installed (pip install %s); logging to metrics.jsonl only",
                    name, module, module)
        return False
    return True


def _flat_config(config: TrainConfig) -> dict[str, Any]:
    flat = {}
    for key, value in config.to_dict().items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, item in items:
            name = f"{key}.{sub}" if sub else key
            flat[name] = item if isinstance(item, (int, float, str, bool)) else str(item)
    return flat


def _progress(accelerator, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", disable=not accelerator.is_local_main_process,
                dynamic_ncols=True)


__all__ = ["TrainResult", "Trainer", "train", "list_checkpoints", "check_parameter_groups"]
