"""Detection post-processing and the per-video loop, on a stub GroundingDINO whose outputs the test sets.

The stub stands in for the network only (logits and boxes); tokenisation, thresholds, labels, box carrying,
box-mode masks, chunking, hooks and warnings are the real code.
"""
import logging
from types import SimpleNamespace

import pytest
import torch

from cococo_core.hooks import Cancelled
from cococo_core.masks import detect as dino
from cococo_core.masks import morphology
from cococo_core.masks.loading import Detector
from cococo_core.masks.text_masks import MaskOptions, masks_from_text
from test_masks_tiny import tiny_dino_config, write_bert_folder


class StubDino(torch.nn.Module):
    """Returns, for each image of a batch, the next (probs (Q, T), boxes (Q, 4) cxcywh) from ``script``."""

    def __init__(self, config, script):
        super().__init__()
        self.config = config
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.model = SimpleNamespace(special_tokens=torch.tensor([0, 0, 0, 0]), text_backbone=None)
        self.script = list(script)
        self.calls = 0

    def forward(self, pixel_values, input_ids, attention_mask, token_type_ids):
        batch, length = input_ids.shape
        logits, boxes = [], []
        for _ in range(batch):
            probs, box = self.script[self.calls % len(self.script)]
            self.calls += 1
            padded = torch.full((probs.shape[0], self.config.max_text_len), float("-inf"))
            padded[:, :length] = torch.logit(probs[:, :length].clamp(1e-6, 1 - 1e-6))
            logits.append(padded)
            boxes.append(box)
        return SimpleNamespace(logits=torch.stack(logits), pred_boxes=torch.stack(boxes))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("bert") / "bert-base-uncased")


@pytest.fixture(scope="module")
def tokenizer(bert):
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(bert))


def _stub(bert, tokenizer, script):
    return Detector(StubDino(tiny_dino_config(bert), script), tokenizer, "stub", "test")


def _probs(prompt, tokenizer, rows):
    """(Q, T) probabilities: each row is {token: p}; unspecified tokens get 0.01."""
    ids = prompt.input_ids[0].tolist()
    out = torch.full((len(rows), len(ids)), 0.01)
    for q, row in enumerate(rows):
        for token, p in row.items():
            out[q, ids.index(tokenizer.convert_tokens_to_ids(token))] = p
    return out


def test_caption_is_normalised_like_groundingdino():
    assert dino.normalize_caption("The Dog") == "the dog ."
    assert dino.normalize_caption("Cat. the  dog .") == "cat . the dog ."
    assert dino.split_phrases("cat . dog") == ["cat", "dog"]
    with pytest.raises(ValueError, match="names nothing"):
        dino.normalize_caption(" . . ")


def test_phrases_map_to_their_tokens(tokenizer):
    prompt = dino.encode_prompt(tokenizer, "cat. the dog")
    assert prompt.caption == "cat . the dog ."
    tokens = tokenizer.convert_ids_to_tokens(prompt.input_ids[0].tolist())
    assert tokens == ["[CLS]", "cat", ".", "the", "dog", ".", "[SEP]"]
    assert prompt.token_phrase.tolist() == [-1, 0, -1, 1, 1, -1, -1]


def test_thresholds_filter_boxes_and_label_tokens(bert, tokenizer):
    prompt = dino.encode_prompt(tokenizer, "cat . the dog")
    probs = _probs(prompt, tokenizer, [
        {"cat": 0.9},                   # kept, "cat"
        {"dog": 0.36, "the": 0.30},     # kept (0.36 > 0.35), both tokens above 0.25: "the dog"
        {"dog": 0.34},                  # dropped: below the box threshold
        {"cat": 0.35},                  # dropped: the threshold is strict, as in GroundingDINO
        {"dog": 0.5, "the": 0.2},       # kept, "the" is under the text threshold: "dog"
    ])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]] * 5)
    boxes[4] = torch.tensor([0.25, 0.75, 0.5, 0.5])
    detector = _stub(bert, tokenizer, [(probs, boxes)])
    [found] = dino.detect(detector.model, tokenizer, torch.zeros(1, 3, 8, 8), prompt, (100, 200))
    assert found.scores.tolist() == pytest.approx([0.9, 0.5, 0.36], abs=1e-5)  # best first
    assert found.labels == ["cat", "dog", "the dog"]
    assert found.phrase_ids.tolist() == [0, 1, 1]
    assert found.boxes[0].tolist() == pytest.approx([80, 30, 120, 70])  # (cx, cy, w, h) -> xyxy pixels
    assert found.boxes[1].tolist() == pytest.approx([0, 50, 100, 100])
    strict = dino.detect(detector.model, tokenizer, torch.zeros(1, 3, 8, 8), prompt, (100, 200),
                         box_threshold=0.6, text_threshold=0.95, max_boxes=1)[0]
    assert strict.scores.tolist() == pytest.approx([0.9], abs=1e-5) and strict.labels == [""]


def test_max_boxes_keeps_the_best(bert, tokenizer):
    prompt = dino.encode_prompt(tokenizer, "cat")
    probs = _probs(prompt, tokenizer, [{"cat": 0.4}, {"cat": 0.8}, {"cat": 0.6}])
    detector = _stub(bert, tokenizer, [(probs, torch.rand(3, 4))])
    [found] = dino.detect(detector.model, tokenizer, torch.zeros(1, 3, 8, 8), prompt, (10, 10), max_boxes=2)
    assert found.scores.tolist() == pytest.approx([0.8, 0.6], abs=1e-5)


def test_no_detection_gives_empty_masks_and_a_warning(bert, tokenizer, caplog):
    prompt = dino.encode_prompt(tokenizer, "dog")
    nothing = (_probs(prompt, tokenizer, [{"dog": 0.1}]), torch.rand(1, 4))
    found = (_probs(prompt, tokenizer, [{"dog": 0.9}]), torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    detector = _stub(bert, tokenizer, [nothing, found, nothing])
    with caplog.at_level(logging.WARNING):
        result = masks_from_text(torch.rand(3, 16, 16, 3), "dog", detector, None, MaskOptions(box_mode=True))
    assert result.masks[0].sum() == 0 and result.masks[2].sum() == 0
    assert result.masks[1].sum() == 8 * 8
    assert [b.shape[0] for b in result.boxes] == [0, 1, 0]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "frame 0" in warned[0] and "frame 2" in warned[1]


def test_box_mode_detect_every_and_chunks(bert, tokenizer):
    prompt = dino.encode_prompt(tokenizer, "cat . dog")
    script = []
    for k in range(3):  # a different pair of boxes on each detected frame
        probs = _probs(prompt, tokenizer, [{"cat": 0.9}, {"dog": 0.8}])
        boxes = torch.tensor([[0.2 + 0.1 * k, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
        script.append((probs, boxes))
    frames = torch.rand(5, 20, 40, 3)
    results = []
    for chunk in (5, 2):
        detector = _stub(bert, tokenizer, script)
        result = masks_from_text(frames, "cat . dog", detector, None,
                                 MaskOptions(box_mode=True, detect_every=2, chunk_size=chunk))
        assert detector.model.calls == 3  # frames 0, 2, 4
        results.append(result)
    first, second = results
    assert first.detected == [True, False, True, False, True]
    assert torch.equal(first.masks, second.masks)
    for index in range(5):
        assert torch.equal(first.boxes[index], first.boxes[index - index % 2])  # carried from the last detection
        assert torch.equal(first.masks[index], morphology.box_masks(first.boxes[index], 20, 40))
        assert torch.equal(first.boxes[index], second.boxes[index])
    assert first.labels[1] == ["cat", "dog"]
    assert not torch.equal(first.masks[0], first.masks[2])


def test_progress_and_cancel_hooks(bert, tokenizer):
    prompt = dino.encode_prompt(tokenizer, "dog")
    detector = _stub(bert, tokenizer, [(_probs(prompt, tokenizer, [{"dog": 0.9}]), torch.rand(1, 4))])
    seen = []
    masks_from_text(torch.rand(5, 8, 8, 3), "dog", detector, None, MaskOptions(box_mode=True, chunk_size=2),
                    callback=lambda step, total, value: seen.append((step, total, value)))
    assert seen == [(2, 5, None), (4, 5, None), (5, 5, None)]
    polls = []

    def cancel():
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(Cancelled):
        masks_from_text(torch.rand(5, 8, 8, 3), "dog", detector, None, MaskOptions(box_mode=True, chunk_size=2),
                        cancel=cancel)
    assert len(polls) == 2


def test_options_are_checked(bert, tokenizer):
    detector = _stub(bert, tokenizer, [])
    with pytest.raises(ValueError, match="segmenter"):
        masks_from_text(torch.rand(1, 8, 8, 3), "dog", detector, None)
    with pytest.raises(ValueError, match=r"box_threshold must lie in \[0, 1\]"):
        masks_from_text(torch.rand(1, 8, 8, 3), "dog", detector, None, MaskOptions(box_mode=True, box_threshold=2))
    with pytest.raises(ValueError, match="frames must be"):
        masks_from_text(torch.rand(8, 8), "dog", detector, None, MaskOptions(box_mode=True))


def test_small_frames_are_enlarged_until_900_queries_fit(bert):
    config = tiny_dino_config(bert, num_queries=900)
    assert dino.encoder_tokens(240, 240, config) >= 900 > dino.encoder_tokens(200, 200, config)
    h, w = dino.detection_size(64, 96, config, short=64)
    assert dino.encoder_tokens(h, w, config) >= 900 and abs(w / h - 1.5) < 0.05
    assert dino.detection_size(480, 640, config) == (800, 1066)  # GroundingDINO's 800 / 1333 resize
    assert dino.detection_size(300, 3000, config) == (133, 1330)
