"""Tiny random-weight GroundingDINO and SAM, written in both layouts, for the masks-from-text tests.

The ORIGINAL-layout files are produced from a transformers model by the inverse renaming written out below
module by module from the original sources (segment-anything ``modeling/*.py``; GroundingDINO
``swin_transformer.py``, ``transformer.py``, ``fuse_modules.py``, ``groundingdino.py``), independently of the
converter under test, so a wrong rename on either side shows up as a failing comparison.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

# A WordPiece vocabulary whose special ids match bert-base-uncased ([CLS]=101, [SEP]=102, "."=1012, "?"=1029).
_WORDS = ["the", "a", "cat", "dog", "on", "left", "right", "person", "car", "red", "big", "and", "##s", "of", "man"]


def write_bert_folder(folder: Path, hidden: int = 32) -> Path:
    from transformers import BertConfig

    vocab = [f"[unused{i}]" for i in range(1100)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    vocab[104:104 + len(_WORDS)] = _WORDS
    vocab[1012], vocab[1029] = ".", "?"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=37, max_position_embeddings=64).to_json_file(str(folder / "config.json"))
    return folder


def tiny_dino_config(bert_folder: Path, num_queries: int = 30):
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(embed_dim=16, depths=[2, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                      out_indices=[2, 3, 4], image_size=224)
    return GroundingDinoConfig(
        backbone_config=swin, text_config=BertConfig.from_json_file(str(bert_folder / "config.json")),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=40, decoder_ffn_dim=40,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=num_queries,
    )


def tiny_dino(bert_folder: Path, num_queries: int = 30, seed: int = 0):
    from transformers import GroundingDinoForObjectDetection

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(tiny_dino_config(bert_folder, num_queries)).eval()
    _spread(model)
    return model


def tiny_sam(seed: int = 0):
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(seed)
    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                             mlp_dim=64, image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16, image_embedding_size=8)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, iou_head_hidden_dim=32)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).eval()
    _spread(model)
    return model


def _spread(model) -> None:
    """Replace near-zero random init (SAM's vision init is 1e-10) by weights that make every tensor matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0, 0.5 / max(1, param.shape[-1]) ** 0.5)


# -- inverse renaming: transformers -> original ------------------------------------------------------------------

def _sub_all(key: str, rules) -> str:
    for pattern, replacement in rules:
        key, count = re.subn(pattern, replacement, key)
        if count:
            return key
    return key


_MLP = r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
_SAM_INVERSE = [
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
    (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^vision_encoder\.", "image_encoder."),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    (_MLP + r"\.proj_in\.", r"\1.layers.0."),
    (_MLP + r"\.layers\.0\.", r"\1.layers.1."),
    (_MLP + r"\.proj_out\.", r"\1.layers.2."),
]


def sam_original_state(model) -> dict[str, torch.Tensor]:
    """The segment-anything state dict for a transformers SamModel (3-layer MLP heads, as in SAM)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("shared_image_embedding."):
            continue  # the original keeps the Fourier matrix once, in the prompt encoder
        state[_sub_all(key, _SAM_INVERSE)] = value.clone()
    state["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    state["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    return state


_SWIN = r"^model\.backbone\.conv_encoder\.model\.swin\."
_DINO_INVERSE = [
    (_SWIN + r"embeddings\.patch_embeddings\.projection\.", "backbone.0.patch_embed.proj."),
    (_SWIN + r"embeddings\.norm\.", "backbone.0.patch_embed.norm."),
    (_SWIN + r"encoder\.layers\.(\d+)\.downsample\.", r"backbone.0.layers.\1.downsample."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"backbone.0.layers.\1.blocks.\2.norm1."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"backbone.0.layers.\1.blocks.\2.norm2."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"backbone.0.layers.\1.blocks.\2.attn.proj."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\.", r"backbone.0.layers.\1.blocks.\2.attn."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.", r"backbone.0.layers.\1.blocks.\2.mlp."),
    (r"^model\.backbone\.conv_encoder\.model\.hidden_states_norms\.stage2\.", "backbone.0.norm1."),
    (r"^model\.backbone\.conv_encoder\.model\.hidden_states_norms\.stage3\.", "backbone.0.norm2."),
    (r"^model\.backbone\.conv_encoder\.model\.hidden_states_norms\.stage4\.", "backbone.0.norm3."),
    (r"^model\.text_backbone\.", "bert."),
    (r"^model\.text_projection\.", "feat_map."),
    (r"^model\.input_proj_vision\.", "input_proj."),
    (r"^model\.level_embed$", "transformer.level_embed"),
    (r"^model\.query_position_embeddings\.", "transformer.tgt_embed."),
    (r"^model\.enc_output\.", "transformer.enc_output."),
    (r"^model\.enc_output_norm\.", "transformer.enc_output_norm."),
    (r"^model\.encoder_output_bbox_embed\.", "transformer.enc_out_bbox_embed."),
    (r"^model\.decoder\.layer_norm\.", "transformer.decoder.norm."),
    (r"^model\.decoder\.reference_points_head\.", "transformer.decoder.ref_point_head."),
    (r"^model\.decoder\.bbox_embed\.", "transformer.decoder.bbox_embed."),
    # encoder layer N = deformable layers.N + text_layers.N + fusion_layers.N
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn_layer_norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.fc(\d)\.", r"transformer.encoder.layers.\1.linear\2."),
    (r"^model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn\.", r"transformer.encoder.layers.\1.self_attn."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_before\.", r"transformer.encoder.text_layers.\1.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_after\.", r"transformer.encoder.text_layers.\1.norm2."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.fc(\d)\.", r"transformer.encoder.text_layers.\1.linear\2."),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.out_proj\.", r"transformer.encoder.text_layers.\1.self_attn.out_proj."),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.vision_param$", r"transformer.encoder.fusion_layers.\1.gamma_v"),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.text_param$", r"transformer.encoder.fusion_layers.\1.gamma_l"),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.layer_norm_vision\.", r"transformer.encoder.fusion_layers.\1.layer_norm_v."),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.layer_norm_text\.", r"transformer.encoder.fusion_layers.\1.layer_norm_l."),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.(values_|out_)?vision_proj\.", r"transformer.encoder.fusion_layers.\1.attn.\2v_proj."),
    (r"^model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.(values_|out_)?text_proj\.", r"transformer.encoder.fusion_layers.\1.attn.\2l_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_text_layer_norm\.", r"transformer.decoder.layers.\1.catext_norm."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_text\.out_proj\.", r"transformer.decoder.layers.\1.ca_text.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.decoder.layers.\1.self_attn.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^model\.decoder\.layers\.(\d+)\.fc(\d)\.", r"transformer.decoder.layers.\1.linear\2."),
    (r"^bbox_embed\.", "bbox_embed."),
]
# q/k/v split in transformers, fused in the original: (transformers prefix regex, q/k/v names, original name)
_DINO_FUSED = [
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.", ("q_proj", "k_proj", "v_proj"),
     r"backbone.0.layers.\1.blocks.\2.attn.qkv.{kind}"),
    (r"^model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.", ("query", "key", "value"),
     r"transformer.encoder.text_layers.\1.self_attn.in_proj_{kind}"),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.", ("query", "key", "value"),
     r"transformer.decoder.layers.\1.self_attn.in_proj_{kind}"),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_text\.", ("query", "key", "value"),
     r"transformer.decoder.layers.\1.ca_text.in_proj_{kind}"),
]


# transformers 4.x Swin names (no ``swin.`` level; BERT-style attention and MLP names) -> transformers 5 names
_V4_BACKBONE = r"^model\.backbone\.conv_encoder\.model\."
_SWIN_V4_TO_V5 = [
    (_V4_BACKBONE + r"(embeddings|encoder)\.", r"model.backbone.conv_encoder.model.swin.\1."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.attention\.self\.relative_position_bias_table$", ".attention.relative_position_bias.relative_position_bias_table"),
    (r"(\.blocks\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"(\.blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]


def _v5_name(key: str) -> str:
    if not re.match(_V4_BACKBONE, key) or ".swin." in key:
        return key
    for pattern, replacement in _SWIN_V4_TO_V5:
        key = re.sub(pattern, replacement, key)
    return key


def dino_original_state(model) -> dict[str, torch.Tensor]:
    """The GroundingDINO checkpoint ``model`` dict (with ``module.`` prefixes and the buffers the original saves)."""
    hf = {_v5_name(k): v.clone() for k, v in model.state_dict().items()
          if not k.endswith("swin.layernorm.weight") and not k.endswith("swin.layernorm.bias")
          and not k.endswith(("relative_position_index", "attn_mask"))}
    state = {}
    for pattern, names, target in _DINO_FUSED:
        for key in [k for k in hf if re.match(pattern + names[0] + r"\.", k)]:
            kind = key.rsplit(".", 1)[1]
            parts = [hf.pop(key.replace(f".{names[0]}.", f".{n}.")) for n in names]
            state[re.sub(pattern + names[0] + r"\.(weight|bias)$", target.format(kind=kind), key)] = torch.cat(parts)
    for key, value in hf.items():
        new = _sub_all(key, _DINO_INVERSE)
        assert new != key or key.startswith("bbox_embed."), f"no inverse rule for {key}"
        state[new] = value
    blocks = {m.group(1) for k in state if (m := re.match(r"^(backbone\.0\.layers\.\d+\.blocks\.\d+)\.attn\.qkv\.weight$", k))}
    for block in blocks:  # saved buffers of the original Swin
        window = 7
        state[f"{block}.attn.relative_position_index"] = torch.zeros(window * window, window * window, dtype=torch.long)
    state["bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    state["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    state["bert.pooler.dense.bias"] = torch.zeros(32)
    return {f"module.{k}": v for k, v in state.items()}


ORIGINAL_DINO_CONFIG = """# GroundingDINO-style config (parsed, never executed by the loader)
batch_size = 1
modelname = "groundingdino"
backbone = "swin_T_224_1k"
nheads = 2
max_text_len = 256
dec_pred_bbox_embed_share = True
two_stage_bbox_embed_share = False
text_encoder_type = "bert-base-uncased"
import os  # anything that is not a literal assignment is ignored
danger = os.system("echo never run")
"""


def write_dino_both(root: Path, num_queries: int = 30):
    """(hf_folder, original_pth, model): one tiny GroundingDINO in both layouts, with BERT + config files."""
    bert = write_bert_folder(root / "bert-base-uncased")
    model = tiny_dino(bert, num_queries)
    hf_folder = root / "grounding-dino-hf"
    model.save_pretrained(str(hf_folder))
    from transformers import BertTokenizer

    BertTokenizer.from_pretrained(str(bert)).save_pretrained(str(hf_folder))
    original = root / "grounding-dino" / "groundingdino_tiny_ogc.pth"
    original.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": dino_original_state(model)}, original)
    (original.parent / "GroundingDINO_Tiny_OGC.py").write_text(ORIGINAL_DINO_CONFIG, encoding="utf-8")
    return hf_folder, original, model


def write_sam_both(root: Path):
    """(hf_folder, original_pth, model): one tiny SAM in both layouts."""
    model = tiny_sam()
    hf_folder = root / "sam-hf"
    model.save_pretrained(str(hf_folder))
    original = root / "sams" / "sam_tiny.pth"
    original.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam_original_state(model), original)
    return hf_folder, original, model


def test_inverse_renaming_covers_every_tensor(tmp_path):
    """The helpers themselves: every transformers tensor gets an original name, none collide."""
    bert = write_bert_folder(tmp_path / "bert")
    dino = tiny_dino(bert)
    original = dino_original_state(dino)
    assert all(k.startswith("module.") for k in original)
    assert not any(k.startswith("module.model.") for k in original)
    sam = tiny_sam()
    sam_state = sam_original_state(sam)
    assert not any(k.startswith(("vision_encoder.", "shared_image_embedding")) for k in sam_state)
    assert len(sam_state) == len(sam.state_dict()) - 1 + 2


_SHARED: dict[str, tuple] = {}


def shared_files(kind: str):
    """The tiny models written once per test process (``kind``: 'dino' or 'sam'), in a temporary folder."""
    if kind not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix=f"cococo-masks-{kind}-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SHARED[kind] = write_dino_both(root) if kind == "dino" else write_sam_both(root)
    return _SHARED[kind]
