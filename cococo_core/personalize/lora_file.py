"""Group the tensors of a LoRA-family file into per-module adapters.

A key is ``<module name><suffix>``; the suffix says which factor it is (checkpoint-formats.md
§2.1-2.3): kohya / LyCORIS (``.lora_up.weight``, ``.alpha``, ``.hada_w1_a``, ``.lokr_w1``,
``.diff``, ``.dora_scale`` ...), diffusers (``.lora.up.weight``, old attn-processor
``to_q_lora.up.weight``, ``.lora_linear_layer.up.weight``) and PEFT (``.lora_A.weight`` /
``.lora_B.weight``, ``.lora_B.bias`` of ``lora_bias``, ``.lora_magnitude_vector``). Keys that fit no known pattern, and
modules whose factors are incomplete or of an unsupported algorithm (IA³, GLoRA, OFT ...),
are returned as *unused* with the reason, never dropped silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch

from . import lora_delta

# (suffix, role); longer suffixes first so ".lora.up.weight" wins over ".up.weight"
_SUFFIXES: Tuple[Tuple[str, str], ...] = tuple(sorted((
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora_B.bias", "lora_bias"), (".lora_B.default.bias", "lora_bias"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".up.weight", "up"), (".down.weight", "down"),
    (".alpha", "alpha"),
    (".dora_scale", "dora_scale"), (".lora_magnitude_vector", "magnitude"),
    (".lora_magnitude_vector.weight", "magnitude"), (".lora_magnitude_vector.default.weight", "magnitude"),
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
_PEFT_ROLES = ("up", "down")
F32_MAX = torch.finfo(torch.float32).max


@dataclass
class LoraModule:
    """One adapted module of a LoRA file: its factors by role and the file keys they came from.

    ``default_alpha`` / ``rslora`` come from the file's PEFT config (:mod:`.peft_config`) and are used
    when the module has no ``.alpha`` tensor of its own.
    """

    name: str
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    keys: Dict[str, str] = field(default_factory=dict)  # role -> file key
    default_alpha: Optional[float] = None
    rslora: bool = False

    def on(self, device) -> "LoraModule":
        """The same module with its factors on ``device`` (alpha resolved first, so "meta" works too)."""
        device = torch.device(device)
        if all(t.device == device for t in self.tensors.values()):
            return self
        return LoraModule(self.name, {r: t.to(device) for r, t in self.tensors.items() if r != "alpha"},
                          dict(self.keys), default_alpha=self.alpha, rslora=self.rslora)

    @property
    def alpha(self) -> Optional[float]:
        if "alpha" in self.tensors:
            return float(self.tensors["alpha"].double().reshape(-1)[0])
        return self.default_alpha

    @property
    def is_peft(self) -> bool:
        """Written in PEFT's own names (``lora_A`` / ``lora_B``), whose alpha lives in a config, not a tensor."""
        return any(".lora_A." in self.keys.get(r, "") or ".lora_B." in self.keys.get(r, "") for r in _PEFT_ROLES)

    @property
    def rank(self) -> Optional[int]:
        return int(self.tensors["down"].shape[0]) if "down" in self.tensors else None

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
        return "dora_scale" in self.tensors or "magnitude" in self.tensors

    def dora(self, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """W' − W for this DoRA module (PEFT's ``lora_magnitude_vector`` is per output channel)."""
        if "magnitude" in self.tensors:
            return lora_delta.dora(weight, delta, self.tensors["magnitude"], per_output=True)
        return lora_delta.dora(weight, delta, self.tensors["dora_scale"])

    def check(self, target_shape) -> None:
        """Every shape of the merge of this module into a weight of ``target_shape``, on the meta device
        (ValueError when a factor or the DoRA magnitude does not fit), and a finite float32 scale."""
        meta = self.on("meta")
        delta = meta.weight_delta(target_shape)
        if self.is_dora:
            meta.dora(torch.empty(tuple(target_shape), device="meta"), delta)
        scale = self.scale()
        if not math.isfinite(scale) or abs(scale) > F32_MAX:
            raise ValueError(f"scale alpha / rank = {scale:g} (alpha {self.alpha:g}) does not fit in float32")

    def scale(self) -> float:
        """The alpha scale of a ``lora`` module (1 for other kinds, whose scale is applied in their formula)."""
        rank = self.rank
        return 1.0 if rank is None else lora_delta.alpha_scale(self.alpha, rank, rslora=self.rslora)

    @property
    def has_weight_delta(self) -> bool:
        return self.kind in ("lora", "loha", "lokr") or "diff" in self.tensors

    def weight_delta(self, target_shape) -> torch.Tensor:
        """Δ for the module's weight in float32 (before DoRA and strength)."""
        kind = self.kind
        if kind == "lora":
            return lora_delta.lora(self.tensors["up"], self.tensors["down"], target_shape,
                                   alpha=self.alpha, mid=self.tensors.get("mid"), rslora=self.rslora)
        if kind == "loha":
            return lora_delta.loha(self.tensors, target_shape, alpha=self.alpha)
        if kind == "lokr":
            return lora_delta.lokr(self.tensors, target_shape, alpha=self.alpha)
        diff = self.tensors["diff"].to(torch.float32)
        if diff.numel() != torch.Size(target_shape).numel():
            raise ValueError(f"full diff of shape {tuple(diff.shape)} does not fit a weight of shape {tuple(target_shape)}")
        return diff.reshape(tuple(target_shape))

    def bias_delta(self) -> Optional[torch.Tensor]:
        """Δ for the module's bias in float32: ``diff_b``, or PEFT's ``lora_B.bias`` (``lora_bias``) times the scale."""
        if "diff_b" in self.tensors:
            return self.tensors["diff_b"].to(torch.float32)
        bias = self.tensors.get("lora_bias")
        return None if bias is None else bias.to(torch.float32) * self.scale()

    @property
    def bias_key(self) -> Optional[str]:
        return self.keys.get("diff_b", self.keys.get("lora_bias"))

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


def parse_lora(state: Mapping[str, torch.Tensor]) -> ParsedLora:
    """Group ``state`` (file key -> tensor) into :class:`LoraModule` s by module name."""
    modules: Dict[str, LoraModule] = {}
    unused: Dict[str, str] = {}
    for key, tensor in state.items():
        split = split_key(key)
        if split is None:
            unused[key] = "not a known LoRA / LyCORIS / PEFT tensor name"
            continue
        name, role = split
        module = modules.setdefault(name, LoraModule(name))
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
