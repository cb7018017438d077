"""Masks from text against the ORIGINAL GroundingDINO and Segment Anything formulas (IDEA-Research/GroundingDINO,
facebookresearch/segment-anything), on tiny random-weight models: the conventions where transformers' models
differ from the originals, and the original-layout GroundingDINO conversion stage by stage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cococo_core.masks import detect as dino
from cococo_core.masks.box_refinement import install_original_box_refinement
from test_masks_tiny import tiny_dino, write_bert_folder


def inverse_sigmoid(x, eps=1e-3):
    """groundingdino/util/misc.py."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("bert") / "bert-base-uncased")


def _border_dino(bert):
    """A tiny GroundingDINO whose box deltas push every reference box to the image border (coordinates ~1e-4)."""
    model = tiny_dino(bert)
    with torch.no_grad():
        for head in list(model.bbox_embed) + list(model.model.decoder.bbox_embed):
            head.layers[-1].bias.fill_(-6.0)
    return model


def _run(model, bert, pixels):
    from transformers import BertTokenizer

    prompt = dino.encode_prompt(BertTokenizer.from_pretrained(str(bert)), "the cat . dog")
    raw = []
    handles = [layer.register_forward_hook(lambda m, a, out: raw.append(out[0])) for layer in model.model.decoder.layers]
    try:
        with torch.no_grad():
            out = model(pixel_values=pixels, input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                        token_type_ids=prompt.token_type_ids)
    finally:
        for handle in handles:
            handle.remove()
    return out, raw


def _original_refinement(model, out, raw):
    """The original decoder's references (from its un-normalised layer outputs) and the final head's boxes."""
    reference, references = out.init_reference_points, []
    with torch.no_grad():
        for level, hidden in enumerate(raw):
            head = model.model.decoder.bbox_embed[level]
            boxes = torch.sigmoid(model.bbox_embed[level](out.intermediate_hidden_states[:, level]) + inverse_sigmoid(reference))
            reference = torch.sigmoid(head(hidden) + inverse_sigmoid(reference))
            references.append(reference)
    return torch.stack(references, 1), boxes


def test_box_refinement_uses_the_original_inverse_sigmoid_at_the_border(bert):
    model = _border_dino(bert).double()
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    plain, plain_raw = _run(model, bert, pixels)  # transformers' logit(eps=1e-5)
    references, boxes = _original_refinement(model, plain, plain_raw)
    assert float(plain.pred_boxes.min()) < 1e-3  # boxes do touch the border
    assert not torch.allclose(plain.intermediate_reference_points, references, rtol=1e-3, atol=0)
    assert not torch.allclose(plain.pred_boxes, boxes, rtol=1e-3, atol=0)

    hooks = install_original_box_refinement(model)
    assert install_original_box_refinement(model) is hooks  # installed once
    out, raw = _run(model, bert, pixels)
    references, boxes = _original_refinement(model, out, raw)
    torch.testing.assert_close(out.intermediate_reference_points, references, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(out.pred_boxes, boxes, rtol=1e-9, atol=1e-15)
    hooks.remove()
    again, _ = _run(model, bert, pixels)
    torch.testing.assert_close(again.pred_boxes, plain.pred_boxes, rtol=0, atol=0)


def test_detector_installs_the_original_refinement(tmp_path, bert):
    from test_masks_tiny import write_dino_both
    from cococo_core.masks.loading import load_detector

    hf_folder, original, _ = write_dino_both(tmp_path)
    for path in (hf_folder, original):
        detector = load_detector(path, bert=bert)
        assert getattr(detector.model, "_cococo_original_box_refinement", None) is not None


# -- Segment Anything: the two-way transformer's LayerNorms ----------------------------------------------------

def _sam_attention(p, q, k, v, heads):
    """segment_anything/modeling/transformer.py ``Attention``: project, split heads, softmax(q k^T / sqrt(c)), out."""
    q, k, v = F.linear(q, p.q_proj.weight, p.q_proj.bias), F.linear(k, p.k_proj.weight, p.k_proj.bias), F.linear(v, p.v_proj.weight, p.v_proj.bias)
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    attn = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(q.shape[0], -1, q.shape[1] * q.shape[-1])
    return F.linear(out, p.out_proj.weight, p.out_proj.bias)


def _two_way_block(block, queries, keys, query_pe, key_pe, heads, eps=1e-5):
    """segment_anything ``TwoWayAttentionBlock.forward`` (skip_first_layer_pe=False), its norms nn.LayerNorm(eps)."""
    norm = lambda x, n: F.layer_norm(x, x.shape[-1:], n.weight, n.bias, eps)  # noqa: E731
    q = queries + query_pe
    queries = norm(queries + _sam_attention(block.self_attn, q, q, queries, heads), block.layer_norm1)
    q, k = queries + query_pe, keys + key_pe
    queries = norm(queries + _sam_attention(block.cross_attn_token_to_image, q, k, keys, heads), block.layer_norm2)
    mlp = F.linear(torch.relu(F.linear(queries, block.mlp.lin1.weight, block.mlp.lin1.bias)), block.mlp.lin2.weight, block.mlp.lin2.bias)
    queries = norm(queries + mlp, block.layer_norm3)
    q, k = queries + query_pe, keys + key_pe
    keys = norm(keys + _sam_attention(block.cross_attn_image_to_token, k, q, queries, heads), block.layer_norm4)
    return queries, keys


def test_sam_two_way_layer_norms_use_the_original_eps():
    from test_masks_tiny import shared_files
    from cococo_core.masks.loading import load_segmenter

    _, original, _ = shared_files("sam")
    model = load_segmenter(original, dtype=torch.float64).model
    assert model.config.mask_decoder_config.layer_norm_eps == 1e-5
    block = model.mask_decoder.transformer.layers[1]  # the second block adds the positional encodings everywhere
    assert not block.skip_first_layer_pe
    assert [getattr(block, f"layer_norm{i}").eps for i in range(1, 5)] == [1e-5] * 4
    generator = torch.Generator().manual_seed(0)
    # small activations (variance ~1e-6): where eps 1e-5 and 1e-6 differ most
    queries, keys = (1e-3 * torch.randn(1, n, 32, generator=generator, dtype=torch.float64) for n in (5, 16))
    query_pe, keys_pe = (1e-3 * torch.randn(1, n, 32, generator=generator, dtype=torch.float64) for n in (5, 16))
    heads = model.config.mask_decoder_config.num_attention_heads
    with torch.no_grad():
        got = block(queries[:, None], keys[:, None], query_pe[:, None], keys_pe[:, None], None)
        expected = _two_way_block(block, queries, keys, query_pe, keys_pe, heads)
        transformers_default = _two_way_block(block, queries, keys, query_pe, keys_pe, heads, eps=1e-6)
    torch.testing.assert_close(got[0][:, 0], expected[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[1][:, 0], expected[1], rtol=1e-9, atol=1e-12)
    assert (transformers_default[0] - expected[0]).abs().max() > 1e-5  # vs a 1e-12 match: eps 1e-6 would fail


# -- Pre-processing: the originals resize the uint8 image with PIL -----------------------------------------------

def _photo_like_frame(height=300, width=452, seed=0) -> np.ndarray:
    """A uint8 RGB frame with smooth gradients, hard edges and fine texture (what resizing filters disagree on)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(x / 37.0), 90 + 80 * np.cos(y / 23.0), 60 + 0.4 * (x + y) % 120], -1)
    base[(x - 200) ** 2 + (y - 140) ** 2 < 70 ** 2] = (250, 30, 10)  # a disc with a sharp border
    base[::7] = 255 - base[::7]  # stripes: high frequencies
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).round().astype(np.uint8)


def _pil_bilinear(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(frame, "RGB").resize((width, height), Image.BILINEAR))


def test_grounding_dino_preprocessing_is_pil_bilinear_on_uint8():
    """load_image: T.RandomResize([800], max_size=1333) (PIL bilinear) -> ToTensor (/255) -> Normalize."""
    frame = _photo_like_frame()
    size = dino.detection_size(*frame.shape[:2], SimpleConfig(), 800, 1333)
    assert size == (800, 1205)  # get_size_with_aspect_ratio: short side 800, long int(800 * 452 / 300)
    resized = torch.from_numpy(_pil_bilinear(frame, *size).copy()).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (resized - mean) / std
    as_float = torch.from_numpy(frame).float()[None] / 255  # a ComfyUI IMAGE holding the same frame
    torch.testing.assert_close(dino.preprocess(as_float, size)[0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(dino.preprocess(torch.from_numpy(frame)[None], size)[0], expected, rtol=0, atol=1e-6)
    old = dino.preprocess(as_float, size, "torch")[0]
    assert ((old - expected) * std).abs().max() * 255 > 0.5  # the float resize is off by whole uint8 levels


def test_sam_preprocessing_is_resize_longest_side_with_pil_on_uint8():
    """SamPredictor.set_image: ResizeLongestSide.apply_image (PIL bilinear) -> (x - pixel_mean) / pixel_std -> pad."""
    from cococo_core.masks import segment

    frame = _photo_like_frame()
    pixels, size = segment.preprocess(torch.from_numpy(frame).float()[None] / 255, 1024)
    new_h = int(300 * 1024 / 452 + 0.5)  # get_preprocess_shape
    assert size == (new_h, 1024)
    resized = torch.from_numpy(_pil_bilinear(frame, new_h, 1024).copy()).permute(2, 0, 1).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    expected = F.pad((resized - mean) / std, (0, 0, 0, 1024 - new_h))
    torch.testing.assert_close(pixels[0], expected, rtol=0, atol=1e-6)
    old, _ = segment.preprocess(torch.from_numpy(frame).float()[None] / 255, 1024, "torch")
    assert ((old[0] - expected)[:, :new_h] * std).abs().max() > 0.5


class SimpleConfig:
    """The parts of a GroundingDINO config that ``detection_size`` reads (Swin-T: patch 4, stages 1-3, 4 levels)."""

    num_queries = 900
    num_feature_levels = 4

    class backbone_config:  # noqa: N801 - mirrors the transformers attribute name
        patch_size = 4
        out_indices = [2, 3, 4]


# -- The original-layout GroundingDINO conversion, stage by stage ----------------------------------------------

def _swin_relative_position_index(window: int) -> torch.Tensor:
    """swin_transformer.py WindowAttention: index into the (2W-1)^2 bias table for every token pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def _swin_block(o, prefix, x, height, width, heads, window):
    """swin_transformer.py SwinTransformerBlock (no shift, H and W multiples of the window), on (B, H*W, C)."""
    batch, _, channels = x.shape
    ln = lambda t, name: F.layer_norm(t, (channels,), o[f"{prefix}.{name}.weight"], o[f"{prefix}.{name}.bias"])  # noqa: E731
    h = ln(x, "norm1").view(batch, height // window, window, width // window, window, channels)
    windows = h.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)
    qkv = F.linear(windows, o[f"{prefix}.attn.qkv.weight"], o[f"{prefix}.attn.qkv.bias"])
    q, k, v = qkv.reshape(windows.shape[0], -1, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
    table = o[f"{prefix}.attn.relative_position_bias_table"]
    bias = table[_swin_relative_position_index(window).view(-1)].view(window * window, window * window, -1).permute(2, 0, 1)
    attn = torch.softmax((q * (channels // heads) ** -0.5) @ k.transpose(-2, -1) + bias, dim=-1)
    out = F.linear((attn @ v).transpose(1, 2).reshape(windows.shape), o[f"{prefix}.attn.proj.weight"], o[f"{prefix}.attn.proj.bias"])
    out = out.view(batch, height // window, width // window, window, window, channels).permute(0, 1, 3, 2, 4, 5)
    x = x + out.reshape(batch, height * width, channels)
    mlp = F.linear(F.gelu(F.linear(ln(x, "norm2"), o[f"{prefix}.mlp.fc1.weight"], o[f"{prefix}.mlp.fc1.bias"])),
                   o[f"{prefix}.mlp.fc2.weight"], o[f"{prefix}.mlp.fc2.bias"])
    return x + mlp


def _capture(module, store, name):
    def hook(mod, args, kwargs, out):
        store[name] = (args, kwargs, out[0] if isinstance(out, tuple) else out)
    return module.register_forward_hook(hook, with_kwargs=True)


def _module(model, *names):
    modules = dict(model.named_modules())
    return next(modules[n] for n in names if n in modules)


def test_original_grounding_dino_conversion_matches_the_original_formulas_stage_by_stage(tmp_path, bert):
    """A tiny Swin-T-style GroundingDINO written in the original layout (``module.backbone.0.*``, ``bert.*``,
    ``feat_map``, ``input_proj``, ``transformer.*``) is converted and run; every stage below is recomputed from the
    ORIGINAL tensors with the original modules' formulas (float64)."""
    from transformers import BertConfig, BertModel

    from cococo_core.masks.loading import load_detector, read_checkpoint
    from test_masks_tiny import write_dino_both

    _, original_file, _ = write_dino_both(tmp_path)
    detector = load_detector(original_file, bert=bert, dtype=torch.float64)
    model = detector.model
    o = {k: v.double() if v.is_floating_point() else v for k, v in read_checkpoint(original_file).items()}
    assert "backbone.0.layers.0.blocks.0.attn.qkv.weight" in o and "transformer.tgt_embed.weight" in o

    swin = "model.backbone.conv_encoder.model."
    store = {}
    hooks = [
        _capture(_module(model, swin + "swin.embeddings", swin + "embeddings"), store, "embeddings"),
        _capture(_module(model, swin + "swin.encoder.layers.0.blocks.0", swin + "encoder.layers.0.blocks.0"), store, "block"),
        _capture(_module(model, swin + "hidden_states_norms.stage2"), store, "stage2"),
        _capture(model.model.text_backbone, store, "bert"),
        _capture(model.model.text_projection, store, "feat_map"),
        _capture(model.model.input_proj_vision[0], store, "input_proj"),
    ]
    prompt = dino.encode_prompt(detector.tokenizer, "the cat . dog")
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        model(pixel_values=pixels, input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
              token_type_ids=prompt.token_type_ids)
    for hook in hooks:
        hook.remove()

    with torch.no_grad():
        # PatchEmbed: 4x4 stride-4 conv, flatten, LayerNorm
        patches = F.conv2d(pixels, o["backbone.0.patch_embed.proj.weight"], o["backbone.0.patch_embed.proj.bias"], stride=4)
        tokens = F.layer_norm(patches.flatten(2).transpose(1, 2), (16,), o["backbone.0.patch_embed.norm.weight"], o["backbone.0.patch_embed.norm.bias"])
        torch.testing.assert_close(store["embeddings"][2], tokens, rtol=1e-10, atol=1e-10)
        # first Swin block: LN, window attention with the fused qkv and the relative position bias, MLP
        block_in = store["block"][0][0]
        expected = _swin_block(o, "backbone.0.layers.0.blocks.0", block_in, 28, 28, heads=1, window=7)
        torch.testing.assert_close(store["block"][2], expected, rtol=1e-10, atol=1e-10)
        # backbone.0.norm1 normalises the output of stage 2 (out_indices 1..3 -> norm1..3)
        stage_in = store["stage2"][0][0]
        torch.testing.assert_close(store["stage2"][2], F.layer_norm(stage_in, stage_in.shape[-1:], o["backbone.0.norm1.weight"],
                                                                    o["backbone.0.norm1.bias"]), rtol=1e-10, atol=1e-10)
        # BERT: a transformers BertModel holding the original bert.* tensors, on the same inputs
        peer = BertModel(BertConfig.from_json_file(str(bert / "config.json")), add_pooling_layer=False).double().eval()
        peer.load_state_dict({k[len("bert."):]: v for k, v in o.items() if k.startswith("bert.") and ".pooler." not in k},
                             strict=False)
        args, kwargs, text = store["bert"]
        reference = peer(*args, **{k: v for k, v in kwargs.items() if k != "return_dict"}).last_hidden_state
        torch.testing.assert_close(text if torch.is_tensor(text) else text.last_hidden_state, reference, rtol=1e-10, atol=1e-10)
        # feat_map: Linear(768 -> d_model)
        args, kwargs, projected = store["feat_map"]
        torch.testing.assert_close(projected, F.linear(args[0], o["feat_map.weight"], o["feat_map.bias"]), rtol=1e-10, atol=1e-10)
        # input_proj.0: 1x1 conv + GroupNorm(32)
        args, kwargs, level0 = store["input_proj"]
        conv = F.conv2d(args[0], o["input_proj.0.0.weight"], o["input_proj.0.0.bias"])
        torch.testing.assert_close(level0, F.group_norm(conv, 32, o["input_proj.0.1.weight"], o["input_proj.0.1.bias"]), rtol=1e-10, atol=1e-10)


def test_preprocessing_equals_the_transformers_pil_image_processors():
    """The Hugging Face folders' own processors, PIL backend (transformers 5: ``*ImageProcessorPil``; 4.x: the
    default ``*ImageProcessor``), give the same pixels: the original pre-processing suits both layouts."""
    import transformers

    grounding = getattr(transformers, "GroundingDinoImageProcessorPil", None) or transformers.GroundingDinoImageProcessor
    sam = getattr(transformers, "SamImageProcessorPil", None) or transformers.SamImageProcessor
    from cococo_core.masks import segment

    frame = _photo_like_frame()
    theirs = grounding()(frame, return_tensors="pt")["pixel_values"][0]
    ours = dino.preprocess(torch.from_numpy(frame)[None], tuple(theirs.shape[-2:]))[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    theirs = sam()(frame, return_tensors="pt")["pixel_values"][0]
    ours, _ = segment.preprocess(torch.from_numpy(frame)[None], 1024)
    torch.testing.assert_close(ours[0], theirs, rtol=0, atol=1e-5)
