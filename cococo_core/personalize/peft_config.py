"""The scaling fields of PEFT ``LoraConfig`` s that come with a LoRA file, per component and per module.

PEFT scales a LoRA module by ``lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``), where
``r`` and ``lora_alpha`` may be overridden per module by ``rank_pattern`` / ``alpha_pattern``: the
first pattern ``p`` (in the config's order) for which ``re.match(rf"(.*\\.)?({p})$", module)`` holds,
``module`` being the layer's name inside the adapted model (``down_blocks.0....attn1.to_q``). The
configs are found in:

* diffusers' ``lora_adapter_metadata`` safetensors metadata (``save_lora_weights``): a JSON object with
  one LoraConfig per component, its fields prefixed ``unet.`` / ``text_encoder.``; a single-model file
  (``save_lora_adapter``) holds one unprefixed config; nested ``{"unet": {...}}`` objects are read too;
* ``adapter_config.json`` beside PEFT's ``save_pretrained`` output (``adapter_model.safetensors``);
* a plain ``lora_alpha`` / ``ss_network_alpha`` metadata string (one alpha for every module).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from .lora_names import TEXT, UNET

_COMPONENT_PREFIXES = {"unet": UNET, "text_encoder": TEXT}
# prefixes of LoRA file module names that are not part of the adapted model's own module names
_MODEL_PREFIXES = ("unet.", "text_encoder.", "base_model.model.")
_FIELDS = ("lora_alpha", "use_rslora", "alpha_pattern", "rank_pattern", "r", "peft_type")


@dataclass(frozen=True)
class LoraScaling:
    """The fields of one LoraConfig that decide a module's scale, and where they were read."""

    source: str
    lora_alpha: Optional[float] = None
    r: Optional[int] = None
    use_rslora: bool = False
    alpha_pattern: Tuple[Tuple[str, float], ...] = ()
    rank_pattern: Tuple[Tuple[str, int], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping, source: str) -> "LoraScaling":
        """Read a LoraConfig dict; ValueError naming ``source`` for values of the wrong type."""
        def number(name, value, kind=float):
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{source}: {name} = {value!r} is not a finite number")
            return kind(value)

        def pattern(name, kind):
            value = config.get(name) or {}
            if not isinstance(value, Mapping):
                raise ValueError(f"{source}: {name} must be an object mapping module patterns to numbers")
            items = []
            for key, item in value.items():
                try:
                    re.compile(key)
                except re.error as error:
                    raise ValueError(f"{source}: {name} pattern {key!r} is not a regular expression: {error}") from None
                items.append((str(key), number(f"{name}[{key!r}]", item, kind)))
            return tuple(items)

        rslora = config.get("use_rslora", False)
        if not isinstance(rslora, bool):
            raise ValueError(f"{source}: use_rslora = {rslora!r} is not true or false")
        return cls(source, number("lora_alpha", config.get("lora_alpha")), number("r", config.get("r"), int), rslora,
                   pattern("alpha_pattern", float), pattern("rank_pattern", int))

    def alpha_for(self, module: str) -> Optional[float]:
        return _first_match(self.alpha_pattern, module, self.lora_alpha)

    def rank_for(self, module: str) -> Optional[int]:
        return _first_match(self.rank_pattern, module, self.r)


def _first_match(patterns, module: str, default):
    """PEFT's pattern lookup: the first pattern matching the end of the module name at a dot boundary."""
    for pattern, value in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def model_module_name(name: str) -> str:
    """A LoRA file's module name without the file prefixes (``unet.``, ``base_model.model.``): the name PEFT matched."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _MODEL_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


@dataclass
class AdapterConfigs:
    """Every LoraConfig found for one LoRA file: per component (``None``: applies to every component)."""

    configs: Dict[Optional[str], LoraScaling] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.configs)

    def for_component(self, component: str) -> Optional[LoraScaling]:
        return self.configs.get(component, self.configs.get(None))

    @classmethod
    def read(cls, metadata: Optional[Mapping[str, str]], sidecar: Optional[Mapping] = None,
             sidecar_name: str = "adapter_config.json", label: str = "LoRA") -> "AdapterConfigs":
        """The configs of a file from its safetensors ``metadata`` and an ``adapter_config.json`` dict."""
        found = cls()
        metadata = metadata or {}
        raw = metadata.get("lora_adapter_metadata")
        if raw:
            try:
                config = json.loads(raw)
            except (TypeError, ValueError) as error:
                raise ValueError(f"LoRA {label}: its lora_adapter_metadata is not valid JSON ({error})") from None
            if not isinstance(config, Mapping):
                raise ValueError(f"LoRA {label}: its lora_adapter_metadata is not a JSON object")
            for component, fields in _split_components(config).items():
                found.configs[component] = LoraScaling.from_config(
                    fields, f"LoRA {label} lora_adapter_metadata" + (f" ({component})" if component else ""))
        if sidecar is not None and None not in found.configs:
            peft_type = str(sidecar.get("peft_type", "LORA")).upper()
            if peft_type != "LORA":
                raise ValueError(f"LoRA {label}: {sidecar_name} describes a PEFT {peft_type} adapter; only PEFT LORA "
                                 "adapters (lora_A / lora_B, optionally DoRA) can be merged")
            found.configs[None] = LoraScaling.from_config(sidecar, f"{sidecar_name} of LoRA {label}")
        if None not in found.configs and not found.configs:
            for key in ("lora_alpha", "ss_network_alpha"):
                try:
                    alpha = float(metadata[key])
                except (KeyError, ValueError):
                    continue
                found.configs[None] = LoraScaling.from_config({"lora_alpha": alpha}, f"LoRA {label} metadata {key}")
                break
        return found


def _split_components(config: Mapping) -> Dict[Optional[str], Dict]:
    """``{"unet.lora_alpha": 8, "text_encoder.lora_alpha": 2}`` or ``{"unet": {...}}`` -> one dict per component."""
    split: Dict[Optional[str], Dict] = {}
    for key, value in config.items():
        head, dot, rest = str(key).partition(".")
        if head in _COMPONENT_PREFIXES and isinstance(value, Mapping) and not dot:
            split.setdefault(_COMPONENT_PREFIXES[head], {}).update(value)
        elif dot and head in _COMPONENT_PREFIXES:
            split.setdefault(_COMPONENT_PREFIXES[head], {})[rest] = value
        elif head not in _COMPONENT_PREFIXES:
            split.setdefault(None, {})[str(key)] = value
    return {component: fields for component, fields in split.items()
            if component is not None or any(name in fields for name in _FIELDS)}
