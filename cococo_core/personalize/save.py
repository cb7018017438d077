"""Merge straight into a single-file SD-1.x ``.safetensors`` checkpoint (LDM layout), tensor by tensor.

The output has the inpainting model's weights under their LDM names (``model.diffusion_model.*``,
``cond_stage_model.transformer.text_model.*``, ``first_stage_model.*``, VAE attention as 1×1 convs)
plus the CLIP ``position_ids`` buffer, i.e. what ComfyUI's checkpoint loader and
:mod:`cococo_core.checkpoints` read. Peak memory is about one weight in float32 (a few copies of the
largest tensor, the 49408×768 token embedding), independent of the model size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..checkpoints import ldm_keys
from ..hooks import CancelCheck, StepCallback, check_cancelled, report
from ..output_files import check_output
from .loras import lora_file
from .plan import MergePlan, MergeRecipe
from .report import MergeReport
from .safetensors_stream import SafetensorsStreamWriter


def _recipe_metadata(recipe: MergeRecipe, plan: MergePlan) -> dict:
    def name(source) -> Optional[str]:
        return None if source is None else (Path(str(source)).name if isinstance(source, (str, Path)) else "<in memory>")

    return {
        "inpaint": name(recipe.inpaint), "base": name(recipe.base), "personal": name(recipe.personal),
        "loras": [[spec.label() if isinstance(spec.source, Mapping) else Path(str(spec.source)).name, spec.strength]
                  for spec in recipe.lora_specs()],
        "alpha": plan.alpha, "beta": plan.betas,
    }


def _input_files(recipe: MergeRecipe):
    """``(role, path)`` of every file a merge reads (the files inside diffusers folders included)."""
    models = (("inpainting model", recipe.inpaint), ("SD-1.5 base model", recipe.base), ("personalized model", recipe.personal))
    for role, source in models:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            for found in (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]):
                yield role, found
    for spec in recipe.lora_specs():
        if isinstance(spec.source, (str, os.PathLike)) and Path(spec.source).exists():
            yield f"LoRA {spec.label()}", lora_file(spec.source)


def refuse_input_as_output(recipe: MergeRecipe, path) -> None:
    """ValueError when ``path`` already exists as one of the merge's input files (it would be replaced)."""
    path = Path(path)
    if not path.exists():
        return
    for role, found in _input_files(recipe):
        if found.exists() and os.path.samefile(found, path):
            raise ValueError(f"the output {path} is the {role} ({found}); writing the merge there would replace "
                             "an input. Choose another output file")


def save_merged(recipe: MergeRecipe, path, *, dtype: Optional[torch.dtype] = None,
                metadata: Optional[Mapping[str, str]] = None, device: Union[str, torch.device] = "cpu",
                callback: Optional[StepCallback] = None, cancel: Optional[CancelCheck] = None,
                overwrite: bool = False) -> MergeReport:
    """Write θ = θ_base + α·τ_ip + β·τ_p (see :mod:`.plan`) to ``path`` as an LDM single file.

    ``dtype``: floating-point dtype of the output (default: each weight's dtype in the inpainting
    model). ``metadata`` is added to the file's ``__metadata__`` (the merge recipe is always recorded
    under ``cococo.merge``); ``device`` is where the float32 arithmetic runs. A cancelled or failed
    merge leaves no file behind, and an output that is one of the input files is refused. An existing ``path`` is
    replaced only with ``overwrite`` (:mod:`cococo_core.output_files`: checked before the merge starts and again
    when the finished file takes its name, so of two merges to one new file exactly one wins).
    """
    path = Path(path)
    refuse_input_as_output(recipe, path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the merged checkpoint is written as .safetensors; give a path ending in .safetensors")
    check_output(path, overwrite=overwrite)
    with MergePlan(recipe, dtype=dtype, device=device) as plan:
        key_map = ldm_keys.SDKeyMap.from_diffusers_keys(plan.keys)
        entries, layout = [], []
        for component, key in plan.items():
            target = key_map.to_ldm(component, key)
            shape = plan.shape(component, key)
            if target.transform is not None:
                shape = tuple(target.transform(torch.empty(shape, device="meta")).shape)
            entries.append((target.key, plan.out_dtype(component, key), shape))
            layout.append((component, key, target))
        text = plan.inpaint.get("text_encoder")
        positions_key = "embeddings.position_embedding.weight"
        if "text_encoder" in plan.keys and text is not None and positions_key in text:
            entries.append((ldm_keys.CLIP_POSITION_IDS, torch.int64, (1, text.shape(positions_key)[0])))
        info = {"cococo.merge": json.dumps(_recipe_metadata(recipe, plan)), "format": "pt"}
        info.update(metadata or {})
        with SafetensorsStreamWriter(path, entries, info, overwrite=overwrite) as writer:
            total = len(entries)
            for step, (component, key, target) in enumerate(layout, 1):
                check_cancelled(cancel)
                tensor = plan.compute(component, key)
                writer.write(target.key, target.transform(tensor) if target.transform else tensor)
                report(callback, step, total)
            if len(entries) > len(layout):
                name, _, shape = entries[-1]
                writer.write(name, torch.arange(shape[1], dtype=torch.int64)[None])
                report(callback, total, total)
        return plan.report
