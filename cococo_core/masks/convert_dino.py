"""GroundingDINO: original checkpoint layout -> transformers ``GroundingDinoForObjectDetection``, in memory.

Original layout (IDEA-Research/GroundingDINO, ``groundingdino_swint_ogc.pth`` / ``groundingdino_swinb_cogcoor.pth``:
``{"model": {...}}``, keys possibly prefixed ``module.``):

* Swin backbone ``backbone.0.{patch_embed.{proj,norm}, layers.S.blocks.B.{norm1, attn.{qkv, proj,
  relative_position_bias_table, relative_position_index}, norm2, mlp.{fc1,fc2}}, layers.S.downsample.{reduction,norm},
  norm{1,2,3}}`` (the fused ``qkv`` is split into q/k/v; ``norm{i}`` normalises output stage i+1);
* text: ``bert.*`` (a BERT without pooler use), ``feat_map`` (BERT -> d_model);
* ``input_proj.L.{0,1}`` (conv + GroupNorm per feature level);
* ``transformer.{level_embed, tgt_embed, enc_output, enc_output_norm, enc_out_bbox_embed.layers.M}``;
  encoder ``transformer.encoder.{layers.N (deformable), text_layers.N (text enhancer, nn.MultiheadAttention),
  fusion_layers.N (bi-attention)}``; decoder ``transformer.decoder.{layers.N, norm, ref_point_head, bbox_embed}``;
* ``bbox_embed.N.layers.M`` (shared box head).

Both ``nn.MultiheadAttention`` blocks (``in_proj_weight``) are split into the transformers query/key/value
projections. Sizes come from tensor shapes; head counts (not visible in shapes) come from the original
``GroundingDINO_*.py`` config file when given, else GroundingDINO's defaults (8 heads).
"""
from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from .convert_sam import count_indexed

log = logging.getLogger(__name__)

_SWIN = "model.backbone.conv_encoder.model.swin."
_NORMS = "model.backbone.conv_encoder.model.hidden_states_norms."

# Renames inside one Swin block (original -> transformers >= 5).
_SWIN_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "attn.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_DEFORMABLE = {
    "self_attn.sampling_offsets": "deformable_layer.self_attn.sampling_offsets",
    "self_attn.attention_weights": "deformable_layer.self_attn.attention_weights",
    "self_attn.value_proj": "deformable_layer.self_attn.value_proj",
    "self_attn.output_proj": "deformable_layer.self_attn.output_proj",
    "norm1": "deformable_layer.self_attn_layer_norm",
    "linear1": "deformable_layer.fc1",
    "linear2": "deformable_layer.fc2",
    "norm2": "deformable_layer.final_layer_norm",
}
_TEXT_ENHANCER = {
    "self_attn.out_proj": "text_enhancer_layer.self_attn.out_proj",
    "linear1": "text_enhancer_layer.fc1",
    "linear2": "text_enhancer_layer.fc2",
    "norm1": "text_enhancer_layer.layer_norm_before",
    "norm2": "text_enhancer_layer.layer_norm_after",
}
_FUSION = {
    "gamma_v": "fusion_layer.vision_param",
    "gamma_l": "fusion_layer.text_param",
    "layer_norm_v": "fusion_layer.layer_norm_vision",
    "layer_norm_l": "fusion_layer.layer_norm_text",
    "attn.v_proj": "fusion_layer.attn.vision_proj",
    "attn.l_proj": "fusion_layer.attn.text_proj",
    "attn.values_v_proj": "fusion_layer.attn.values_vision_proj",
    "attn.values_l_proj": "fusion_layer.attn.values_text_proj",
    "attn.out_v_proj": "fusion_layer.attn.out_vision_proj",
    "attn.out_l_proj": "fusion_layer.attn.out_text_proj",
}
_DECODER = {
    "cross_attn.sampling_offsets": "encoder_attn.sampling_offsets",
    "cross_attn.attention_weights": "encoder_attn.attention_weights",
    "cross_attn.value_proj": "encoder_attn.value_proj",
    "cross_attn.output_proj": "encoder_attn.output_proj",
    "norm1": "encoder_attn_layer_norm",
    "ca_text.out_proj": "encoder_attn_text.out_proj",
    "catext_norm": "encoder_attn_text_layer_norm",
    "self_attn.out_proj": "self_attn.out_proj",
    "norm2": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm3": "final_layer_norm",
}
# Fused projections split in three: original module -> transformers (query, key, value) module names.
_FUSED = {
    r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv$":
        (_SWIN + r"encoder.layers.\1.blocks.\2.attention.", ("q_proj", "k_proj", "v_proj")),
    r"^transformer\.encoder\.text_layers\.(\d+)\.self_attn\.in_proj$":
        (r"model.encoder.layers.\1.text_enhancer_layer.self_attn.", ("query", "key", "value")),
    r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj$":
        (r"model.decoder.layers.\1.self_attn.", ("query", "key", "value")),
    r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.in_proj$":
        (r"model.decoder.layers.\1.encoder_attn_text.", ("query", "key", "value")),
}
# transformers' Swin final LayerNorm: the backbone returns the per-stage ``hidden_states_norms`` instead.
UNUSED_TARGETS = (_SWIN + "layernorm.",)
# Buffers recomputed by the model itself.
_DROPPED = re.compile(r"(relative_position_index|attn_mask|position_ids)$|^bert\.pooler\.")


def _prefix_rules() -> list[tuple[re.Pattern, str]]:
    """(original module prefix, transformers prefix); a prefix ends at a '.' or at the end of the key."""
    rules = [
        (r"backbone\.0\.patch_embed\.proj", _SWIN + "embeddings.patch_embeddings.projection"),
        (r"backbone\.0\.patch_embed\.norm", _SWIN + "embeddings.norm"),
        (r"backbone\.0\.layers\.(\d+)\.downsample", _SWIN + r"encoder.layers.\1.downsample"),
        (r"bert", "model.text_backbone"),
        (r"feat_map", "model.text_projection"),
        (r"input_proj", "model.input_proj_vision"),
        (r"transformer\.level_embed", "model.level_embed"),
        (r"transformer\.tgt_embed", "model.query_position_embeddings"),
        (r"transformer\.enc_output", "model.enc_output"),
        (r"transformer\.enc_output_norm", "model.enc_output_norm"),
        (r"transformer\.enc_out_bbox_embed", "model.encoder_output_bbox_embed"),
        (r"transformer\.decoder\.norm", "model.decoder.layer_norm"),
        (r"transformer\.decoder\.ref_point_head", "model.decoder.reference_points_head"),
        (r"transformer\.decoder\.bbox_embed", "model.decoder.bbox_embed"),
        (r"bbox_embed", "bbox_embed"),
    ]
    rules += [(rf"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.{re.escape(name)}",
               _SWIN + rf"encoder.layers.\1.blocks.\2.{new}") for name, new in _SWIN_BLOCK.items()]
    for table, source in ((_DEFORMABLE, "layers"), (_TEXT_ENHANCER, "text_layers"), (_FUSION, "fusion_layers")):
        rules += [(rf"transformer\.encoder\.{source}\.(\d+)\.{re.escape(name)}", rf"model.encoder.layers.\1.{new}")
                  for name, new in table.items()]
    rules += [(rf"transformer\.decoder\.layers\.(\d+)\.{re.escape(name)}", rf"model.decoder.layers.\1.{new}")
              for name, new in _DECODER.items()]
    return [(re.compile(f"^{pattern}(?=\\.|$)"), replacement) for pattern, replacement in rules]


_RULES = _prefix_rules()
_STAGE_NORM = re.compile(r"^backbone\.0\.norm(\d+)\.(weight|bias)$")


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def is_original_grounding_dino(keys) -> bool:
    keys = set(keys)
    return "backbone.0.patch_embed.proj.weight" in keys and any(k.startswith("transformer.") for k in keys)


def _split_fused(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    stem, _, kind = key.rpartition(".")
    if kind not in ("weight", "bias", "in_proj_weight", "in_proj_bias"):
        return None
    if kind.startswith("in_proj_"):
        stem, kind = f"{stem}.in_proj", kind[len("in_proj_"):]
    for pattern, (target, names) in _FUSED.items():
        match = re.match(pattern, stem)
        if match:
            prefix = match.expand(target)
            return {f"{prefix}{name}.{kind}": part for name, part in zip(names, value.chunk(3, dim=0))}
    return None


def convert_grounding_dino_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original GroundingDINO state dict to transformers keys; raises ValueError on unknown keys."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in strip_module_prefix(state).items():
        if _DROPPED.search(key):
            continue
        split = _split_fused(key, value)
        if split is not None:
            converted.update(split)
            continue
        match = _STAGE_NORM.match(key)
        if match:
            converted[f"{_NORMS}stage{int(match.group(1)) + 1}.{match.group(2)}"] = value
            continue
        for pattern, replacement in _RULES:
            if pattern.match(key):
                converted[pattern.sub(replacement, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"not an original GroundingDINO checkpoint: {len(unknown)} tensors have unknown names "
            f"(e.g. {', '.join(unknown[:5])})"
        )
    return converted


# transformers 4.x named the Swin backbone's modules differently (no ``swin.`` level, BERT-style attention names).
_SWIN_V4 = [
    (re.compile(r"^model\.backbone\.conv_encoder\.model\.swin\."), "model.backbone.conv_encoder.model."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.self.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.self.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.self.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.attention\.relative_position_bias\.relative_position_bias_table$"),
     ".attention.self.relative_position_bias_table"),
    (re.compile(r"(\.blocks\.\d+)\.mlp\.fc1\."), r"\1.intermediate.dense."),
    (re.compile(r"(\.blocks\.\d+)\.mlp\.fc2\."), r"\1.output.dense."),
]


def match_model_naming(state: dict[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Rename converted Swin keys to transformers 4.x names when ``model_keys`` use them (else unchanged)."""
    model_keys = set(model_keys)
    if any(".conv_encoder.model.swin." in k for k in model_keys):
        return state
    renamed = {}
    for key, value in state.items():
        if key.startswith(_SWIN):
            for pattern, replacement in _SWIN_V4:
                key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def read_original_config(path: str | Path) -> dict:
    """Literal assignments (``nheads = 8``) of an original ``GroundingDINO_*.py`` config file.

    The file is parsed, never executed: anything that is not a plain literal is skipped.
    """
    values = {}
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable GroundingDINO config file ({error})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def _swin_config(state: Mapping[str, torch.Tensor]):
    from transformers import SwinConfig

    keys = list(state)
    embed = state["backbone.0.patch_embed.proj.weight"]
    stages = count_indexed(keys, r"^backbone\.0\.layers\.(\d+)\.")
    depths = [count_indexed(keys, rf"^backbone\.0\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages)]
    tables = [state[f"backbone.0.layers.{s}.blocks.0.attn.relative_position_bias_table"] for s in range(stages)]
    window = (round(tables[0].shape[0] ** 0.5) + 1) // 2
    out_norms = sorted(int(m.group(1)) for k in keys if (m := _STAGE_NORM.match(k)) and m.group(2) == "weight")
    return SwinConfig(
        embed_dim=embed.shape[0],
        patch_size=embed.shape[-1],
        depths=depths,
        num_heads=[t.shape[1] for t in tables],
        window_size=window,
        mlp_ratio=state["backbone.0.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed.shape[0],
        out_indices=[i + 1 for i in out_norms],
        image_size=224 if window == 7 else 384,
    )


def _bert_config(state: Mapping[str, torch.Tensor], text_config=None):
    from transformers import BertConfig

    keys = list(state)
    words = state["bert.embeddings.word_embeddings.weight"]
    inferred = dict(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_hidden_layers=count_indexed(keys, r"^bert\.encoder\.layer\.(\d+)\."),
        intermediate_size=state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["bert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["bert.embeddings.token_type_embeddings.weight"].shape[0],
    )
    if text_config is None:
        return BertConfig(num_attention_heads=max(1, inferred["hidden_size"] // 64), **inferred)
    for name, value in inferred.items():
        if getattr(text_config, name) != value:
            raise ValueError(f"the BERT config says {name}={getattr(text_config, name)} but the checkpoint has {value}")
    return text_config


def grounding_dino_config_from_state_dict(state: Mapping[str, torch.Tensor], original_config: dict | None = None,
                                          text_config=None):
    """A ``GroundingDinoConfig`` for an ORIGINAL-layout state dict (``module.`` prefix already stripped).

    ``original_config``: values read by :func:`read_original_config` (``nheads``, ``max_text_len``...);
    ``text_config``: the BERT config from the tokenizer folder (else inferred from shapes, 64-dim heads).
    """
    from transformers import GroundingDinoConfig

    original = dict(original_config or {})
    keys = list(state)
    d_model = state["feat_map.weight"].shape[0]
    heads = int(original.get("nheads", 8))
    levels = state["transformer.level_embed"].shape[0]
    enc_weights = state["transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0]
    dec_weights = state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0]
    if enc_weights % (heads * levels) or dec_weights % (heads * levels):
        raise ValueError(f"GroundingDINO: {heads} heads x {levels} levels do not divide the attention weights "
                         f"({enc_weights}, {dec_weights}); pass the model's original config file (nheads)")
    return GroundingDinoConfig(
        backbone_config=_swin_config(state),
        text_config=_bert_config(state, text_config),
        d_model=d_model,
        num_queries=state["transformer.tgt_embed.weight"].shape[0],
        encoder_layers=count_indexed(keys, r"^transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=count_indexed(keys, r"^transformer\.decoder\.layers\.(\d+)\."),
        encoder_ffn_dim=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=state["transformer.decoder.layers.0.linear1.weight"].shape[0],
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        num_feature_levels=levels,
        encoder_n_points=enc_weights // (heads * levels),
        decoder_n_points=dec_weights // (heads * levels),
        max_text_len=int(original.get("max_text_len", 256)),
        two_stage=True,
        embedding_init_target=True,
        decoder_bbox_embed_share=bool(original.get("dec_pred_bbox_embed_share", True)),
        two_stage_bbox_embed_share=bool(original.get("two_stage_bbox_embed_share", False)),
        positional_embedding_temperature=int(original.get("pe_temperatureH", 20)),
    )


def grounding_dino_variant(config) -> str:
    """'swin_t' | 'swin_b' for the released backbones, else 'custom (...)'."""
    backbone = config.backbone_config
    if backbone.embed_dim == 96 and list(backbone.depths) == [2, 2, 6, 2]:
        return "swin_t"
    if backbone.embed_dim == 128 and list(backbone.depths) == [2, 2, 18, 2]:
        return "swin_b"
    return f"custom (Swin embed {backbone.embed_dim}, depths {list(backbone.depths)})"
