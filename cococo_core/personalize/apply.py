"""Apply a task-vector merge in place to loaded modules, so that it can be redone or undone.

Targets are plain ``nn.Module`` s or state dicts (a pipeline passes the 2-D U-Net inside its video
U-Net, the CLIP text encoder and the VAE); only their weights change, one tensor at a time, and
motion-module weights are never touched. The original (SD-inpainting) values come either from the
inpainting model's files, read again per tensor, or from a :class:`WeightBackup` that saved each
tensor the first time it was overwritten. Either way every merge starts from the originals: a
second merge with another β, or one after a cancelled merge, equals a merge into freshly loaded
modules, and :func:`restore_modules` puts the originals back.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Mapping, MutableMapping, Optional, Tuple, Union

import torch

from ..hooks import CancelCheck, StepCallback, check_cancelled, report
from .finite import is_finite
from .plan import MergePlan, MergeRecipe, is_motion_key
from .report import MergeReport
from .sources import ComponentSource, ModelSource, normalize_key

Target = Union[torch.nn.Module, MutableMapping[str, torch.Tensor]]


def _live_tensors(targets: Mapping[str, Target]) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{component: {normalised key: the live tensor}}`` (parameters and buffers, not copies)."""
    live = {}
    for component, target in targets.items():
        if target is None:
            continue
        state = target.state_dict(keep_vars=True) if isinstance(target, torch.nn.Module) else target
        live[component] = {}
        for key, tensor in state.items():
            name = normalize_key(component, key)
            if name is not None:
                live[component][name] = tensor
    return live


class _OverlaySource(ComponentSource):
    """A component's original values: the backed-up tensor where one was overwritten, else the live one."""

    def __init__(self, live: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]):
        self._live, self._saved = live, saved

    def keys(self) -> List[str]:
        return list(self._live)

    def _pick(self, key: str) -> torch.Tensor:
        return self._saved.get(key, self._live[key])

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self._pick(key).shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._pick(key).dtype

    def get(self, key: str) -> torch.Tensor:
        return self._pick(key).detach().to("cpu")


class WeightBackup:
    """Originals of the tensors a merge overwrote (kept on CPU in their own dtype).

    Create one per loaded model and pass it to every :func:`personalize_modules` call for that model;
    it then costs one copy of the merged weights (U-Net + text encoder + VAE, not motion modules).
    """

    def __init__(self) -> None:
        self.saved: Dict[str, Dict[str, torch.Tensor]] = {}

    def save(self, component: str, key: str, tensor: torch.Tensor) -> None:
        per = self.saved.setdefault(component, {})
        if key not in per:
            per[key] = tensor.detach().to("cpu", copy=True)

    def source(self, live: Dict[str, Dict[str, torch.Tensor]]) -> ModelSource:
        components = {c: _OverlaySource(t, self.saved.setdefault(c, {})) for c, t in live.items()}
        return ModelSource("<original weights (backup)>", components)

    def restore(self, targets: Mapping[str, Target]) -> int:
        """Copy every saved original back into ``targets``; returns how many tensors were restored."""
        live = _live_tensors(targets)
        count = 0
        with torch.no_grad():
            for component, saved in self.saved.items():
                for key, original in saved.items():
                    live[component][key].copy_(original)
                    count += 1
        return count

    def __len__(self) -> int:
        return sum(len(v) for v in self.saved.values())


def personalize_modules(targets: Mapping[str, Target], recipe: MergeRecipe, *, backup: Optional[WeightBackup] = None,
                        device: Union[str, torch.device] = "cpu", callback: Optional[StepCallback] = None,
                        cancel: Optional[CancelCheck] = None) -> MergeReport:
    """Merge ``recipe`` into ``targets`` (``{"unet"|"text_encoder"|"vae": module or state dict}``) in place.

    The originals are ``recipe.inpaint`` (the SD-inpainting files the targets were loaded from) or,
    when it is None, ``backup``'s saved values (the targets' current values the first time).

    All or nothing: every check (family, shapes, LoRA names, DoRA axes, finite inputs) runs before the
    first weight changes, and a first pass computes every merged weight and checks that it is finite
    in the target's dtype before a second pass writes them, so a failing merge leaves the targets
    bitwise unchanged (this costs the arithmetic twice). ``callback(step, 2·N, None)`` after each
    tensor of either pass; ``cancel()`` before each (``device``: where the float32 arithmetic runs): a
    merge cancelled while checking changes nothing, one cancelled while writing leaves the targets
    partly merged, and the next merge or :func:`restore_modules` brings them back to a defined state.
    """
    live = _live_tensors(targets)
    if recipe.inpaint is None:
        if backup is None:
            raise ValueError("give the inpainting model (recipe.inpaint) or a WeightBackup holding the original weights")
        recipe = replace(recipe, inpaint=backup.source(live))
    recipe = replace(recipe, components=tuple(c for c in recipe.components if c in live))
    with MergePlan(recipe, dtype=torch.float32, device=device) as plan:  # cast once, into each target's dtype
        work = []
        for component, key in plan.items():
            if is_motion_key(key):
                continue
            target = live[component].get(key)
            if target is None:
                plan.report.add_unused("inpaint", f"{component}:{key}", "the target module has no such weight")
                continue
            if tuple(target.shape) != plan.shape(component, key):
                raise ValueError(f"target {component}:{key} has shape {tuple(target.shape)} but the inpainting "
                                 f"model's is {plan.shape(component, key)}; the targets were not loaded from it")
            work.append((component, key, target))
        untouched = sum(len(t) for t in live.values()) - len(work)
        if untouched:
            plan.report.notes.append(f"{untouched} target tensors not in the inpainting model (e.g. motion modules) left unchanged")
        total = 2 * len(work)
        with torch.no_grad():
            for step, (component, key, target) in enumerate(work, 1):  # checking pass: nothing is written
                check_cancelled(cancel)
                merged = plan.compute(component, key)
                if merged.is_floating_point() and target.dtype != merged.dtype and not is_finite(merged.to(target.dtype)):
                    raise plan.non_finite(component, key, target.dtype)
                report(callback, step, total)
            for step, (component, key, target) in enumerate(work, len(work) + 1):
                check_cancelled(cancel)
                merged = plan.compute(component, key)
                if backup is not None:
                    backup.save(component, key, target)
                target.copy_(merged)
                report(callback, step, total)
        return plan.report


def restore_modules(targets: Mapping[str, Target], inpaint=None, *, backup: Optional[WeightBackup] = None,
                    callback: Optional[StepCallback] = None, cancel: Optional[CancelCheck] = None) -> int:
    """Put the original inpainting weights back (from ``backup`` if given, else by re-reading ``inpaint``)."""
    if backup is not None:
        return backup.restore(targets)
    if inpaint is None:
        raise ValueError("give the inpainting model or the WeightBackup to restore from")
    result = personalize_modules(targets, MergeRecipe(inpaint=inpaint, alpha=1.0, beta=0.0), callback=callback, cancel=cancel)
    return sum(c.weights for c in result.components.values())
