"""CLIP for the CS and TC metrics, loaded from local files only.

Formats:

* a **transformers folder** (``config.json`` + weights): a full ``CLIPModel`` (``model_type: clip``, e.g.
  ``openai/clip-vit-large-patch14``, the text encoder of SD-1.5; image and text towers) or a vision-only
  ``CLIPVisionModelWithProjection`` (``clip_vision_model``);
* a **single file** as ComfyUI keeps in ``models/clip_vision/`` (``.safetensors``, or a pickle read
  weights-only): transformers key names ``vision_model.*`` + ``visual_projection.weight``, optionally with a
  ``vision_model.``-less prefix stripped, and optionally ``text_model.*`` + ``text_projection.weight`` (the
  full OpenAI file), in which case CS works too given a tokenizer folder. The architecture is read from the
  tensor shapes: width, patch size, image size (from the position-embedding count), depth, MLP width,
  projection size; the head count and activation, which shapes do not carry, follow the released CLIP
  models (ViT-B: 12 heads, ViT-L: 16, both ``quick_gelu``; the OpenCLIP ViT-H/bigG widths 1280/1664:
  16 heads, ``gelu``; otherwise 64 channels per head).

Images are prepared as ``CLIPImageProcessor`` does: bicubic resize of the shorter side to the model's
input size, centre crop, scale to [0, 1], normalise with the OpenAI CLIP mean and standard deviation.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .frames import as_frames

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# width -> (heads, activation) of the released CLIP image towers (OpenAI ViT-B/L, OpenCLIP ViT-H/bigG)
VISION_HEADS = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}
# width -> heads of the released text towers (ViT-B/32, ViT-L/14, ViT-H, ViT-bigG)
TEXT_HEADS = {512: 8, 768: 12, 1024: 16, 1280: 20}
TEXT_ACT = {1024: "gelu", 1280: "gelu"}


@dataclass
class ClipModel:
    """The CLIP towers used by the metrics. ``text_model``/``tokenizer`` are None for a vision-only model."""

    vision_model: torch.nn.Module
    visual_projection: torch.nn.Module
    image_size: int
    text_model: torch.nn.Module | None = None
    text_projection: torch.nn.Module | None = None
    tokenizer: object | None = None
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.visual_projection.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual_projection.parameters()).dtype

    @property
    def has_text(self) -> bool:
        return self.text_model is not None and self.tokenizer is not None

    def to(self, device=None, dtype=None) -> "ClipModel":
        for module in (self.vision_model, self.visual_projection, self.text_model, self.text_projection):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def pixel_values(self, frames) -> torch.Tensor:
        """(F, 3, S, S) normalised model input from (F, H, W, 3) frames (module docstring)."""
        from PIL import Image  # noqa: PLC0415

        pixels = as_frames(frames).round().clamp(0, 255).to(torch.uint8).numpy()
        size = self.image_size
        batch = []
        for frame in pixels:
            image = Image.fromarray(frame)
            scale = size / min(image.size)
            resized = (max(size, int(image.size[0] * scale)), max(size, int(image.size[1] * scale)))  # truncated, as transformers
            image = image.resize(resized, Image.BICUBIC)
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
            batch.append(np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32))
        array = torch.from_numpy(np.stack(batch)) / 255.0
        mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        return ((array - mean) / std).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def image_embeddings(self, frames, *, batch_size: int = 16) -> torch.Tensor:
        """(F, D) float32 projected image embeddings (not normalised)."""
        pixels = self.pixel_values(frames)
        out = []
        for start in range(0, pixels.shape[0], batch_size):
            chunk = pixels[start:start + batch_size].to(self.device, self.dtype)
            pooled = self.vision_model(pixel_values=chunk).pooler_output
            out.append(self.visual_projection(pooled).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(N, D) float32 projected text embeddings (not normalised); prompts longer than CLIP's 77 tokens
        are truncated."""
        if not self.has_text:
            raise ValueError(f"{self.source}: this CLIP file has no text encoder (or no tokenizer was given); the "
                             "CLIP score needs a full CLIP model, e.g. a transformers folder of "
                             "openai/clip-vit-large-patch14")
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        pooled = self.text_model(input_ids=tokens["input_ids"].to(self.device),
                                 attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return self.text_projection(pooled).float().cpu()


def _load_tokenizer(folder: str | os.PathLike | None):
    if folder is None:
        return None
    from transformers import CLIPTokenizer  # noqa: PLC0415

    folder = Path(folder)
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        raise FileNotFoundError(f"no CLIP tokenizer (vocab.json, merges.txt) in {folder}")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _from_folder(folder: Path, tokenizer, device, dtype) -> ClipModel:
    import transformers  # noqa: PLC0415

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a transformers CLIP folder (no config.json)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    options = dict(local_files_only=True, dtype=dtype) if _new_transformers() else dict(local_files_only=True, torch_dtype=dtype)
    if model_type == "clip":
        model = transformers.CLIPModel.from_pretrained(str(folder), **options).eval()
        if tokenizer is None and (folder / "vocab.json").is_file():
            tokenizer = folder
        vision, text = model.vision_model, model.text_model
        clip = ClipModel(vision, model.visual_projection, model.config.vision_config.image_size, text,
                         model.text_projection, _load_tokenizer(tokenizer), str(folder))
    elif model_type == "clip_vision_model":
        model = transformers.CLIPVisionModelWithProjection.from_pretrained(str(folder), **options).eval()
        clip = ClipModel(model.vision_model, model.visual_projection, model.config.image_size, source=str(folder))
    else:
        raise ValueError(f"{folder}: model_type {model_type!r} is not a CLIP model (expected 'clip' or 'clip_vision_model')")
    return clip.to(device)


def _new_transformers() -> bool:
    import transformers  # noqa: PLC0415

    return int(transformers.__version__.split(".")[0]) >= 5


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop any prefix in front of ``vision_model.`` / ``text_model.`` / the projections (e.g. ``clip.``)."""
    anchor = next((k for k in state if "vision_model.embeddings.patch_embedding.weight" in k), None)
    if anchor is None:
        if any(k.startswith("visual.transformer.") or k.startswith("visual.conv1") for k in state):
            raise ValueError("this CLIP vision file is in the OpenCLIP layout (visual.transformer.*), which is not "
                             "supported; use a transformers-layout file such as OpenAI's ViT-L/14 "
                             "(clip-vit-large-patch14 model.safetensors)")
        raise ValueError("not a CLIP vision file: no vision_model.embeddings.patch_embedding.weight")
    prefix = anchor[: anchor.index("vision_model.")]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _count_layers(state, tower: str) -> int:
    pattern = re.compile(rf"^{tower}\.encoder\.layers\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in state if (m := pattern.match(k))), default=-1)


def vision_config_from_state(state: dict[str, torch.Tensor]) -> dict:
    """``CLIPVisionConfig`` arguments read from the tensor shapes (module docstring)."""
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"CLIP vision file: {positions} position embeddings are not 1 + a square grid")
    heads, act = VISION_HEADS.get(width, (max(1, width // 64), "quick_gelu"))
    return dict(hidden_size=width, patch_size=patch_size, image_size=grid * patch_size,
                num_hidden_layers=_count_layers(state, "vision_model"), num_attention_heads=heads,
                intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                projection_dim=state["visual_projection.weight"].shape[0], hidden_act=act)


def text_config_from_state(state: dict[str, torch.Tensor]) -> dict:
    vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
    return dict(hidden_size=width, vocab_size=vocab,
                max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
                num_hidden_layers=_count_layers(state, "text_model"),
                num_attention_heads=TEXT_HEADS.get(width, max(1, width // 64)),
                intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                projection_dim=state["text_projection.weight"].shape[0], hidden_act=TEXT_ACT.get(width, "quick_gelu"))


def _load_tower(model_class, config, state: dict[str, torch.Tensor], path: Path, what: str) -> torch.nn.Module:
    model = model_class(config)
    wanted = model.state_dict()
    picked = {k: v for k, v in state.items() if k in wanted}
    missing = [k for k in wanted if k not in picked and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{path}: the CLIP {what} tower lacks {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict(picked, strict=False)
    return model.eval()


def _from_file(path: Path, tokenizer, device, dtype) -> ClipModel:
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection,  # noqa: PLC0415
                              CLIPVisionConfig, CLIPVisionModelWithProjection)

    from ..checkpoints.safe_load import load_state_dict  # noqa: PLC0415

    state = _strip_prefix(load_state_dict(path))
    vision_config = CLIPVisionConfig(**vision_config_from_state(state))
    vision = _load_tower(CLIPVisionModelWithProjection, vision_config, state, path, "vision")
    clip = ClipModel(vision.vision_model, vision.visual_projection, vision_config.image_size, source=str(path))
    if "text_model.embeddings.token_embedding.weight" in state and "text_projection.weight" in state:
        clip.tokenizer = _load_tokenizer(tokenizer)
        config = text_config_from_state(state)
        if clip.tokenizer is not None:  # the pooled token is the first end-of-text token, found by its id
            config.update(eos_token_id=clip.tokenizer.eos_token_id, bos_token_id=clip.tokenizer.bos_token_id,
                          pad_token_id=clip.tokenizer.pad_token_id)
        text = _load_tower(CLIPTextModelWithProjection, CLIPTextConfig(**config), state, path, "text")
        clip.text_model, clip.text_projection = text.text_model, text.text_projection
    return clip.to(device, dtype)


def load_clip(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, device="cpu",
              dtype=torch.float32) -> ClipModel:
    """Load CLIP from a transformers folder or a single ComfyUI ``clip_vision`` file (module docstring).
    ``tokenizer``: a CLIP tokenizer folder, for single files with a text tower (folders bring their own)."""
    path = Path(path)
    if path.is_dir():
        clip = _from_folder(path, tokenizer, device, dtype)
    elif path.is_file():
        clip = _from_file(path, tokenizer, device, dtype)
    else:
        raise FileNotFoundError(f"CLIP model not found: {path}")
    logger.info("CLIP from %s: %d px input, %s", path, clip.image_size,
                "image + text" if clip.has_text else "image only (TC; no CS)")
    return clip
