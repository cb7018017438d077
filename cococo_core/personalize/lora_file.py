"""Group the tensors of a LoRA-family file into per-module adapters.

A key is ``<module name><suffix>``; the suffix says which factor it is (checkpoint-formats.md
§2.1-2.3): kohya / LyCORIS (``.lora_up.weight``, ``.alpha``, ``.hada_w1_a``, ``.lokr_w1``,
``.diff``, ``.dora_scale`` ...), diffusers (``.lora.up.weight``, old attn-processor
``to_q_lora.up.weight``, ``.lora_linear_layer.up.weight``) and PEFT (``.lora_A.weight`` /
``.lora_B.weight``, ``.lora_magnitude_vector``). Keys that fit no known pattern, and
modules whose factors are incomplete or of an unsupported algorithm (IA³, GLoRA, OFT ...),
are returned as *unused* with the reason, never dropped silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch

from . import lora_delta

# (suffix, role); longer suffixes first so ".lora.up.weight" wins over ".up.weight"
_SUFFIXES: Tuple[Tuple[str, str], ...] = tuple(sorted((
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".up.weight", "up"), (".down.weight", "down"),
    (".alpha", "alpha"),
    (".dora_scale", "dora_scale"), (".lora_magnitude_vector", "dora_scale"),
    (".lora_magnitude_vector.weight", "dora_scale"), (".lora_magnitude_vector.default.weight", "dora_scale"),
    (".hada_w1_a", "hada_w1_a"), (".hada_w1_b", "hada_w1_b"), (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"), (".hada_t1", "hada_t1"), (".hada_t2", "hada_t2"),
    (".lokr_w1", "lokr_w1"), (".lokr_w1_a", "lokr_w1_a"), (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2", "lokr_w2"), (".lokr_w2_a", "lokr_w2_a"), (".lokr_w2_b", "lokr_w2_b"), (".lokr_t2", "lokr_t2"),
    (".diff", "diff"), (".diff_b", "diff_b"), (".w_norm", "diff"), (".b_norm", "diff_b"),
    # recognised so they can be reported by name (no SD1.5 tool merges them into weights)
    (".on_input", "ia3"), (".a1.weight", "glora"), (".a2.weight", "glora"), (".b1.weight", "glora"),
    (".b2.weight", "glora"), (".oft_blocks", "oft"), (".oft_diag", "oft"), (".oft_R.weight", "oft"),
), key=lambda item: -len(item[0])))

_UNSUPPORTED = {"ia3": "IA³ (scales activations, not weights)", "glora": "GLoRA", "oft": "OFT / BOFT"}


@dataclass
class LoraModule:
    """One adapted module of a LoRA file: its factors by role and the file keys they came from."""

    name: str
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    keys: Dict[str, str] = field(default_factory=dict)  # role -> file key
    default_alpha: Optional[float] = None  # from metadata (PEFT), used when no ".alpha" tensor

    def on(self, device) -> "LoraModule":
        """The same module with its factors on ``device`` (alpha resolved first, so "meta" works too)."""
        device = torch.device(device)
        if all(t.device == device for t in self.tensors.values()):
            return self
        return LoraModule(self.name, {r: t.to(device) for r, t in self.tensors.items() if r != "alpha"},
                          dict(self.keys), default_alpha=self.alpha)

    @property
    def alpha(self) -> Optional[float]:
        if "alpha" in self.tensors:
            return float(self.tensors["alpha"].float().reshape(-1)[0])
        return self.default_alpha

    @property
    def kind(self) -> str:
        roles = set(self.tensors)
        if "up" in roles or "down" in roles:
            return "lora"
        if any(r.startswith("hada_") for r in roles):
            return "loha"
        if any(r.startswith("lokr_") for r in roles):
            return "lokr"
        if "diff" in roles or "diff_b" in roles:
            return "full"
        for role in roles:
            if role in _UNSUPPORTED:
                return role
        return "none"

    def problem(self) -> Optional[str]:
        """Why this module cannot be merged, or None."""
        kind, roles = self.kind, set(self.tensors)
        if kind in _UNSUPPORTED:
            return f"{_UNSUPPORTED[kind]} is not supported"
        if kind == "none":
            return "only " + ", ".join(sorted(roles)) + " without any weight factors"
        needed = {"lora": {"up", "down"}, "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}}.get(kind, set())
        if kind == "lokr":
            if not ({"lokr_w1"} <= roles or {"lokr_w1_a", "lokr_w1_b"} <= roles):
                return "LoKr without lokr_w1 or lokr_w1_a/b"
            if not ({"lokr_w2"} <= roles or {"lokr_w2_a", "lokr_w2_b"} <= roles):
                return "LoKr without lokr_w2 or lokr_w2_a/b"
        missing = needed - roles
        if missing:
            return f"{kind} factors missing: " + ", ".join(sorted(missing))
        return None

    @property
    def is_dora(self) -> bool:
        return "dora_scale" in self.tensors

    @property
    def has_weight_delta(self) -> bool:
        return self.kind in ("lora", "loha", "lokr") or "diff" in self.tensors

    def weight_delta(self, target_shape) -> torch.Tensor:
        """Δ for the module's weight in float32 (before DoRA and strength)."""
        kind = self.kind
        if kind == "lora":
            return lora_delta.lora(self.tensors["up"], self.tensors["down"], target_shape,
                                   alpha=self.alpha, mid=self.tensors.get("mid"))
        if kind == "loha":
            return lora_delta.loha(self.tensors, target_shape, alpha=self.alpha)
        if kind == "lokr":
            return lora_delta.lokr(self.tensors, target_shape, alpha=self.alpha)
        diff = self.tensors["diff"].to(torch.float32)
        if diff.numel() != torch.Size(target_shape).numel():
            raise ValueError(f"full diff of shape {tuple(diff.shape)} does not fit a weight of shape {tuple(target_shape)}")
        return diff.reshape(tuple(target_shape))

    def bias_delta(self) -> Optional[torch.Tensor]:
        bias = self.tensors.get("diff_b")
        return None if bias is None else bias.to(torch.float32)

    def input_dim(self) -> Optional[int]:
        """Input features of the adapted layer where the factors say it (used to tell SD1 / SD2 / SDXL apart)."""
        t = self.tensors
        if "down" in t:
            return int(t["down"].shape[1])
        if "hada_w1_b" in t and "hada_t1" not in t:
            return int(t["hada_w1_b"].shape[1])
        if "diff" in t and t["diff"].dim() >= 2:
            return int(t["diff"].shape[1])
        return None


@dataclass
class ParsedLora:
    modules: Dict[str, LoraModule]
    unused: Dict[str, str]  # file key -> reason


def split_key(key: str) -> Optional[Tuple[str, str]]:
    """(module name, role) of a file key, or None when no known suffix matches."""
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    return None


def metadata_alpha(metadata: Optional[Mapping[str, str]]) -> Optional[float]:
    """A global LoRA alpha stored in safetensors metadata by PEFT-family trainers, if any.

    Understood: diffusers' ``lora_adapter_metadata`` (a JSON LoraConfig with ``lora_alpha``;
    flat ``unet.lora_alpha`` keys or nested per-component configs: the first found), and a plain
    ``lora_alpha`` / ``ss_network_alpha`` string. Per-module alpha tensors win over it; PEFT's
    per-module ``alpha_pattern`` is not read.
    """
    if not metadata:
        return None
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            config = json.loads(raw)
        except (TypeError, ValueError):
            config = {}
        found = _find_alpha(config)
        if found is not None:
            return found
    for key in ("lora_alpha", "ss_network_alpha"):
        value = metadata.get(key)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                continue
    return None


def _find_alpha(config) -> Optional[float]:
    """The first ``lora_alpha`` (or ``<component>.lora_alpha``) number in a JSON config, nested or flat."""
    if not isinstance(config, dict):
        return None
    for key, value in config.items():
        if key.split(".")[-1] == "lora_alpha" and isinstance(value, (int, float)):
            return float(value)
    for value in config.values():
        found = _find_alpha(value)
        if found is not None:
            return found
    return None


def parse_lora(state: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> ParsedLora:
    """Group ``state`` (file key -> tensor) into :class:`LoraModule` s by module name."""
    modules: Dict[str, LoraModule] = {}
    unused: Dict[str, str] = {}
    default_alpha = metadata_alpha(metadata)
    for key, tensor in state.items():
        split = split_key(key)
        if split is None:
            unused[key] = "not a known LoRA / LyCORIS / PEFT tensor name"
            continue
        name, role = split
        module = modules.setdefault(name, LoraModule(name, default_alpha=default_alpha))
        if role in module.tensors:  # e.g. two glora factors; keep all keys accounted for
            role = f"{role}#{len(module.tensors)}"
        module.tensors[role] = tensor
        module.keys[role] = key
    usable: Dict[str, LoraModule] = {}
    for name, module in modules.items():
        reason = module.problem()
        if reason is None:
            usable[name] = module
        else:
            for key in module.keys.values():
                unused[key] = reason
    return ParsedLora(usable, unused)
