"""Load the SD-1.x base (U-Net, VAE, CLIP text encoder, tokenizer) from a diffusers folder or a single file.

Sources:

(a) a diffusers folder ``unet/ vae/ text_encoder/ tokenizer/``, weights as ``.safetensors`` (preferred) or
    ``.bin`` (torch pickle, weights-only), sharded ``*.index.json`` allowed;
(b) a single-file LDM checkpoint (``.safetensors`` / ``.ckpt``, key layout in :mod:`.ldm_keys`), whose configs are
    inferred from tensor shapes (:mod:`.configs`). A single file has no tokenizer: pass ``tokenizer=``.

Every load compares the checkpoint's key names and shapes with the module's before loading and raises a
:class:`CheckpointError` listing missing / unexpected / mis-shaped tensors (transformers 5 silently loads
nothing when names carry an unexpected ``text_model.`` prefix). Modules are built on the meta device and
take the file's tensors directly (no random initialisation of full-size models).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..hooks import CancelCheck, StepCallback, check_cancelled, report
from .configs import clip_config_from_shapes, unet_config_from_shapes, vae_config_from_shapes
from .keys import compare_keys, shapes_of
from .detect import CheckpointInfo, detect_folder, detect_state, require_sd1
from .ldm_keys import COMPONENTS, SDKeyMap, ema_key, ldm_to_diffusers, normalize_vae_key
from .safe_load import CheckpointError, load_state_dict, open_state

log = logging.getLogger(__name__)

MODEL_COMPONENTS = COMPONENTS  # ("unet", "vae", "text_encoder")
TOKENIZER_HINT = ("pass tokenizer= a CLIP tokenizer folder with vocab.json and merges.txt: ComfyUI ships one at "
                  "comfy/sd1_tokenizer/, and every diffusers SD-1.5 folder has one under tokenizer/")
_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model",), "vae": ("diffusion_pytorch_model",),
    "text_encoder": ("model", "pytorch_model"),
}


@dataclass
class SDState:
    """Raw diffusers-named state dicts per component (no modules), their configs, and what the source was.
    Text-encoder names are transformers 5's (no ``text_model.`` prefix)."""

    tensors: dict[str, dict[str, torch.Tensor]]
    configs: dict[str, dict]
    info: CheckpointInfo
    used_ema: bool = False
    ignored: list[str] = field(default_factory=list)

    def __getitem__(self, component: str) -> dict[str, torch.Tensor]:
        return self.tensors[component]


@dataclass
class SDComponents:
    """Loaded SD-1.x modules (``None`` for components not asked for) and the source description."""

    unet: Any = None  # diffusers.UNet2DConditionModel
    vae: Any = None  # diffusers.AutoencoderKL
    text_encoder: Any = None  # transformers.CLIPTextModel
    tokenizer: Any = None  # transformers.CLIPTokenizer
    source: Optional[CheckpointInfo] = None
    used_ema: bool = False


def _check_components(components: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = [c for c in components if c not in allowed]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {', '.join(allowed)}")


# ----------------------------------------------------------------------------------------------- folders
def weight_files(folder: Path, component: str) -> list[Path]:
    """The weights file of a diffusers component folder (``.safetensors`` before ``.bin``), or its shards."""
    return folder_weight_files(Path(folder) / component, _WEIGHT_FILES[component])


def folder_weight_files(folder: str | os.PathLike, stems: Sequence[str]) -> list[Path]:
    """The weights of a diffusers/transformers model folder: the first ``<stem>.safetensors`` / ``<stem>.bin``
    found (stems in order, safetensors first), or the shards its ``.index.json`` lists."""
    folder = Path(folder)
    for stem in stems:
        for suffix in (".safetensors", ".bin"):
            single = folder / (stem + suffix)
            if single.is_file():
                return [single]
            index = folder / (stem + suffix + ".index.json")
            if index.is_file():
                return _shards(index)
    names = ", ".join(s + x for s in stems for x in (".safetensors", ".bin"))
    raise FileNotFoundError(f"{folder}: no weights file found (expected one of {names}, or its .index.json shards)")


def read_weight_folder(folder: str | os.PathLike, stems: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (see :func:`folder_weight_files`), read safely."""
    state: dict[str, torch.Tensor] = {}
    for path in folder_weight_files(folder, stems):
        state.update(load_state_dict(path))
    return state


def _shards(index: Path) -> list[Path]:
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{index}: not a valid shard index ({error})") from None
    if any(Path(shard).name != shard for shard in shards):
        raise CheckpointError(f"{index}: shard names must be plain file names in the same folder")
    return [index.parent / shard for shard in shards]


def _component_weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return read_weight_folder(Path(folder) / component, _WEIGHT_FILES[component])


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except ValueError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _normalize(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical diffusers/transformers-5 names: modern VAE attention names, CLIP without ``text_model.``."""
    if component == "vae":
        return {normalize_vae_key(k): v for k, v in state.items()}
    if component == "text_encoder":
        return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    return state


def _folder_state(folder: Path, components, require_in_channels, callback, cancel) -> SDState:
    info = detect_folder(folder)
    require_sd1(info, in_channels=require_in_channels)
    tensors, configs = {}, {}
    for step, component in enumerate(components):
        check_cancelled(cancel)
        configs[component] = _read_config(folder / component / "config.json")
        tensors[component] = _normalize(component, _component_weights(folder, component))
        report(callback, step + 1, len(components))
    return SDState(tensors, configs, info)


# ----------------------------------------------------------------------------------------------- single files
def ema_substitutions(keys, info: CheckpointInfo, use_ema: bool) -> dict[str, str]:
    """``{U-Net key: its model_ema.* name}`` when the EMA weights are to be used, else ``{}``."""
    if not info.has_ema:
        if use_ema:
            raise CheckpointError(f"{info.name}: EMA weights were asked for but the file has no model_ema.* copy "
                                  "(its U-Net weights are used as they are; 'emaonly' files store EMA weights there)")
        return {}
    if not use_ema:
        log.info("%s: has EMA weights; using the non-EMA U-Net weights (ask for EMA to use them)", info.name)
        return {}
    keys = set(keys)
    unet_keys = [k for k in keys if k.startswith("model.diffusion_model.")]
    missing = [k for k in unet_keys if ema_key(k) not in keys]
    if missing:
        raise CheckpointError(f"{info.name}: the EMA copy lacks {len(missing)} U-Net tensors, e.g. {missing[:3]}")
    log.info("%s: using the EMA U-Net weights", info.name)
    return {k: ema_key(k) for k in unet_keys}


def _file_state(path: Path, components, use_ema: bool, require_in_channels, callback, cancel) -> SDState:
    with open_state(path) as reader:
        info = detect_state(reader.shapes(), name=path.name, metadata=reader.metadata)
    require_sd1(info, in_channels=require_in_channels)
    check_cancelled(cancel)
    state = dict(load_state_dict(path))
    report(callback, 1, 2)
    substitute = ema_substitutions(state, info, use_ema)
    for key, source in substitute.items():
        state[key] = state[source]
    used_ema = bool(substitute)
    wanted_prefix = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."}
    state = {k: v for k, v in state.items()
             if not any(k.startswith(wanted_prefix[c]) for c in MODEL_COMPONENTS if c not in components)}
    converted = ldm_to_diffusers(state, SDKeyMap.from_ldm_keys(state))
    if converted.unknown:
        raise CheckpointError(f"{path}: {len(converted.unknown)} tensors do not fit the SD-1.x layout, e.g. "
                              f"{', '.join(converted.unknown[:8])}; is this an SD-1.x checkpoint?")
    missing = [c for c in components if not converted.components[c]]
    if missing:
        what = {"unet": "U-Net (model.diffusion_model.*)", "vae": "VAE (first_stage_model.*)",
                "text_encoder": "text encoder (cond_stage_model.transformer.*)"}
        raise CheckpointError(f"{path}: has no {' and no '.join(what[c] for c in missing)}; load that part from "
                              "another checkpoint (e.g. a VAE file) or ask only for the components it has")
    builders = {"unet": unet_config_from_shapes, "vae": vae_config_from_shapes, "text_encoder": clip_config_from_shapes}
    tensors = {c: converted.components[c] for c in components}
    configs = {c: builders[c](tensors[c]) for c in components}
    if converted.ignored:
        log.debug("%s: not model weights, left out: %s", path.name, ", ".join(converted.ignored))
    report(callback, 2, 2)
    return SDState(tensors, configs, info, used_ema, converted.ignored)


def load_sd_state(source: str | os.PathLike, *, components: Sequence[str] = MODEL_COMPONENTS, use_ema: bool = False,
                  require_in_channels: int | Sequence[int] | None = None,
                  callback: StepCallback | None = None, cancel: CancelCheck | None = None) -> SDState:
    """Per-component diffusers-named state dicts of an SD-1.x diffusers folder or single file, without
    building modules (for the task-vector merger). ``require_in_channels`` None accepts 4- and 9-channel U-Nets.

    Refuses SD-2.x / SDXL / non-SD files with a :class:`CheckpointError` saying what was found."""
    components = tuple(components)
    _check_components(components, MODEL_COMPONENTS)
    path = Path(source)
    if path.is_dir():
        return _folder_state(path, components, require_in_channels, callback, cancel)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .safetensors/.ckpt file or a diffusers folder)")
    return _file_state(path, components, use_ema, require_in_channels, callback, cancel)


# ----------------------------------------------------------------------------------------------- modules
def _verify_keys(name: str, state: Mapping[str, torch.Tensor], module: torch.nn.Module) -> None:
    comparison = compare_keys(shapes_of(module.state_dict()), shapes_of(state))
    missing, unexpected = comparison.missing, comparison.unexpected
    mis_shaped = [f"{k} {file_shape} (model: {model_shape})" for k, file_shape, model_shape in comparison.mismatched]
    if not comparison.ok:
        parts = [f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)) if items]
        raise CheckpointError(f"{name} does not match the {type(module).__name__} built for it; " + "; ".join(parts))


def _materialize_buffers(module: torch.nn.Module, name: str) -> None:
    """Non-persistent buffers are not in checkpoints; after a meta-device build CLIP's position_ids is one."""
    for buffer_name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, attr = buffer_name.rpartition(".")
        if attr != "position_ids":
            raise CheckpointError(f"{name}: buffer {buffer_name} is not in the checkpoint and cannot be rebuilt")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner.register_buffer(attr, torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(), persistent=False)


def _owned(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    """A fresh aligned copy (file-mapped tensors may sit at odd addresses, which changes CPU kernels' rounding,
    and must not outlive the file), converted on the way when ``dtype`` is a floating dtype."""
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=device or "cpu", dtype=target, copy=True, memory_format=torch.contiguous_format)


def _build(component: str, config: dict, tensors: dict[str, torch.Tensor], name: str,
           device=None, dtype=None) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        if component == "unet":
            module = UNet2DConditionModel.from_config(config)
        elif component == "vae":
            module = AutoencoderKL.from_config(config)
        else:
            from transformers import CLIPTextConfig, CLIPTextModel

            module = CLIPTextModel(CLIPTextConfig(**config))
    if component == "text_encoder" and any(k.startswith("text_model.") for k in module.state_dict()):
        tensors = {"text_model." + k: v for k, v in tensors.items()}  # transformers 4.x module names
    _verify_keys(f"{name} ({component})", tensors, module)
    module.load_state_dict({k: _owned(v, device, dtype) for k, v in tensors.items()}, strict=True, assign=True)
    _materialize_buffers(module, f"{name} ({component})")
    return module.to(device=device or "cpu").eval().requires_grad_(False)


def load_tokenizer(tokenizer: Any) -> Any:
    """A ``CLIPTokenizer`` from a folder with ``vocab.json`` + ``merges.txt``; other objects are returned as is."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    folder = Path(tokenizer)
    check_tokenizer_source(folder, folder)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def check_tokenizer_source(source: str | os.PathLike, tokenizer: Any = None, option: str = "tokenizer=") -> None:
    """Refuse, before anything loads, a base without a tokenizer: a single file needs ``tokenizer`` (named
    ``option`` in the message, e.g. ``--tokenizer``), a folder needs a ``tokenizer/`` of its own or ``tokenizer``;
    a tokenizer folder given must hold ``vocab.json`` and ``merges.txt``."""
    path = Path(source)
    hint = TOKENIZER_HINT.replace("pass tokenizer=", f"pass {option}")
    if isinstance(tokenizer, (str, os.PathLike)):
        folder = Path(tokenizer)
        missing = [f for f in ("vocab.json", "merges.txt") if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"tokenizer folder {folder} lacks {' and '.join(missing)}; {hint}")
    if tokenizer is not None:
        return
    if not path.is_dir():
        raise ValueError(f"{path} is a single-file checkpoint and has no tokenizer; {hint}")
    if not (path / "tokenizer").is_dir():
        raise FileNotFoundError(f"{path} has no tokenizer/ folder; {hint}")


def load_sd_components(source: str | os.PathLike, *,
                       components: Sequence[str] = ("unet", "vae", "text_encoder", "tokenizer"),
                       tokenizer: Any = None, require_in_channels: int | Sequence[int] | None = 9,
                       device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                       use_ema: bool = False, callback: StepCallback | None = None,
                       cancel: CancelCheck | None = None) -> SDComponents:
    """Load SD-1.x modules from a diffusers folder or a single-file LDM checkpoint.

    ``tokenizer``: a folder (``vocab.json`` + ``merges.txt``) or a tokenizer object; required for single files,
    overrides the folder's ``tokenizer/`` otherwise. ``require_in_channels=9`` refuses text-to-image U-Nets
    (None accepts any). ``dtype`` None keeps the stored dtype; ``device`` None keeps CPU. ``use_ema`` takes the
    U-Net's ``model_ema.*`` copy of a single file. ``callback(step, total, None)`` / ``cancel()`` per component.
    """
    components = tuple(components)
    _check_components(components, MODEL_COMPONENTS + ("tokenizer",))
    path = Path(source)
    models = tuple(c for c in components if c != "tokenizer")
    loaded = SDComponents()
    if "tokenizer" in components:
        check_tokenizer_source(path, tokenizer)
    total = len(models) + 1
    state = load_sd_state(path, components=models, use_ema=use_ema, require_in_channels=require_in_channels,
                          cancel=cancel)
    report(callback, 1, total)
    for step, component in enumerate(models):
        check_cancelled(cancel)
        module = _build(component, state.configs[component], state.tensors[component], state.info.name, device, dtype)
        setattr(loaded, component, module)
        state.tensors[component] = {}
        report(callback, step + 2, total)
    if "tokenizer" in components:
        loaded.tokenizer = load_tokenizer(tokenizer if tokenizer is not None else path / "tokenizer")
    loaded.source, loaded.used_ema = state.info, state.used_ema
    return loaded
