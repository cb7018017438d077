"""Which model weight a LoRA module name refers to (checkpoint-formats.md §2.1-2.6).

Rather than parsing underscores (``lora_unet_down_blocks_0_attentions_0_proj_in`` is ambiguous
to split), every name a trainer could have written is generated from the target model's own
weight names and looked up, as ComfyUI does:

* kohya / LyCORIS: ``lora_unet_`` + module path with ``.`` → ``_``, for both the diffusers
  path and the LDM path (``input_blocks_1_1_...``); ``lycoris_`` + diffusers path; text encoder
  ``lora_te_`` / ``lora_te1_`` + ``text_model_...``.
* dotted names, optionally prefixed ``unet.`` / ``text_encoder.`` / ``base_model.model.`` /
  ``model.diffusion_model.`` / ``diffusion_model.`` / ``cond_stage_model.transformer.``
  (diffusers-new and PEFT), and diffusers' old attention-processor names
  (``attn1.processor.to_q_lora``, ``to_out_lora`` → ``to_out.0``; text ``self_attn.to_q_lora``
  → ``q_proj``, ``to_out_lora`` → ``out_proj``).

SDXL's second text encoder (``lora_te2_``) is recognised so it can be refused by name.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

UNET, TEXT, VAE = "unet", "text_encoder", "vae"

_TEXT_ATTN_PROC = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

# (file-name prefix, component or None for "either", style) in the order they are tried
_PREFIXES: Tuple[Tuple[str, Optional[str], str], ...] = (
    ("lora_unet_", UNET, "_"), ("lycoris_", UNET, "_"),
    ("lora_te1_", TEXT, "_"), ("lora_te_", TEXT, "_"),
    ("unet.base_model.model.", UNET, "."), ("text_encoder.base_model.model.", TEXT, "."),
    ("base_model.model.unet.", UNET, "."), ("base_model.model.text_encoder.", TEXT, "."),
    ("base_model.model.", None, "."),
    ("unet.", UNET, "."), ("text_encoder.", TEXT, "."),
    ("model.diffusion_model.", UNET, "."), ("diffusion_model.", UNET, "."),
    ("cond_stage_model.transformer.", TEXT, "."), ("cond_stage_model.", TEXT, "."),
    ("", None, "."),
)

SDXL_PREFIXES = ("lora_te2_", "text_encoder_2.", "conditioner.embedders.")


class LoraTargets:
    """Lookup from LoRA module names to ``(component, weight key)`` of the model being merged.

    ``aliases[component]`` maps each canonical weight key (``....weight``) of that component
    to other full names of the same weight (e.g. its LDM name without the file prefix);
    the module path is the key minus ``.weight``.
    """

    def __init__(self, aliases: Mapping[str, Mapping[str, Iterable[str]]]):
        self._dotted: Dict[str, Dict[str, str]] = {}
        self._underscored: Dict[str, Dict[str, str]] = {}
        for component, keys in aliases.items():
            dotted = self._dotted.setdefault(component, {})
            for key, others in keys.items():
                if not key.endswith(".weight"):
                    continue
                for name in (key, *others):
                    path = name[: -len(".weight")] if name.endswith(".weight") else name
                    for variant in _variants(component, path):
                        dotted.setdefault(variant, key)
            self._underscored[component] = {path.replace(".", "_"): key for path, key in dotted.items()}

    def resolve(self, name: str) -> Optional[Tuple[str, str]]:
        """``(component, weight key)`` for a LoRA module name, or None when nothing matches."""
        for prefix, component, style in _PREFIXES:
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            for candidate_component in ((component,) if component else (UNET, TEXT)):
                table = (self._underscored if style == "_" else self._dotted).get(candidate_component, {})
                for candidate in _normalise(candidate_component, rest, style):
                    key = table.get(candidate)
                    if key is not None:
                        return candidate_component, key
        return None


def _variants(component: str, path: str):
    yield path
    if component == TEXT:  # transformers < 5 keeps a "text_model." prefix, 5.x does not
        yield path[len("text_model."):] if path.startswith("text_model.") else "text_model." + path


def _normalise(component: str, rest: str, style: str):
    """The name itself, then the diffusers attention-processor spelling undone."""
    yield rest
    if style != ".":
        return
    plain = rest.replace(".processor.", ".")
    plain = re.sub(r"_lora$", "", plain)
    if component == UNET:
        plain = re.sub(r"\.to_out$", ".to_out.0", plain)
    else:
        head, _, last = plain.rpartition(".")
        plain = f"{head}.{_TEXT_ATTN_PROC.get(last, last)}" if head else plain
    if plain != rest:
        yield plain
