"""Masks from text end to end on tiny random-weight GroundingDINO + SAM, loaded from both layouts."""
import dataclasses

import pytest
import torch

from cococo_core.masks import detect as dino
from cococo_core.masks import segment
from cococo_core.masks.loading import load_detector, load_segmenter
from cococo_core.masks.preview import draw_preview
from cococo_core.masks.text_masks import MaskOptions, masks_from_text
from test_masks_tiny import shared_files, tiny_dino

# Low thresholds: random weights give middling probabilities; the tests need some boxes on every frame.
OPTIONS = dict(detection_short_side=64, box_threshold=0.3, max_boxes=4)


@pytest.fixture(scope="module")
def models():
    dino_hf, dino_original, _ = shared_files("dino")
    sam_hf, sam_original, _ = shared_files("sam")
    return {
        "hf": (load_detector(dino_hf), load_segmenter(sam_hf)),
        "original": (load_detector(dino_original), load_segmenter(sam_original)),
    }


@pytest.fixture(scope="module")
def models64():
    """float64 copies: chunks of different sizes run differently shaped batches, whose float32 rounding differs by
    CPU (AVX2 / AVX-512) and can flip a mask pixel at the threshold."""
    dino_hf, _, _ = shared_files("dino")
    sam_hf, _, _ = shared_files("sam")
    return load_detector(dino_hf, dtype=torch.float64), load_segmenter(sam_hf, dtype=torch.float64)


@pytest.fixture(scope="module")
def clip():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, 40, 56, 3, generator=generator)


@pytest.fixture(scope="module")
def reference(models, clip):
    detector, segmenter = models["hf"]
    return masks_from_text(clip, "the cat . dog", detector, segmenter, MaskOptions(chunk_size=4, **OPTIONS))


def test_a_clip_and_a_phrase_give_per_frame_masks(reference, clip):
    assert reference.masks.shape == clip.shape[:3] and reference.masks.dtype == torch.float32
    assert set(reference.masks.unique().tolist()) <= {0.0, 1.0}
    assert all(b.shape[0] > 0 for b in reference.boxes)
    assert 0 < float(reference.masks.mean()) < 1
    assert reference.phrases == ["the cat", "dog"] and reference.detected == [True] * 4
    for boxes, scores, labels in zip(reference.boxes, reference.scores, reference.labels):
        assert boxes.shape[1] == 4 and len(labels) == boxes.shape[0] == scores.shape[0]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes[:, [0, 2]].max() <= 56 and boxes[:, [1, 3]].max() <= 40
        assert (scores > 0.3).all()


def test_original_layout_models_give_the_same_masks(models, clip, reference):
    detector, segmenter = models["original"]
    result = masks_from_text(clip, "the cat . dog", detector, segmenter, MaskOptions(chunk_size=4, **OPTIONS))
    assert torch.equal(result.masks, reference.masks)
    for a, b in zip(result.boxes, reference.boxes):
        assert torch.allclose(a, b, atol=1e-4)


def test_chunked_equals_unchunked(models64, clip):
    detector, segmenter = models64
    whole = masks_from_text(clip, "the cat . dog", detector, segmenter, MaskOptions(chunk_size=4, **OPTIONS))
    chunked = masks_from_text(clip, "the cat . dog", detector, segmenter, MaskOptions(chunk_size=3, **OPTIONS))
    assert torch.equal(chunked.masks, whole.masks) and 0 < float(whole.masks.mean()) < 1
    for a, b in zip(chunked.boxes, whole.boxes):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert chunked.labels == whole.labels


def test_text_is_encoded_once_per_clip(models, clip, reference):
    detector, segmenter = models["hf"]
    calls = []
    handle = detector.model.model.text_backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        once = masks_from_text(clip, "the cat . dog", detector, segmenter,
                               MaskOptions(chunk_size=2, box_mode=True, **OPTIONS))
        assert len(calls) == 1
        calls.clear()
        per_chunk = masks_from_text(clip, "the cat . dog", detector, segmenter,
                                    MaskOptions(chunk_size=2, box_mode=True, encode_text_once=False, **OPTIONS))
        assert len(calls) == 2
    finally:
        handle.remove()
    assert torch.equal(once.masks, per_chunk.masks)
    assert type(detector.model.model.text_backbone).__name__ == "BertModel"  # restored after the clip


def test_sam_masks_stay_inside_their_boxes_neighbourhood_and_union(models, clip, reference):
    _, segmenter = models["hf"]
    embeddings, resized = segment.image_embeddings(segmenter.model, clip[:1])
    per_box = segment.masks_from_boxes(segmenter.model, embeddings, reference.boxes[0], (40, 56), resized)
    assert per_box.shape == (reference.boxes[0].shape[0], 40, 56)
    assert torch.equal(per_box.any(0).float(), reference.masks[0])

def test_sam_embeddings_do_not_depend_on_the_batch(models64, clip):
    _, segmenter = models64
    batched, _ = segment.image_embeddings(segmenter.model, clip, batch_size=4)
    single, _ = segment.image_embeddings(segmenter.model, clip, batch_size=1)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-10)


def test_box_mode_and_empty_frames_with_real_models(models, clip):
    detector, _ = models["original"]
    as_uint8 = (clip * 255).round().to(torch.uint8)
    result = masks_from_text(as_uint8, "dog", detector, None, MaskOptions(box_mode=True, **OPTIONS))
    assert all(b.shape[0] > 0 for b in result.boxes)
    same = masks_from_text(as_uint8.float() / 255, "dog", detector, None, MaskOptions(box_mode=True, **OPTIONS))
    assert torch.equal(result.masks, same.masks)  # uint8 frames are converted chunk by chunk
    nothing = masks_from_text(clip, "dog", detector, None, MaskOptions(box_mode=True, **{**OPTIONS,
                                                                                          "box_threshold": 1.0}))
    assert nothing.masks.sum() == 0 and all(b.shape[0] == 0 for b in nothing.boxes)


def test_small_frames_are_upscaled_for_900_queries(models):
    detector, _ = models["hf"]
    tokenizer = detector.tokenizer
    big = tiny_dino(shared_files("dino")[0].parent / "bert-base-uncased", num_queries=900).eval()
    prompt = dino.encode_prompt(tokenizer, "cat")
    frames = torch.rand(1, 128, 192, 3)
    assert dino.encoder_tokens(128, 192, big.config) < 900
    with pytest.raises(RuntimeError, match="out of range"):  # what the size rule prevents: too few encoder tokens
        dino.detect(big, tokenizer, dino.preprocess(frames, (128, 192)), prompt, (128, 192))
    size = dino.detection_size(128, 192, big.config, short=128)
    assert size[0] > 128 and dino.encoder_tokens(*size, big.config) >= 900
    [found] = dino.detect(big, tokenizer, dino.preprocess(frames, size), prompt, (128, 192), box_threshold=0.0,
                          max_boxes=5)
    assert found.boxes.shape == (5, 4)
    assert found.boxes[:, [0, 2]].max() <= 192 and found.boxes[:, [1, 3]].max() <= 128  # mapped back to the frame


def test_preview_draws_masks_and_boxes(reference, clip):
    preview = draw_preview(clip, reference)
    assert preview.shape == clip.shape and preview.dtype == torch.float32
    assert 0 <= preview.min() and preview.max() <= 1
    no_boxes = dataclasses.replace(reference, boxes=[torch.zeros(0, 4)] * 4)
    tinted = draw_preview(clip, no_boxes, alpha=0.5)
    weight = 0.5 * reference.masks[..., None]
    expected = clip * (1 - weight) + torch.tensor([1.0, 0.2, 0.2]) * weight
    assert torch.allclose(tinted, expected, atol=0.5 / 255 + 1e-6)  # the mask blended in, 8-bit rounding
    x0, y0 = reference.boxes[0][0, :2].round().long().tolist()
    assert preview[0, min(y0, 39), min(x0, 55)].tolist() == pytest.approx([40 / 255, 1.0, 80 / 255], abs=1e-6)
