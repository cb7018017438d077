"""LGVI and LGVI-I as :class:`cococo_core.training.recipe.Recipe` s for the shared training loop.

Recipe config keys (besides the loop's own):

* ``pretrained`` - LGVI: a MagicBrush / InstructPix2Pix diffusers folder (inflated) or an LGVI folder
  (fine-tuning); LGVI-I: the LGVI (or LGVI-I) checkpoint it starts from.
* ``in_channels`` (LGVI from 2-D only) - 8 = concatenated video latent (default for an 8-channel source),
  4 = paper eq. 2 (zero-initialised ``condition_conv_in``).
* ``chat_model``, ``chat_clip``, ``chat_weights``, ``save_vocab_rows`` (LGVI-I) - the llava-hf folder (or
  original LLaVA layout + CLIP folder), an optional ``llava_weights.pth`` to start from, and how many
  embedding rows to save (e.g. 32000 for the official code's llava-v1.5-7b; default: all).
* ``learning_rates`` - ``unet`` 3e-5, ``mask_decoder`` 1e-4, ``mllm`` 1e-4 (paper §5.1).
* ``loss_weights`` - ``diffusion`` 1, ``mask`` 0.001, ``lm`` 0.1; ``mask_loss_weighting`` none|quadratic;
  ``condition_dropout`` - ``text`` / ``video`` 0.05.
* ``dtype`` - float32 (default; the loop's ``mixed_precision`` adds autocast) or float64.
* the loop's ``gradient_checkpointing`` recomputes U-Net blocks (and chat layers) in the backward pass.
* ``data`` - ``samples`` (.jsonl, simple layout) and/or ``rovi_json`` (+ ``rovi_root``, ``rovi_fields``),
  ``num_frames`` 24, ``width`` 512, ``height`` 320, ``stride`` 1, ``video_batch``, ``image_batch``,
  ``video_image_ratio`` [3, 1], ``seed``. Dataset items are whole batch groups; the loop's ``train_batch_size``
  counts groups per process (each group's loss is computed apart, then averaged).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..loop import check_parameter_groups
from .data import OFFICIAL_FRAMES, VIDEO_IMAGE_RATIO, MixedBatches, RemovalSamples, collate, read_records
from .model import LGVIITrainingModel, LGVITrainingModel
from .objective import LossSettings
from .saving import save_lgvi_folder, save_lgvi_i_folder

LEARNING_RATES = {"unet": 3e-5, "mask_decoder": 1e-4, "mllm": 1e-4}
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # float64: exact comparisons (tests)


def _unwrap(model):
    return getattr(model, "module", model)


def _learning_rates(config: Mapping[str, Any]) -> dict[str, float]:
    given = dict(config.get("learning_rates") or {})
    unknown = set(given) - set(LEARNING_RATES)
    if unknown:
        raise ValueError(f"unknown learning_rates {sorted(unknown)}; expected {sorted(LEARNING_RATES)}")
    return {name: float(given.get(name, default)) for name, default in LEARNING_RATES.items()}


def _pretrained(config: Mapping[str, Any]) -> Path:
    if not config.get("pretrained"):
        raise ValueError("set 'pretrained': the MagicBrush/InstructPix2Pix or LGVI folder to start from")
    path = Path(config["pretrained"])
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained folder not found: {path}")
    return path


class LGVIRecipe:
    """Referring removal: U-Net (lr 3e-5) + mask decoder (lr 1e-4); L = L_diff + 0.001 L_mask."""

    name = "lgvi"

    def build_model(self, config: Mapping[str, Any]) -> torch.nn.Module:
        model = LGVITrainingModel.from_pretrained(_pretrained(config), in_channels=config.get("in_channels"),
                                                  settings=LossSettings.from_config(config))
        return self._finish(model, config)

    @staticmethod
    def _finish(model, config):
        dtype = config.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} (mixed precision is the loop's mixed_precision), got {dtype!r}")
        return model.to(DTYPES[dtype]).train()

    def parameter_groups(self, model: torch.nn.Module, config: Mapping[str, Any]) -> list[dict]:
        model = _unwrap(model)
        rates = _learning_rates(config)
        named = dict(model.unet.named_parameters())
        groups = [
            {"name": "unet", "lr": rates["unet"], "params": [p for n, p in named.items() if not n.startswith("mask_decoder.")]},
            {"name": "mask_decoder", "lr": rates["mask_decoder"], "params": [p for n, p in named.items() if n.startswith("mask_decoder.")]},
        ]
        groups += self._extra_groups(model, rates)
        groups = [group for group in groups if group["params"]]
        check_parameter_groups(model, groups)
        return groups

    def _extra_groups(self, model, rates) -> list[dict]:
        return []

    def build_dataset(self, config: Mapping[str, Any], split: str = "train") -> torch.utils.data.Dataset:
        data = dict(config.get("data") or {})
        if split != "train":
            data = {**data, **dict(data.get(split) or {})}
        seed = int(data.get("seed", config.get("seed", 0)))
        samples = RemovalSamples(
            read_records(data), num_frames=int(data.get("num_frames", OFFICIAL_FRAMES)),
            size=(int(data.get("width", 512)), int(data.get("height", 320))), stride=int(data.get("stride", 1)), seed=seed,
        )
        return MixedBatches(samples, video_batch=int(data.get("video_batch", 1)), image_batch=int(data.get("image_batch", 1)),
                            ratio=tuple(data.get("video_image_ratio", VIDEO_IMAGE_RATIO)), seed=seed)

    def collate(self, samples: list) -> dict:
        return collate(samples)

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return model(batch, generator)

    def save_pretrained(self, model: torch.nn.Module, directory: Path) -> list[Path]:
        return save_lgvi_folder(_unwrap(model), directory)

    def validate(self, model: torch.nn.Module, batch: dict, directory: Path, step: int) -> list[Path]:
        """The removal result and predicted mask of the batch's first sample (a few sampling steps)."""
        from ...video_io import write_video  # noqa: PLC0415

        model = _unwrap(model)
        group = batch["groups"][0]
        frames = ((group["video"][0].permute(1, 2, 3, 0).float() + 1) / 2).clamp(0, 1).cpu()
        result = self._remove(model, frames, group)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = [write_video(directory / f"step{step:07d}.mp4", result.frames)]
        if result.mask is not None:
            out.append(write_video(directory / f"step{step:07d}_mask.mp4", result.mask[..., None].expand(*result.mask.shape, 3)))
        return out

    def _remove(self, model, frames, batch):
        was_training = model.training
        model.eval()
        try:
            return model.pipeline()(frames, batch["expression"][0], num_inference_steps=10, seed=0)
        finally:
            model.train(was_training)


class LGVIIRecipe(LGVIRecipe):
    """Interactive removal: + chat embeddings, projector and transfer head (lr 1e-4); L += 0.1 L_lm."""

    name = "lgvi-i"

    def build_model(self, config: Mapping[str, Any]) -> torch.nn.Module:
        if not config.get("chat_model"):
            raise ValueError("LGVI-I needs 'chat_model': a llava-hf folder (e.g. llava-hf/llava-1.5-7b-hf or a small "
                             "llava-interleave-qwen-0.5b-hf), or the original LLaVA layout with 'chat_clip'")
        model = LGVIITrainingModel.from_pretrained(
            _pretrained(config), chat_model=config["chat_model"], clip_path=config.get("chat_clip"),
            chat_weights=config.get("chat_weights"), settings=LossSettings.from_config(config),
        )
        if config.get("save_vocab_rows"):
            model.vocab_rows = int(config["save_vocab_rows"])
        return self._finish(model, config)

    def _extra_groups(self, model, rates) -> list[dict]:
        params = [model.chat_model.get_input_embeddings().weight, *model.projector.parameters(), *model.transfer_head.parameters()]
        return [{"name": "mllm", "lr": rates["mllm"], "params": params}]

    def save_pretrained(self, model: torch.nn.Module, directory: Path) -> list[Path]:
        return save_lgvi_i_folder(_unwrap(model), directory)

    def _remove(self, model, frames, batch):
        was_training = model.training
        model.eval()
        try:
            chat = model.chat()
            session = chat.start(frames[0])
            turn = chat.ask(session, batch["request"][0], max_new_tokens=64)
            return model.pipeline()(frames, context=turn.context, num_inference_steps=10, seed=0)
        finally:
            model.train(was_training)
