"""Personalization by task vectors (CoCoCo, AAAI 2025): θ = θ_base + α·τ_ip + β·τ_p.

τ_ip = SD-1.5-inpainting − SD-1.5, τ_p = a DreamBooth / fine-tuned SD-1.5 checkpoint − SD-1.5 and/or
the deltas of LoRA-family files (kohya LoRA / LoCon, LyCORIS LoHa / LoKr / full, DoRA, diffusers and
PEFT layouts, with PEFT's per-component configs, alpha / rank patterns and rsLoRA). Merge in place into
loaded modules (:func:`personalize_modules`) or stream into a single-file checkpoint (:func:`save_merged`);
both report what was used (:class:`MergeReport`) and refuse inputs or results holding NaN / inf
(:class:`NonFiniteError`).
"""
from .apply import WeightBackup, personalize_modules, restore_modules
from .finite import NonFiniteError
from .loras import LoraSpec, LoraStack
from .plan import MergePlan, MergeRecipe
from .report import MergeReport
from .save import save_merged
from .sources import ModelSource, open_model

__all__ = [
    "LoraSpec", "LoraStack", "MergePlan", "MergeRecipe", "MergeReport", "ModelSource", "NonFiniteError", "WeightBackup",
    "open_model", "personalize_modules", "restore_modules", "save_merged",
]
