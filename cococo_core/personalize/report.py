"""What a merge did: counts per component and every input key that was not used, with the reason."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class ComponentCounts:
    weights: int = 0        # weights written (the inpainting model's keys)
    task_vector: int = 0    # weights computed as lerp(SD-1.5, inpaint, α) (α ≠ 1); with α = 1 they are the inpaint weights
    personal: int = 0       # weights that received β·(θ_personal − θ_SD1.5)
    lora: int = 0           # weights that received a LoRA delta
    kept: int = 0           # weights copied from the inpainting model unchanged (no base / not float)
    padded: List[str] = field(default_factory=list)  # keys whose τ_p was zero-padded (conv_in)


@dataclass
class MergeReport:
    alpha: float
    betas: Dict[str, float]
    components: Dict[str, ComponentCounts] = field(default_factory=dict)
    unused: Dict[str, Dict[str, str]] = field(default_factory=dict)  # input label -> {key: reason}
    lora_modules: Dict[str, Dict[str, int]] = field(default_factory=dict)  # lora label -> {component: modules}
    notes: List[str] = field(default_factory=list)

    def counts(self, component: str) -> ComponentCounts:
        return self.components.setdefault(component, ComponentCounts())

    def add_unused(self, label: str, key: str, reason: str) -> None:
        self.unused.setdefault(label, {})[key] = reason

    def summary(self, max_keys: int = 20) -> str:
        """Human-readable report: one line per component and LoRA, then unused keys grouped by reason."""
        lines = [f"task-vector merge: alpha={self.alpha:g}, beta " +
                 ", ".join(f"{c}={b:g}" for c, b in self.betas.items())]
        for name, c in self.components.items():
            lines.append(f"  {name}: {c.weights} weights; alpha-scaled inpaint delta on {c.task_vector}, "
                         f"personal delta on {c.personal}, LoRA delta on {c.lora}, "
                         f"kept unchanged {c.kept}" + (f"; zero-padded: {', '.join(c.padded)}" if c.padded else ""))
        for label, per_component in self.lora_modules.items():
            done = ", ".join(f"{n} {c}" for c, n in per_component.items()) or "nothing"
            lines.append(f"  LoRA {label}: modules applied: {done}")
        lines.extend(f"  note: {note}" for note in self.notes)
        for label, keys in self.unused.items():
            if not keys:
                continue
            lines.append(f"  {label}: {len(keys)} keys not used")
            by_reason: Dict[str, List[str]] = {}
            for key, reason in keys.items():
                by_reason.setdefault(reason, []).append(key)
            for reason, names in by_reason.items():
                shown = ", ".join(names[:max_keys]) + (f", ... ({len(names) - max_keys} more)" if len(names) > max_keys else "")
                lines.append(f"    - {reason}: {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
