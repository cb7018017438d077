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
