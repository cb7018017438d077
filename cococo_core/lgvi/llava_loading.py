"""LLaVA-1.5 for LGVI-I through transformers' own ``LlavaForConditionalGeneration`` (spec §2.1-2.2, §2.9).

Two source layouts:

* a llava-hf folder (``llava-hf/llava-1.5-7b-hf``: ``config.json`` with ``model_type: llava``):
  ``from_pretrained``, optionally 4-/8-bit through bitsandbytes where it imports;
* the original layout (``liuhaotian/llava-v1.5-7b``, ``model_type: llava_llama`` / ``mm_*`` keys) plus
  a CLIP vision folder (``openai/clip-vit-large-patch14-336``): keys mapped onto the transformers model
  (``model.layers.*`` -> the language model, ``model.mm_projector.{0,2}`` -> ``multi_modal_projector.
  linear_{1,2}``, ``vision_model.*`` -> the vision tower). Pickled shards load with ``weights_only=True``.

Then LGVI-I's ``llava/llava_weights.pth`` replaces three modules (official ``load_mllm_weights``):
``language_embedding`` -> the first rows of ``embed_tokens``, ``vision_embedding`` -> the projector, and
``transfer_layer`` -> the transfer head ``Linear(4096,4096) -> ReLU -> Linear(4096,768, no bias)``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os

import torch
from torch import nn

from ..checkpoints.base import read_weight_folder
from ..checkpoints.pretrained import load_pretrained
from ..checkpoints.safe_load import load_state_dict
from ..checkpoints.keys import compare_keys, shapes_of
from .unet_loading import CheckpointKeyError

logger = logging.getLogger(__name__)

_WEIGHT_STEMS = ("model", "pytorch_model")


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def is_llava_hf_folder(folder: str) -> bool:
    config_path = os.path.join(folder, "config.json")
    return os.path.isfile(config_path) and _read_json(config_path).get("model_type") == "llava"


def read_folder_state(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of a transformers-style folder (single file or shards listed in an index)."""
    return read_weight_folder(folder, _WEIGHT_STEMS)


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # a SentencePiece-only folder needs the optional sentencepiece package
        raise ValueError(f"cannot load the LLaVA tokenizer from {folder} ({error}); the original layout's "
                         f"tokenizer.model needs the 'sentencepiece' package, or use a llava-hf folder") from error


def load_llava(path, *, clip_path=None, device="cpu", dtype=torch.float32, quantization: str | None = None):
    """(model, tokenizer) from a llava-hf folder or the original layout (+ ``clip_path``)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no LLaVA model at {path}: expected config.json (llava-hf/llava-1.5-7b-hf or liuhaotian/llava-v1.5-7b)")
    if is_llava_hf_folder(path):
        model = _from_pretrained_hf(path, device, dtype, quantization)
    else:
        if quantization:
            raise ValueError("4-/8-bit loading is supported for llava-hf folders only")
        model = _from_original_layout(path, clip_path, dtype).to(device)
    return model.eval(), load_tokenizer(path)


def _from_pretrained_hf(path, device, dtype, quantization):
    from transformers import LlavaForConditionalGeneration  # noqa: PLC0415

    kwargs = {}
    if quantization:
        kwargs.update(quantization_config=_bnb_config(quantization, dtype), device_map={"": torch.device(device).index or 0})

    def load(folder):
        try:
            return LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype, **kwargs)
        except TypeError:  # transformers 4.x spells it torch_dtype
            return LlavaForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype, **kwargs)

    model = load_pretrained(load, path)
    return model if quantization else model.to(device)


def _bnb_config(quantization: str, dtype):
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization must be '4bit' or '8bit', got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise ValueError(f"{quantization} loading needs the 'bitsandbytes' package and a CUDA GPU; load without quantization instead")
    if importlib.util.find_spec("accelerate") is None:
        raise ValueError(f"{quantization} loading needs the 'accelerate' package (transformers places quantized weights with it)")
    from transformers import BitsAndBytesConfig  # noqa: PLC0415

    # the modules LGVI-I replaces (and the vision tower) stay in full precision
    skip = ["vision_tower", "multi_modal_projector", "lm_head"]
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True,
                                  bnb_4bit_quant_type="nf4", llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device (no 7B random init); buffers stay real."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def original_llava_config(raw: dict, vision_raw: dict):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig  # noqa: PLC0415

    projector = raw.get("mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        raise ValueError(f"LLaVA projector {projector!r} is not supported; LLaVA-1.5 uses 'mlp2x_gelu'")
    text = {k: v for k, v in raw.items() if not k.startswith(("mm_", "_")) and k not in ("model_type", "architectures", "auto_map")}
    vision = vision_raw.get("vision_config", vision_raw)
    vision = {k: v for k, v in vision.items() if k not in ("model_type", "architectures")}
    return LlavaConfig(
        text_config=LlamaConfig(**text),
        vision_config=CLIPVisionConfig(**vision),
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if raw.get("mm_vision_select_feature", "patch") == "patch" else "full",
        image_token_index=raw.get("vocab_size", 32000),  # never fed: the image features are spliced in directly
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def map_original_keys(llava_state: dict, vision_state: dict, target_keys) -> dict[str, torch.Tensor]:
    """Original LLaVA + CLIP vision keys -> the keys of this transformers version's Llava model."""
    target = set(target_keys)
    mapped = {}

    def put(candidates, value, source):
        for candidate in candidates:
            if candidate in target:
                mapped[candidate] = value
                return
        mapped[candidates[0]] = value  # reported as unexpected by the key check
        logger.debug("no target for %s", source)

    for key, value in llava_state.items():
        if key.endswith("rotary_emb.inv_freq") or key.startswith("model.vision_tower."):
            continue  # recomputed buffer / vision weights come from the CLIP folder
        if key.startswith("model.mm_projector."):
            index, rest = key[len("model.mm_projector."):].split(".", 1)
            name = {"0": "linear_1", "2": "linear_2"}.get(index, index)
            put([f"model.multi_modal_projector.{name}.{rest}", f"multi_modal_projector.{name}.{rest}"], value, key)
        elif key.startswith("model."):
            rest = key[len("model."):]
            put([f"model.language_model.{rest}", f"language_model.model.{rest}"], value, key)
        elif key.startswith("lm_head."):
            put([key, f"language_model.{key}"], value, key)
        else:
            put([key], value, key)
    for key, value in vision_state.items():
        if not key.startswith("vision_model.") or key.endswith("position_ids"):
            continue  # CLIP text tower / projections are not part of LLaVA
        rest = key[len("vision_model."):]
        put([f"model.vision_tower.{rest}", f"model.vision_tower.vision_model.{rest}", f"vision_tower.vision_model.{rest}"], value, key)
    return mapped


def _from_original_layout(path: str, clip_path, dtype):
    from transformers import LlavaForConditionalGeneration  # noqa: PLC0415

    raw = _read_json(os.path.join(path, "config.json"))
    clip_path = clip_path or raw.get("mm_vision_tower")
    if not clip_path or not os.path.isfile(os.path.join(clip_path, "config.json")):
        raise FileNotFoundError(
            f"{path} is an original-layout LLaVA without its vision tower; give the CLIP vision folder "
            f"(openai/clip-vit-large-patch14-336) as clip_path (config names {raw.get('mm_vision_tower')!r})"
        )
    config = original_llava_config(raw, _read_json(os.path.join(clip_path, "config.json")))
    with _parameters_on_meta():
        model = LlavaForConditionalGeneration(config)
    state = map_original_keys(read_folder_state(path), read_folder_state(clip_path), model.state_dict().keys())
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = compare_keys(model_shapes, shapes_of(state))
    if not report.ok:
        raise CheckpointKeyError(f"original-layout LLaVA at {path} (+ {clip_path}) does not match its config: {report.summary()}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model


def load_lgvi_mllm_weights(path) -> dict[str, torch.Tensor]:
    """``llava/llava_weights.pth`` as flat keys (``language_embedding.weight``, ``vision_embedding.0.weight``,
    ``transfer_layer.2.weight`` ...). The pickle holds nested state dicts; it is read with ``weights_only=True``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LGVI-I MLLM weights not found: {path} (the lgvi-i checkpoint's llava/llava_weights.pth)")
    if path.endswith((".safetensors", ".sft")):
        return load_state_dict(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    flat = {}

    def walk(prefix, node):
        if isinstance(node, torch.Tensor):
            flat[prefix] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)

    walk("", raw)
    return flat


def apply_lgvi_weights(model, weights: dict[str, torch.Tensor]) -> tuple[nn.Sequential, int]:
    """Overwrite embed_tokens rows and the projector; return (transfer head, LGVI vocabulary size)."""
    required = ["language_embedding.weight", "vision_embedding.0.weight", "vision_embedding.0.bias",
                "vision_embedding.2.weight", "vision_embedding.2.bias", "transfer_layer.0.weight",
                "transfer_layer.0.bias", "transfer_layer.2.weight"]
    missing = [key for key in required if key not in weights]
    if missing:
        raise CheckpointKeyError(f"LGVI-I MLLM weights lack {', '.join(missing)} (found {', '.join(sorted(weights)[:10])})")
    embed = model.get_input_embeddings().weight
    language = weights["language_embedding.weight"]
    if language.shape[1] != embed.shape[1] or language.shape[0] > embed.shape[0]:
        raise CheckpointKeyError(f"LGVI-I language_embedding {tuple(language.shape)} does not fit the LLaVA embeddings {tuple(embed.shape)}")
    projector = model.model.multi_modal_projector if hasattr(model, "model") else model.multi_modal_projector
    with torch.no_grad():
        embed[: language.shape[0]].copy_(language.to(embed.dtype))
        for index, linear in (("0", projector.linear_1), ("2", projector.linear_2)):
            for name in ("weight", "bias"):
                source = weights[f"vision_embedding.{index}.{name}"]
                target = getattr(linear, name)
                if tuple(source.shape) != tuple(target.shape):
                    raise CheckpointKeyError(f"LGVI-I vision_embedding.{index}.{name} {tuple(source.shape)} vs projector {tuple(target.shape)}")
                target.copy_(source.to(target.dtype))
    first, second = weights["transfer_layer.0.weight"], weights["transfer_layer.2.weight"]
    head = nn.Sequential(nn.Linear(first.shape[1], first.shape[0]), nn.ReLU(), nn.Linear(second.shape[1], second.shape[0], bias=False), nn.Dropout(0.0))
    head.load_state_dict({"0.weight": first, "0.bias": weights["transfer_layer.0.bias"], "2.weight": second})
    return head.to(device=embed.device, dtype=embed.dtype).eval(), int(language.shape[0])
