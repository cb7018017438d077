"""Original-layout SAM / GroundingDINO checkpoints load through the converter and match the transformers layout."""
import argparse
import logging

import pytest
import torch

from cococo_core.masks import convert_dino, convert_sam
from cococo_core.masks.loading import load_detector, load_segmenter, read_checkpoint
from test_masks_tiny import dino_original_state, sam_original_state, shared_files, write_bert_folder


@pytest.fixture(scope="module")
def dino_files():
    return shared_files("dino")


@pytest.fixture(scope="module")
def sam_files():
    return shared_files("sam")


def test_original_grounding_dino_matches_transformers_layout(dino_files):
    hf_folder, original, model = dino_files
    direct, converted = load_detector(hf_folder), load_detector(original)  # BERT folder + config found beside it
    tokens = converted.tokenizer("cat . the dog .", return_tensors="pt")
    assert torch.equal(tokens["input_ids"], direct.tokenizer("cat . the dog .", return_tensors="pt")["input_ids"])
    pixels = torch.randn(2, 3, 72, 100)
    with torch.no_grad():
        a = direct.model(pixel_values=pixels, **{k: v.expand(2, -1) for k, v in tokens.items()})
        b = converted.model(pixel_values=pixels, **{k: v.expand(2, -1) for k, v in tokens.items()})
    finite = a.logits.isfinite()
    assert torch.equal(finite, b.logits.isfinite()) and finite.any()
    assert torch.allclose(a.logits[finite], b.logits[finite], atol=1e-5)
    assert torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-6)
    assert a.logits[finite].std() > 0.1 and a.pred_boxes.std() > 0.01  # the outputs carry signal
    for name, tensor in model.state_dict().items():
        if "swin.layernorm" not in name:
            assert torch.equal(converted.model.state_dict()[name], tensor), name


def test_original_sam_matches_transformers_layout(sam_files):
    hf_folder, original, model = sam_files
    direct, converted = load_segmenter(hf_folder), load_segmenter(original)
    # the one intended difference: segment-anything's two-way LayerNorm eps (1e-5; transformers' default 1e-6)
    assert direct.model.config.mask_decoder_config.layer_norm_eps == 1e-6
    assert converted.model.config.mask_decoder_config.layer_norm_eps == 1e-5
    for layer in direct.model.mask_decoder.transformer.layers:
        for norm in (layer.layer_norm1, layer.layer_norm2, layer.layer_norm3, layer.layer_norm4):
            norm.eps = 1e-5
    pixels = torch.randn(1, 3, 128, 128)
    boxes = torch.tensor([[[10.0, 20.0, 60.0, 90.0], [30.0, 30.0, 100.0, 120.0]]])
    with torch.no_grad():
        a = direct.model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)
        b = converted.model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.iou_scores, b.iou_scores)
    assert a.pred_masks.std() > 0.05
    assert converted.model.config.vision_config.global_attn_indexes == [1]
    assert converted.model.config.vision_config.window_size == 4


def _meta_sam(hidden, layers, heads, global_layers):
    from transformers import SamConfig, SamModel, SamVisionConfig

    vision = SamVisionConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             global_attn_indexes=global_layers)
    with torch.device("meta"):
        return SamModel(SamConfig(vision_config=vision))


@pytest.mark.parametrize("variant,hidden,layers,heads,global_layers", [
    ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
    ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
    ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
])
def test_sam_variant_is_inferred_from_shapes(variant, hidden, layers, heads, global_layers):
    state = sam_original_state(_meta_sam(hidden, layers, heads, global_layers))
    config = convert_sam.sam_config_from_state_dict(state)
    vision = config.vision_config
    assert convert_sam.sam_variant(config) == variant
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (hidden, layers, heads)
    assert list(vision.global_attn_indexes) == global_layers and vision.window_size == 14
    assert vision.image_size == 1024 and vision.mlp_dim == 4 * hidden and vision.output_channels == 256
    decoder = config.mask_decoder_config
    assert (decoder.hidden_size, decoder.mlp_dim, decoder.num_hidden_layers, decoder.iou_head_depth) == (256, 2048, 2, 3)
    converted = convert_sam.convert_sam_state_dict(state)
    assert set(converted) == set(_meta_sam(hidden, layers, heads, global_layers).state_dict())


@pytest.mark.parametrize("variant,embed,depths,heads,window", [
    ("swin_t", 96, [2, 2, 6, 2], [3, 6, 12, 24], 7),
    ("swin_b", 128, [2, 2, 18, 2], [4, 8, 16, 32], 12),
])
def test_grounding_dino_variant_is_inferred_from_shapes(variant, embed, depths, heads, window):
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    reference = GroundingDinoConfig()
    backbone = reference.backbone_config
    backbone.embed_dim, backbone.depths, backbone.num_heads, backbone.window_size = embed, depths, heads, window
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on meta (transformers 4.x Swin calls .item() while building)
        model = GroundingDinoForObjectDetection(reference)
    state = convert_dino.strip_module_prefix(dino_original_state(model))
    config = convert_dino.grounding_dino_config_from_state_dict(state)
    assert convert_dino.grounding_dino_variant(config) == variant
    swin = config.backbone_config
    assert (swin.embed_dim, list(swin.depths), list(swin.num_heads), swin.window_size) == (embed, depths, heads, window)
    for name in ("d_model", "num_queries", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
                 "encoder_attention_heads", "num_feature_levels", "encoder_n_points", "decoder_n_points"):
        assert getattr(config, name) == getattr(reference, name), name
    assert config.text_config.hidden_size == 768 and config.text_config.num_hidden_layers == 12
    own = model.state_dict()
    converted = convert_dino.match_model_naming(convert_dino.convert_grounding_dino_state_dict(state), own)
    expected = {k for k in own if not k.startswith(convert_dino.UNUSED_TARGETS)
                and not k.endswith(("relative_position_index", "attn_mask"))}  # buffers the model computes
    assert set(converted) == expected


def test_original_config_is_parsed_not_executed(dino_files, capfd):
    _, original, _ = dino_files
    values = convert_dino.read_original_config(original.parent / "GroundingDINO_Tiny_OGC.py")
    assert values["nheads"] == 2 and values["backbone"] == "swin_T_224_1k"
    assert "danger" not in values and "os" not in values
    assert "never run" not in capfd.readouterr().out
    broken = original.parent.parent / "broken.cfg.py"
    broken.write_text("nheads = (\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable GroundingDINO config"):
        convert_dino.read_original_config(broken)


def test_unknown_tensors_are_refused():
    with pytest.raises(ValueError, match="unknown names"):
        convert_dino.convert_grounding_dino_state_dict({"backbone.0.patch_embed.proj.weight": torch.zeros(1),
                                                        "transformer.surprise.weight": torch.zeros(1)})


def test_sam_hq_extras_are_dropped_with_a_warning(sam_files, caplog):
    _, _, model = sam_files
    state = sam_original_state(model)
    state["mask_decoder.hf_token.weight"] = torch.zeros(1, 32)
    with caplog.at_level(logging.WARNING):
        converted = convert_sam.convert_sam_state_dict(state)
    assert "SAM-HQ" in caplog.text and not any("hf_token" in k for k in converted)


def test_loader_errors_are_clear(tmp_path, dino_files, sam_files):
    _, dino_original, _ = dino_files
    _, sam_original, _ = sam_files
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_segmenter(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a Segment Anything checkpoint"):
        load_segmenter(dino_original)
    with pytest.raises(ValueError, match="not an original GroundingDINO"):
        load_detector(sam_original)
    lonely = tmp_path / "alone" / "groundingdino.pth"
    lonely.parent.mkdir()
    lonely.write_bytes(dino_original.read_bytes())
    with pytest.raises(FileNotFoundError, match="BERT tokenizer folder"):
        load_detector(lonely)
    with pytest.raises(ValueError, match="Hugging Face SAM folder"):
        load_segmenter(tmp_path)


def test_pickles_with_code_are_refused(tmp_path):
    from cococo_core.checkpoints.safe_load import CheckpointError

    class Payload:
        def __reduce__(self):
            return (print, ("should never run",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    namespace = tmp_path / "args.pth"  # GroundingDINO releases may store their argparse arguments
    torch.save({"model": {"module.w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, namespace)
    assert list(read_checkpoint(namespace)) == ["w"]


def test_original_files_in_safetensors_load_too(tmp_path, sam_files):
    from safetensors.torch import save_file

    _, _, model = sam_files
    path = tmp_path / "sam_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sam_original_state(model).items()}, str(path))
    loaded = load_segmenter(path)
    assert torch.equal(loaded.model.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)


def test_bert_folder_can_be_given_explicitly(tmp_path, dino_files):
    _, original, _ = dino_files
    elsewhere = write_bert_folder(tmp_path / "my-bert")
    loaded = load_detector(original, bert=elsewhere, config=original.parent / "GroundingDINO_Tiny_OGC.py")
    assert loaded.model.config.encoder_attention_heads == 2
    if hasattr(loaded.model.model, "special_tokens"):  # transformers 5 (4.x hard-codes these ids)
        assert loaded.model.model.special_tokens.tolist() == [101, 102, 1012, 1029]


def test_swin_names_follow_transformers_4_when_the_model_uses_them(dino_files):
    _, original, model = dino_files
    converted = convert_dino.convert_grounding_dino_state_dict(read_checkpoint(original))
    v5_model = {k if ".swin." in k else k.replace(".conv_encoder.model.", ".conv_encoder.model.swin.")
                for k in model.state_dict() if ".conv_encoder.model." in k}
    assert convert_dino.match_model_naming(converted, v5_model) is converted  # transformers 5: as is
    v4 = convert_dino.match_model_naming(converted, {"model.backbone.conv_encoder.model.embeddings.norm.weight"})
    prefix = "model.backbone.conv_encoder.model."
    block = prefix + "encoder.layers.0.blocks.1."
    for name in ("attention.self.query.weight", "attention.self.key.bias", "attention.self.value.weight",
                 "attention.output.dense.weight", "attention.self.relative_position_bias_table",
                 "intermediate.dense.weight", "output.dense.bias", "layernorm_before.weight", "layernorm_after.bias"):
        assert block + name in v4, name
    for name in ("embeddings.patch_embeddings.projection.weight", "embeddings.norm.bias",
                 "encoder.layers.0.downsample.reduction.weight", "hidden_states_norms.stage2.weight"):
        assert prefix + name in v4, name
    assert not any(".swin." in k for k in v4)
    outside = {k for k in converted if not k.startswith(prefix)}
    assert outside <= set(v4) and len(v4) == len(converted)
