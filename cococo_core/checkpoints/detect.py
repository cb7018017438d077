"""Identify a Stable Diffusion checkpoint from its key names and tensor shapes (no weights are read).

Rules (``/work/shared/docs/checkpoint-formats.md`` §1.2, §1.4):

* family: SDXL if ``conditioner.embedders.*`` / U-Net ``label_emb`` / cross-attention width 2048; SD-2.x if the
  OpenCLIP text encoder ``cond_stage_model.model.*`` or width 1024; SD-1.x if the U-Net is present otherwise.
* U-Net input channels from ``input_blocks.0.0.weight`` (= diffusers ``conv_in``): 4 = text-to-image,
  9 = inpainting (latents 4 + mask 1 + masked-image latents 4).
* prediction type: SD-1.x weights carry no marker. v-prediction is reported when the file has a ``v_pred`` /
  ``parameterization`` key, or safetensors metadata ``modelspec.predict_key`` / ``v_pred`` /
  ``parameterization`` / kohya ``ss_v_parameterization`` saying so, or (folders) the scheduler config
  says ``v_prediction``; otherwise epsilon is assumed and the report says so.
* EMA: more than 100 ``model_ema.*`` keys (flattened names, see :func:`ldm_keys.ema_key`).
* baked VAE: any ``first_stage_model.*`` key; text encoder: any ``cond_stage_model.transformer.*`` key.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .ldm_keys import CLIP_PREFIX, EMA_PREFIX, UNET_PREFIX, VAE_PREFIX, ema_key
from .safe_load import SAFETENSORS_SUFFIXES, CheckpointError, misnamed_pickle_error, open_state, sniff

INPAINT_HINT = "e.g. sd-v1-5-inpainting.ckpt / .safetensors, or a diffusers folder of stable-diffusion-v1-5-inpainting"
_V_VALUES = {"v", "v_prediction", "v-prediction", "true", "1", "yes"}


@dataclass
class CheckpointInfo:
    """What a checkpoint is. ``family``: "sd1" | "sd2" | "sdxl" | "unknown"; ``layout``: "ldm" (single file)
    | "diffusers" (folder); ``prediction``: "epsilon" | "v_prediction"; ``notes``: human-readable findings."""

    name: str
    layout: str
    family: str
    unet_in_channels: Optional[int] = None
    cross_attention_dim: Optional[int] = None
    prediction: str = "epsilon"
    prediction_source: str = "assumed: SD-1.x files carry no prediction-type marker"
    has_unet: bool = False
    has_vae: bool = False
    has_text_encoder: bool = False
    has_tokenizer: bool = False
    has_ema: bool = False
    ema_complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == 9

    def describe(self) -> str:
        """One line: what was found."""
        family = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}.get(self.family, "unknown model")
        parts = [f"{self.name}: {family} ({'single file' if self.layout == 'ldm' else 'diffusers folder'})"]
        if self.unet_in_channels is not None:
            kind = {9: "inpainting", 4: "text-to-image"}.get(self.unet_in_channels, "unusual")
            parts.append(f"U-Net with {self.unet_in_channels} input channels ({kind})")
        parts.append(f"{self.prediction} prediction ({self.prediction_source})")
        parts.append("VAE included" if self.has_vae else "no VAE")
        parts.append("text encoder included" if self.has_text_encoder else "no text encoder")
        if self.has_ema:
            parts.append("EMA weights present")
        return "; ".join(parts)


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _v_marker(metadata: Mapping[str, str]) -> Optional[str]:
    for key in ("modelspec.predict_key", "v_pred", "parameterization", "ss_v_parameterization", "prediction_type"):
        value = str(metadata.get(key, "")).strip().lower()
        if value in _V_VALUES:
            return f"metadata {key}={metadata[key]}"
    return None


def detect_state(shapes: Mapping[str, object], *, name: str = "checkpoint",
                 metadata: Mapping[str, str] | None = None) -> CheckpointInfo:
    """Identify a single-file checkpoint from ``{key: shape or tensor}`` (and safetensors metadata)."""
    keys = list(shapes)
    info = CheckpointInfo(name=name, layout="ldm", family="unknown")
    unet_keys = [k for k in keys if k.startswith(UNET_PREFIX)]
    info.has_unet = bool(unet_keys)
    info.has_vae = any(k.startswith(VAE_PREFIX) for k in keys)
    info.has_text_encoder = any(k.startswith(CLIP_PREFIX) for k in keys)
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in in shapes:
        info.unet_in_channels = _shape(shapes[conv_in])[1]
    to_k = sorted(k for k in unet_keys if k.endswith("attn2.to_k.weight"))
    if to_k:
        info.cross_attention_dim = _shape(shapes[to_k[0]])[-1]

    sdxl = [k for k in keys if k.startswith("conditioner.embedders.")][:1] + [k for k in unet_keys if ".label_emb." in k][:1]
    openclip = [k for k in keys if k.startswith("cond_stage_model.model.")][:1]
    if sdxl or info.cross_attention_dim == 2048:
        info.family = "sdxl"
        info.notes.append("found " + (", ".join(sdxl) if sdxl else "cross-attention width 2048"))
    elif openclip or info.cross_attention_dim == 1024:
        info.family = "sd2"
        info.notes.append("found " + (f"OpenCLIP text encoder keys ({openclip[0]})" if openclip else "cross-attention width 1024"))
    elif info.has_unet:
        info.family = "sd1"
    else:
        sample = ", ".join(keys[:3]) or "no tensors"
        info.notes.append(f"no {UNET_PREFIX}* U-Net keys (found e.g. {sample})")

    metadata = dict(metadata or {})
    marker = next((k for k in ("v_pred", "parameterization") if k in shapes), None)
    source = f"'{marker}' key in the file" if marker else _v_marker(metadata)
    if source:
        info.prediction, info.prediction_source = "v_prediction", source
    elif info.family != "sd1":
        info.prediction_source = "assumed; not detectable from the weights"

    ema = [k for k in keys if k.startswith(EMA_PREFIX) and k not in ("model_ema.decay", "model_ema.num_updates")]
    info.has_ema = len(ema) > 100
    if info.has_ema:
        ema_set = set(ema)
        info.ema_complete = all(ema_key(k) in ema_set for k in unet_keys)
        info.notes.append(f"EMA copy of the U-Net present ({len(ema)} model_ema.* tensors"
                          f"{'' if info.ema_complete else ', incomplete'}); non-EMA weights are used unless EMA is asked for")
    return info


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read this config file ({error})") from None


def detect_folder(folder: str | os.PathLike) -> CheckpointInfo:
    """Identify a diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) from its configs."""
    folder = Path(folder)
    info = CheckpointInfo(name=str(folder), layout="diffusers", family="unknown")
    unet_config = folder / "unet" / "config.json"
    info.has_unet = unet_config.is_file()
    info.has_vae = (folder / "vae" / "config.json").is_file()
    info.has_text_encoder = (folder / "text_encoder" / "config.json").is_file()
    info.has_tokenizer = (folder / "tokenizer" / "vocab.json").is_file()
    if (folder / "text_encoder_2").is_dir():
        info.family = "sdxl"
        info.notes.append("found text_encoder_2/")
    if info.has_unet:
        config = _read_json(unet_config)
        info.unet_in_channels = config.get("in_channels")
        cross = config.get("cross_attention_dim")
        info.cross_attention_dim = cross[0] if isinstance(cross, (list, tuple)) else cross
        if config.get("addition_embed_type") == "text_time" or info.cross_attention_dim == 2048:
            info.family = "sdxl"
            info.notes.append("found an SDXL U-Net config (text_time embedding / cross-attention width 2048)")
        elif info.cross_attention_dim == 1024:
            info.family = "sd2"
            info.notes.append("found cross-attention width 1024 (OpenCLIP ViT-H text encoder)")
        elif info.family == "unknown":
            info.family = "sd1"
    else:
        info.notes.append("no unet/config.json")
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        prediction = _read_json(scheduler).get("prediction_type", "epsilon")
        info.prediction = "v_prediction" if prediction == "v_prediction" else "epsilon"
        info.prediction_source = "scheduler/scheduler_config.json"
    return info


def detect_checkpoint(source: str | os.PathLike) -> CheckpointInfo:
    """Identify a single-file checkpoint (reads only names, shapes and metadata) or a diffusers folder."""
    path = Path(source)
    if path.is_dir():
        return detect_folder(path)
    with open_state(path) as state:
        return detect_state(state.shapes(), name=path.name, metadata=state.metadata)


def require_sd1(info: CheckpointInfo, *, in_channels: int | Sequence[int] | None = 9) -> None:
    """Raise :class:`CheckpointError` unless ``info`` is an SD-1.x model (with ``in_channels`` U-Net inputs)."""
    if info.family in ("sd2", "sdxl"):
        label = {"sd2": "a Stable Diffusion 2.x", "sdxl": "an SDXL"}[info.family]
        raise CheckpointError(f"{info.name} is {label} checkpoint ({'; '.join(info.notes)}). CoCoCo needs an SD-1.5 "
                              f"inpainting checkpoint ({INPAINT_HINT}).")
    if info.family != "sd1":
        raise CheckpointError(f"{info.name} is not a Stable Diffusion checkpoint ({'; '.join(info.notes)}). CoCoCo needs "
                              f"an SD-1.5 inpainting checkpoint ({INPAINT_HINT}).")
    allowed = (in_channels,) if isinstance(in_channels, int) else in_channels
    if allowed is not None and info.unet_in_channels not in allowed:
        if info.unet_in_channels == 4 and 9 in allowed:
            raise CheckpointError(
                f"{info.name} is a text-to-image model (U-Net with 4 input channels); CoCoCo needs the 9-channel "
                f"SD-1.5 inpainting model ({INPAINT_HINT}); 4-channel models can be used as *personalization* "
                "sources in the merger.")
        raise CheckpointError(f"{info.name} has a U-Net with {info.unet_in_channels} input channels; "
                              f"expected {' or '.join(map(str, allowed))}.")


def check_base_kind(source: str | os.PathLike, *, in_channels: int | Sequence[int] | None = 9) -> None:
    """:func:`require_sd1` on a diffusers folder or a ``.safetensors`` file, from names and shapes only (before
    anything loads); pickles are checked when they load, since reading their shapes means unpickling them."""
    path = Path(source)
    kind = sniff(path) if path.is_file() else None
    if kind not in (None, "safetensors") and path.suffix.lower() in SAFETENSORS_SUFFIXES:
        raise misnamed_pickle_error(path, kind)
    if path.is_dir() or kind == "safetensors":
        require_sd1(detect_checkpoint(path), in_channels=in_channels)
