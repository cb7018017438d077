"""Input checks, working-size geometry and paste-back weights of the pipeline."""
import numpy as np
import pytest
import torch

from cococo_core.pipeline.frames import as_mask, as_video, from_working, plan_geometry, to_working
from cococo_core.pipeline.paste import paste_back, paste_weights


def test_video_accepts_uint8_and_float_numpy_or_torch():
    frames = np.zeros((2, 16, 24, 3), np.uint8)
    assert as_video(frames).dtype == torch.uint8
    assert as_video(torch.rand(2, 16, 24, 3)).dtype == torch.float32
    assert as_video(np.random.rand(2, 16, 24, 3)).dtype == torch.float64


@pytest.mark.parametrize("video, message", [
    (np.zeros((0, 16, 16, 3), np.uint8), "zero frames"),
    (np.zeros((16, 16, 3), np.uint8), r"\(frames, height, width, 3\)"),
    (np.zeros((2, 16, 16, 4), np.uint8), r"\(frames, height, width, 3\)"),
    (np.zeros((2, 16, 16, 3), np.int32), "uint8 .* or float"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), "NaN"),
    (np.full((2, 16, 16, 3), 255.0, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 4, 16, 3), np.uint8), "at least 8x8"),
    ([[0.0]], "numpy array or a torch tensor"),
])
def test_bad_videos_are_explained(video, message):
    with pytest.raises(ValueError, match=message):
        as_video(video)


def test_masks_convert_and_broadcast():
    assert as_mask(np.full((3, 8, 8), 255, np.uint8), 3, 8, 8).max() == 1.0
    assert as_mask(torch.ones(1, 8, 8, dtype=torch.bool), 3, 8, 8).shape == (3, 8, 8)
    assert as_mask(np.zeros((3, 8, 8, 1), np.float32), 3, 8, 8).shape == (3, 8, 8)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((2, 8, 8), np.float32), "mask has 2 frames but the video has 3"),
    (np.zeros((3, 8, 9), np.float32), "does not match the video frame size"),
    (np.full((3, 8, 8), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((3, 8, 8), -0.1, np.float32), r"\[0, 1\]"),
    (np.full((3, 8, 8), np.nan, np.float32), "NaN"),
    (np.zeros((3, 8, 8), np.int64), "bool, uint8"),
    (np.zeros((3, 2, 8, 8), np.float32), r"\(frames, height, width\)"),
])
def test_bad_masks_are_explained(mask, message):
    with pytest.raises(ValueError, match=message):
        as_mask(mask, 3, 8, 8)


def test_geometry_pads_to_64_and_keeps_aspect_when_resizing():
    plain = plan_geometry(72, 100)
    assert plain.work_hw == (72, 100) and plain.padded_hw == (128, 128) and plain.latent_hw == (16, 16)
    assert plan_geometry(360, 640, size_multiple=8).padded_hw == (360, 640)
    assert plan_geometry(360, 640, work_width=320).work_hw == (176, 320)
    assert plan_geometry(360, 640, work_height=256, work_width=256).padded_hw == (256, 256)
    with pytest.raises(ValueError, match="size_multiple"):
        plan_geometry(64, 64, size_multiple=12)


def test_padding_round_trip_is_exact_and_reflects():
    images = torch.rand(2, 3, 20, 70)  # padding wider than the frame: reflection is repeated
    geometry = plan_geometry(20, 70)
    padded = to_working(images, geometry)
    assert padded.shape == (2, 3, 64, 128)
    assert torch.equal(from_working(padded, geometry), images)
    assert torch.equal(padded[..., 20, :70], images[..., 18, :])  # reflection of row 18 about row 19


def test_resized_binary_masks_stay_binary():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:20, 10:20] = 1
    working = to_working(mask, plan_geometry(64, 64, work_width=40, work_height=40), binary=True)
    assert set(working.unique().tolist()) == {0.0, 1.0}


def test_paste_weights_are_one_in_the_hole_and_zero_far_away():
    mask = torch.zeros(1, 40, 40)
    mask[0, 15:25, 15:25] = 0.3  # soft values count as hole
    weights = paste_weights(mask, dilate=2, feather=4)
    assert (weights[0, 13:27, 13:27] == 1).all()  # hole + dilation
    assert (weights[0, :9] == 0).all() and (weights[0, 31:] == 0).all()  # beyond dilation + feather
    ramp = weights[0, 20, 26:31]
    assert (ramp[:-1] >= ramp[1:]).all() and 0 < ramp[1] < 1
    assert torch.equal(paste_weights(mask, dilate=0, feather=0), (mask > 0).float())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_paste_back_keeps_unmasked_pixels_bit_identical(dtype):
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(2, 30, 30, 3, generator=generator)
    generated = torch.rand(2, 30, 30, 3, generator=generator)
    if dtype == torch.uint8:
        original, generated = (original * 255).to(dtype), (generated * 255).to(dtype)
    mask = torch.zeros(2, 30, 30)
    mask[:, 10:15, 10:15] = 1
    weights = paste_weights(mask, dilate=1, feather=2)
    out = paste_back(original, generated, weights)
    outside = weights == 0
    assert outside.any() and torch.equal(out[outside], original[outside])
    assert torch.equal(out[mask > 0], generated[mask > 0])
    with pytest.raises(ValueError, match="one shape and dtype"):
        paste_back(original, generated.float() if dtype == torch.uint8 else generated.double(), weights)


@pytest.mark.parametrize("height, width", [(64, 80), (24, 30), (40, 90)])
def test_resize_mask_matches_pillows_bilinear_resize(height, width):
    """Reference: Pillow's BILINEAR resize of a float image (support-scaled when shrinking), which torch's
    antialiased bilinear interpolation reproduces."""
    from PIL import Image

    from cococo_core.pipeline.frames import resize_mask

    mask = (np.random.default_rng(0).random((40, 56)) > 0.5).astype(np.float32)
    expected = np.asarray(Image.fromarray(mask, mode="F").resize((width, height), Image.BILINEAR), np.float64)
    resized = resize_mask(torch.from_numpy(mask)[None], height, width)
    assert resized.shape == (1, height, width)
    np.testing.assert_allclose(resized[0].double().numpy(), expected, atol=1e-4)
    assert resize_mask(torch.from_numpy(mask)[None], 40, 56).equal(torch.from_numpy(mask)[None])
