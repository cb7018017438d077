"""Several LoRA-family files, each with its own strength, resolved against one SD-1.x model.

The summed delta for a weight is Σ_j s_j · Δ_j (checkpoint-formats.md §2.4), computed in float32
when the merge reaches that weight. DoRA modules contribute s_j · (W' − W) with W the weight the
LoRA was trained against (the personalized model's weight when one is merged, else SD-1.5's);
every other kind is additive, so the order of the files does not matter.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import validation
from ..checkpoints.safe_load import load_state_dict, read_metadata
from . import lora_delta
from .family import context_family
from .lora_file import LoraModule, parse_lora
from .lora_names import SDXL_PREFIXES, LoraTargets

Shape = Tuple[int, ...]


@dataclass
class LoraSpec:
    """One LoRA to merge: a file path (or an already loaded ``{key: tensor}`` dict) and its strength."""

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
            state, metadata = _load(spec)
            sdxl = sorted(k for k in state if k.startswith(SDXL_PREFIXES))
            if sdxl:
                raise ValueError(f"LoRA {label}: detected SDXL (keys such as {sdxl[0]}); only SD-1.x LoRAs can be merged")
            parsed = parse_lora(state, metadata)
            unused = dict(parsed.unused)
            applied: Dict[str, int] = {}
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
                _check_family(label, name, key, module, context_width)
                if module.has_weight_delta:
                    _check_fits(label, name, module, shape_of(component, key))
                    stack.entries.setdefault((component, key), []).append(_Entry(module, spec.strength, label, "weight"))
                bias = module.bias_delta()
                if bias is not None:
                    bias_key = key[: -len("weight")] + "bias"
                    if shape_of(component, bias_key) is None or bias.numel() != torch.Size(shape_of(component, bias_key)).numel():
                        unused[module.keys["diff_b"]] = f"no bias of {bias.numel()} values at {component}:{bias_key}"
                    else:
                        stack.entries.setdefault((component, bias_key), []).append(_Entry(module, spec.strength, label, "bias"))
                applied[component] = applied.get(component, 0) + 1
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
                delta = lora_delta.dora(reference(), delta, module.tensors["dora_scale"])
            total += entry.strength * delta
        return total


def _load(spec: LoraSpec) -> Tuple[Mapping[str, torch.Tensor], Mapping[str, str]]:
    if isinstance(spec.source, Mapping):
        return spec.source, dict(spec.metadata or {})
    path = Path(os.fspath(spec.source))
    metadata = dict(read_metadata(path))
    metadata.update(spec.metadata or {})
    return load_state_dict(path), metadata


def _check_family(label: str, name: str, key: str, module: LoraModule, width: Optional[int]) -> None:
    if width is None or not (".attn2.to_k." in key or ".attn2.to_v." in key):
        return
    found = module.input_dim()
    if found is not None and found != width:
        raise ValueError(f"LoRA {label}: module {name} reads a {found}-wide text context: detected "
                         f"{context_family(found)}; only SD-1.x LoRAs (context {width}) can be merged")


def _check_fits(label: str, name: str, module: LoraModule, shape: Optional[Shape]) -> None:
    """Compute the delta on the meta device (shapes only) so a misfit is reported before any weight changes."""
    if shape is None:
        raise ValueError(f"LoRA {label}: module {name} targets a weight the SD-1.5 base does not have")
    meta = module.on("meta")
    try:
        meta.weight_delta(shape)
    except (ValueError, RuntimeError) as error:
        hint = (" (a LoRA trained on a 9-channel inpainting U-Net; use one trained on text-to-image SD-1.5)"
                if name.endswith(("conv_in", "input_blocks_0_0")) else "")
        raise ValueError(f"LoRA {label}: module {name} does not fit the model: {error}{hint}") from None
