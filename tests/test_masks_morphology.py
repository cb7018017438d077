"""Mask post-processing: exact growth/shrink, hole filling, de-flicker, feathering, box rasterisation."""
import pytest
import torch

from cococo_core.masks import morphology
from cococo_core.masks.text_masks import MaskOptions, postprocess


def _square(size=40, top=10, left=12, side=9):
    mask = torch.zeros(1, size, size)
    mask[0, top:top + side, left:left + side] = 1
    return mask


def _bbox(mask):
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


@pytest.mark.parametrize("n", [1, 3, 5])
def test_dilation_grows_a_square_by_exactly_n_per_side(n):
    grown = morphology.grow(_square(), n)
    assert _bbox(grown) == (10 - n, 12 - n, 18 + n, 20 + n)
    assert grown.sum() == (9 + 2 * n) ** 2  # still a full square: corners included
    assert set(grown.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("n", [1, 2, 4])
def test_erosion_shrinks_a_square_by_exactly_n_per_side(n):
    shrunk = morphology.grow(_square(), -n)
    assert _bbox(shrunk) == (10 + n, 12 + n, 18 - n, 20 - n)
    assert shrunk.sum() == (9 - 2 * n) ** 2


def test_erosion_keeps_masks_that_touch_the_border():
    mask = torch.zeros(1, 20, 20)
    mask[0, :, :6] = 1  # a band along the left edge
    shrunk = morphology.grow(mask, -2)
    assert shrunk[0, :, :4].all() and not shrunk[0, :, 4:].any()  # eaten only from its inner side


def test_fill_holes_fills_enclosed_background_only():
    mask = torch.zeros(2, 30, 30)
    mask[:, 5:20, 5:20] = 1
    mask[:, 9:14, 9:14] = 0  # enclosed hole
    mask[1, 12:16, 5:9] = 0  # frame 1 also: a channel from the hole to the outside
    filled = morphology.fill_holes(mask)
    assert filled[0, 5:20, 5:20].all() and filled[0].sum() == 15 * 15
    assert torch.equal(filled[1], mask[1])  # an open bay is not a hole


def test_fill_holes_uses_4_connectivity_for_background():
    mask = torch.zeros(1, 9, 9)
    mask[0, 2:7, 2:7] = 1
    mask[0, 4, 4] = 0  # one-pixel hole
    mask[0, 1, 1] = 0  # diagonal neighbours do not open a hole to the border
    assert morphology.fill_holes(mask)[0, 4, 4] == 1


def test_temporal_majority_removes_one_frame_flicker():
    masks = torch.zeros(7, 8, 8)
    masks[:, 2:6, 2:6] = 1
    masks[3] = 0  # the object vanishes for one frame
    masks[5, 0, 0] = 1  # a one-frame speck
    smooth = morphology.temporal_majority(masks, 1)
    assert smooth[:, 2:6, 2:6].all()
    assert smooth[:, 0, 0].sum() == 0
    assert torch.equal(morphology.temporal_majority(masks, 0), masks)


def test_feather_softens_edges_only():
    mask = _square(40, 10, 10, 20)
    soft = morphology.feather(mask, 4)
    assert soft.min() >= 0 and soft.max() <= 1
    assert torch.allclose(soft[0, 15:25, 15:25], torch.ones(10, 10))  # deeper than the radius: untouched
    assert soft[0, 0:4, 0:4].max() == 0
    assert 0.2 < soft[0, 10, 20] < 0.8  # on the edge: half way


def test_box_masks_take_pixels_whose_centre_is_inside():
    mask = morphology.box_masks(torch.tensor([[2.0, 3.0, 6.0, 5.0], [7.2, 0.0, 7.8, 1.0]]), 8, 10)
    expected = torch.zeros(8, 10)
    expected[3:5, 2:6] = 1
    expected[0, 7] = 1
    assert torch.equal(mask, expected)
    assert morphology.box_masks(torch.zeros(0, 4), 4, 4).sum() == 0


def test_postprocess_order_fill_then_grow():
    mask = torch.zeros(1, 30, 30)
    mask[0, 10:20, 10:20] = 1
    mask[0, 14:16, 14:16] = 0
    out = postprocess(mask, MaskOptions(fill_holes=True, grow=2))
    assert out.sum() == 14 * 14
