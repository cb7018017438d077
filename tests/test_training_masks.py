"""CoCoCo training masks: instance masks cover the object boxes in every frame; the kind mix is configurable."""
from __future__ import annotations

import numpy as np
import pytest

from cococo_core.training.cococo.masks import (
    INSTANCE_SHAPES, CoverShape, MaskMix, instance_masks, random_masks, training_mask,
)


def centre_inside(box, height, width):
    """Reference written from the rule itself: pixel (i, j) is in the box when its centre (j+.5, i+.5) is."""
    x0, y0, x1, y1 = box
    out = np.zeros((height, width), bool)
    for i in range(height):
        for j in range(width):
            out[i, j] = x0 <= j + 0.5 <= x1 and y0 <= i + 0.5 <= y1
    return out


@pytest.mark.parametrize("kind", INSTANCE_SHAPES)
def test_every_cover_shape_holds_its_box(kind):
    rng = np.random.default_rng(0)
    for _ in range(25):
        x0, y0 = rng.uniform(-5, 40, 2)
        box = np.array([x0, y0, x0 + rng.uniform(0.3, 25), y0 + rng.uniform(0.3, 20)])
        shape = CoverShape.draw(rng, 0.15)
        shape.kind = kind
        covered = shape.render(box, 40, 56)
        assert not (centre_inside(box, 40, 56) & ~covered).any()


def test_instance_masks_cover_the_chosen_objects_in_every_frame():
    rng = np.random.default_rng(1)
    height, width, frames = 48, 64, 5
    for trial in range(30):
        boxes = []
        for f in range(frames):
            rows = []
            for phrase in range(3):
                x0, y0 = rng.uniform(0, 50), rng.uniform(0, 36)
                rows.append([x0, y0, x0 + rng.uniform(2, 14), y0 + rng.uniform(2, 12), phrase])
            boxes.append(np.array(rows))
        result = instance_masks(boxes, ["dog", "cat", "car"], height, width, rng)
        chosen = [["dog", "cat", "car"].index(o) for o in result.objects]
        assert result.prompt == (result.objects[0] if len(chosen) == 1 else
                                 ", ".join(result.objects[:-1]) + " and " + result.objects[-1])
        for f in range(frames):
            for row in boxes[f]:
                inside = centre_inside(row[:4], height, width)
                if int(row[4]) in chosen:
                    assert result.masks[f][inside].all(), (trial, f)
        assert set(np.unique(result.masks)) <= {0.0, 1.0}


def test_frames_without_boxes_follow_the_nearest_detection_and_no_boxes_gives_none():
    rng = np.random.default_rng(2)
    box = np.array([[10, 10, 20, 20, 0]])
    result = instance_masks([np.zeros((0, 5)), box, np.zeros((0, 5))], ["dog"], 32, 32, rng)
    inside = centre_inside(box[0, :4], 32, 32)
    assert all(result.masks[f][inside].all() for f in range(3))
    assert instance_masks([np.zeros((0, 5))] * 3, ["dog"], 32, 32, rng) is None


def test_kind_mix_is_configurable_and_defaults_to_the_paper():
    rng = np.random.default_rng(3)
    draws = [MaskMix().choose(rng) for _ in range(4000)]
    for kind, p in (("instance", 0.7), ("random", 0.2), ("unconditional", 0.1)):
        share = draws.count(kind) / len(draws)
        assert abs(share - p) < 4 * (p * (1 - p) / len(draws)) ** 0.5
    boxes = [np.array([[4, 4, 12, 12, 0]])] * 2
    assert training_mask(boxes, ["dog"], "a dog", 16, 16, rng, MaskMix(1, 0, 0)).prompt == "dog"
    assert training_mask(boxes, ["dog"], "a dog", 16, 16, rng, MaskMix(0, 1, 0)).prompt == "a dog"
    unconditional = training_mask(boxes, ["dog"], "a dog", 16, 16, rng, MaskMix(0, 0, 1))
    assert unconditional.prompt == "" and unconditional.masks[:, 4:12, 4:12].all()
    fallback = training_mask([np.zeros((0, 5))] * 2, [], "a dog", 16, 16, rng, MaskMix(1, 0, 0))
    assert (fallback.kind, fallback.prompt) == ("random", "a dog")
    with pytest.raises(ValueError):
        MaskMix(0, 0, 0).probabilities()


def test_random_masks_are_never_empty_and_move():
    rng = np.random.default_rng(4)
    for _ in range(20):
        masks = random_masks(6, 32, 48, rng)
        assert masks.shape == (6, 32, 48) and (masks.reshape(6, -1).sum(1) > 0).all()
