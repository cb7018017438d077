"""Several LoRA-family files, each with its own strength, resolved against one SD-1.x model.

The summed delta for a weight is Σ_j s_j · Δ_j (checkpoint-formats.md §2.4), computed in float32
when the merge reaches that weight. DoRA modules contribute s_j · (W' − W) with W the weight the
LoRA was trained against (the personalized model's weight when one is merged, else SD-1.5's);
every other kind is additive, so the order of the files does not matter.

Alphas come from ``.alpha`` tensors or from the file's PEFT configs (:mod:`.peft_config`:
``lora_adapter_metadata``, an ``adapter_config.json`` beside ``adapter_model.safetensors``, a
``lora_alpha`` metadata string). Everything that can be checked without the model's weights is
checked when the stack is built: finite strengths, floating-point and finite factors, shapes (DoRA
magnitudes included) and ranks against the config; each delta is checked for NaN / inf when computed.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import validation
from ..checkpoints.safe_load import load_state_dict, read_metadata
from .family import context_family, lora_family
from .finite import NonFiniteError, is_finite
from .lora_file import LoraModule, parse_lora
from .lora_names import LoraTargets
from .peft_config import AdapterConfigs, model_module_name

PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_CONFIG = "adapter_config.json"

Shape = Tuple[int, ...]


@dataclass
class LoraSpec:
    """One LoRA to merge: a file path, a PEFT adapter folder (``adapter_model.safetensors`` +
    ``adapter_config.json``) or an already loaded ``{key: tensor}`` dict, and its strength."""

    source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]
    strength: float = 1.0
    name: Optional[str] = None
    metadata: Optional[Mapping[str, str]] = None

    def __post_init__(self):
        validation.finite(self.strength, f"the strength of LoRA {self.label()}")

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``FILE`` or ``FILE:STRENGTH`` (the part after the last ``:`` is used only if it is a number)."""
        path, sep, tail = text.rpartition(":")
        if sep and path:
            try:
                strength = float(tail)
            except ValueError:
                pass
            else:
                return cls(path, strength)
        return cls(text, 1.0)

    def label(self) -> str:
        if self.name:
            return self.name
        return str(self.source) if not isinstance(self.source, Mapping) else "<in-memory LoRA>"


@dataclass
class _Entry:
    module: LoraModule
    strength: float
    lora: str
    part: str  # "weight" | "bias"


@dataclass
class LoraStack:
    """LoRA modules grouped by the ``(component, key)`` they change, plus what was left unused."""

    entries: Dict[Tuple[str, str], List[_Entry]] = field(default_factory=dict)
    unused: Dict[str, Dict[str, str]] = field(default_factory=dict)  # lora label -> {file key: reason}
    applied: Dict[str, Dict[str, int]] = field(default_factory=dict)  # lora label -> {component: modules}
    notes: List[str] = field(default_factory=list)

    @classmethod
    def build(cls, specs: Sequence[LoraSpec], targets: LoraTargets, shape_of: Callable[[str, str], Optional[Shape]],
              *, context_width: Optional[int] = None, components: Sequence[str] = ("unet", "text_encoder")) -> "LoraStack":
        """Load, parse and resolve every LoRA; raise ValueError for SDXL / SD2 files or deltas that do not fit.

        ``shape_of(component, key)`` is the shape of the weight the delta is added to (SD-1.5's, so a
        ``conv_in`` delta is 4-channel); ``components`` are those being merged (others are reported).
        """
        stack = cls()
        for spec in specs:
            label = spec.label()
            validation.finite(spec.strength, f"the strength of LoRA {label}")  # again: specs are mutable
            state, metadata, sidecar = _load(spec)
            family = lora_family({key: tuple(value.shape) for key, value in state.items()})
            if family is not None:
                raise ValueError(f"LoRA {label} is not an SD-1.5 LoRA: pick an SD-1.5 one (SD-1.x LoRAs only can be "
                                 f"merged into CoCoCo). Detected {family}.")
            configs = AdapterConfigs.read(metadata, sidecar, label=label)
            parsed = parse_lora(state)
            unused = dict(parsed.unused)
            applied: Dict[str, int] = {}
            without_alpha = 0
            for name, module in parsed.modules.items():
                target = targets.resolve(name)
                if target is None:
                    for key in module.keys.values():
                        unused[key] = "no SD-1.5 U-Net or text-encoder layer has this name"
                    continue
                component, key = target
                if component not in components:
                    for file_key in module.keys.values():
                        unused[file_key] = f"{component} is not being merged"
                    continue
                _check_tensors(label, module)
                _configure(label, name, module, configs.for_component(component))
                without_alpha += module.is_peft and module.alpha is None
                _check_family(label, name, key, module, context_width)
                if module.has_weight_delta:
                    _check_fits(label, name, module, shape_of(component, key))
                    stack.entries.setdefault((component, key), []).append(_Entry(module, spec.strength, label, "weight"))
                bias = module.bias_delta()
                if bias is not None:
                    bias_key = key[: -len("weight")] + "bias"
                    if shape_of(component, bias_key) is None or bias.numel() != torch.Size(shape_of(component, bias_key)).numel():
                        unused[module.bias_key] = f"no bias of {bias.numel()} values at {component}:{bias_key}"
                    elif not is_finite(bias):
                        raise NonFiniteError(f"LoRA {label}: the bias delta of module {name} ({module.bias_key}) "
                                             "is not finite; nothing was merged")
                    else:
                        stack.entries.setdefault((component, bias_key), []).append(_Entry(module, spec.strength, label, "bias"))
                applied[component] = applied.get(component, 0) + 1
            if without_alpha:
                stack.notes.append(
                    f"LoRA {label}: {without_alpha} PEFT-format modules (lora_A / lora_B) have no alpha (no {PEFT_CONFIG} "
                    "beside an adapter_model.safetensors, no lora_alpha in the file's metadata); merged with scale 1 "
                    "(alpha = rank). If it was trained with another lora_alpha, keep its adapter_config.json beside "
                    "it or scale the strength by lora_alpha / r")
            stack.unused[label] = unused
            stack.applied[label] = applied
        return stack

    def delta(self, component: str, key: str, shape: Shape, reference: Callable[[], torch.Tensor],
              device: torch.device = torch.device("cpu")) -> Optional[torch.Tensor]:
        """Σ strength · Δ for one weight in float32, or None when no LoRA touches it.

        ``reference()`` returns the weight the LoRAs were trained against (only DoRA needs it).
        """
        entries = self.entries.get((component, key))
        if not entries:
            return None
        total = torch.zeros(shape, dtype=torch.float32, device=device)
        for entry in entries:
            module = entry.module.on(device)
            if entry.part == "bias":
                total += entry.strength * module.bias_delta().reshape(shape)
                continue
            delta = module.weight_delta(shape)
            if entry.module.is_dora:
                delta = module.dora(reference(), delta)
            delta = entry.strength * delta
            if not is_finite(delta):
                raise NonFiniteError(f"LoRA {entry.lora}: the delta of module {module.name} for {component}:{key} "
                                     f"(strength {entry.strength:g}, scale {module.scale():g}) is not finite in float32; "
                                     "nothing was merged")
            total += delta
        return total


def lora_file(source) -> Path:
    """The weights file of a LoRA path: the path itself, or a PEFT adapter folder's ``adapter_model.*``."""
    path = Path(os.fspath(source))
    if path.is_dir():
        found = next((path / name for name in PEFT_WEIGHTS if (path / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"LoRA folder {path} has no {' or '.join(PEFT_WEIGHTS)} (a PEFT adapter folder)")
        return found
    return path


def _load(spec: LoraSpec) -> Tuple[Mapping[str, torch.Tensor], Mapping[str, str], Optional[Mapping]]:
    """The tensors, safetensors metadata and (for PEFT's ``adapter_model.*``) the ``adapter_config.json`` beside it."""
    if isinstance(spec.source, Mapping):
        return spec.source, dict(spec.metadata or {}), None
    path = lora_file(spec.source)
    metadata = dict(read_metadata(path))
    metadata.update(spec.metadata or {})
    sidecar = None
    if path.name in PEFT_WEIGHTS and (path.parent / PEFT_CONFIG).is_file():
        try:
            sidecar = json.loads((path.parent / PEFT_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"LoRA {spec.label()}: {path.parent / PEFT_CONFIG} cannot be read as JSON ({error})") from None
        if not isinstance(sidecar, Mapping):
            raise ValueError(f"LoRA {spec.label()}: {path.parent / PEFT_CONFIG} is not a JSON object")
    return load_state_dict(path), metadata, sidecar


def _check_tensors(label: str, module: LoraModule) -> None:
    """Every factor floating point and finite (an alpha may be any number, but finite)."""
    for role, tensor in module.tensors.items():
        key = module.keys[role]
        if role == "alpha":
            if tensor.numel() != 1 or not math.isfinite(float(tensor.double().reshape(-1)[0])):
                raise NonFiniteError(f"LoRA {label}: tensor {key} is not one finite number; nothing was merged")
            continue
        if not tensor.is_floating_point():
            raise ValueError(f"LoRA {label}: tensor {key} is {str(tensor.dtype).replace('torch.', '')}, "
                             "not a floating-point LoRA factor")
        if not is_finite(tensor):
            raise NonFiniteError(f"LoRA {label}: tensor {key} holds NaN or infinite values; nothing was merged")


def _configure(label: str, name: str, module: LoraModule, config) -> None:
    """Alpha and rsLoRA from the file's PEFT config when the module has no ``.alpha`` tensor; rank checked."""
    if config is None or "alpha" in module.tensors:
        return
    path = model_module_name(name)
    module.default_alpha, module.rslora = config.alpha_for(path), config.use_rslora
    expected = config.rank_for(path)
    if module.kind == "lora" and expected is not None and module.rank != expected:
        raise ValueError(f"LoRA {label}: module {name} has rank {module.rank} but {config.source} says r = {expected} "
                         "(a config of another adapter?)")


def _check_family(label: str, name: str, key: str, module: LoraModule, width: Optional[int]) -> None:
    if width is None or not (".attn2.to_k." in key or ".attn2.to_v." in key):
        return
    found = module.input_dim()
    if found is not None and found != width:
        raise ValueError(f"LoRA {label}: module {name} reads a {found}-wide text context: detected "
                         f"{context_family(found)}; only SD-1.x LoRAs (context {width}) can be merged")


def _check_fits(label: str, name: str, module: LoraModule, shape: Optional[Shape]) -> None:
    """Compute the delta and DoRA on the meta device (shapes only) so a misfit is reported before any weight changes."""
    if shape is None:
        raise ValueError(f"LoRA {label}: module {name} targets a weight the SD-1.5 base does not have")
    try:
        module.check(shape)
    except (ValueError, RuntimeError) as error:
        hint = (" (a LoRA trained on a 9-channel inpainting U-Net; use one trained on text-to-image SD-1.5)"
                if name.endswith(("conv_in", "input_blocks_0_0")) else "")
        raise ValueError(f"LoRA {label}: module {name} does not fit the model: {error}{hint}") from None
