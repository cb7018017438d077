"""The metrics against references from outside the code: scikit-image's SSIM, closed-form values, SciPy's
matrix square root, transformers' own CLIP and image processor, and the pytorch-i3d key layout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tiny_models
from cococo_core.metrics import (as_frames, background_preservation, clip_score, frechet_distance, i3d_features,
                                 load_clip, load_flow, load_i3d, occlusion_mask, psnr, ssim, temporal_consistency,
                                 vfid, warp_error, warp_frames)

RNG = np.random.default_rng(0)


def _video(frames=4, height=40, width=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def _smooth_video(frames=4, height=64, width=96, shift=2):
    """A smooth random texture moving right by ``shift`` pixels per frame (wrapping around)."""
    from PIL import Image

    coarse = np.random.default_rng(1).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return np.stack([np.roll(base, shift * t, axis=1) for t in range(frames)])


# --- BP / PSNR / SSIM

def test_identical_videos_give_the_known_values():
    video = _video()
    mask = np.zeros(video.shape[:3], np.float32)
    mask[:, 10:20, 10:30] = 1
    assert background_preservation(video, video, mask) == 0
    assert psnr(video, video) == 100.0
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-12)


def test_bp_is_the_mean_absolute_difference_outside_the_mask():
    original, result = _video(seed=1), _video(seed=2)
    mask = np.zeros(original.shape[:3], np.float32)
    mask[:, :, :20] = 1
    keep = mask == 0
    expected = np.abs(original.astype(np.float64) - result)[keep].mean()
    assert background_preservation(original, result, mask) == pytest.approx(expected, rel=1e-12)
    # changes inside the mask do not count; float frames in [0, 1] give the same number on [0, 255]
    edited = original.copy()
    edited[:, :, :20] = 0
    assert background_preservation(original, edited, mask) == 0
    assert background_preservation(original / 255.0, result / 255.0, mask[0]) == pytest.approx(expected, rel=1e-9)


def test_psnr_per_frame_then_averaged():
    reference = np.full((2, 8, 8, 3), 100, np.uint8)
    result = reference.copy()
    result[0] += 10  # MSE 100 -> 20 log10(255 / 10)
    expected = (20 * math.log10(25.5) + 100.0) / 2  # the identical second frame is capped at 100 dB
    assert psnr(reference, result) == pytest.approx(expected, rel=1e-12)


def test_ssim_equals_scikit_image_with_the_video_inpainting_settings():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    reference = _video(2, 80, 96, seed=3)
    noise = np.random.default_rng(4).integers(-40, 40, reference.shape)
    result = np.clip(reference.astype(int) + noise, 0, 255).astype(np.uint8)
    expected = np.mean([structural_similarity(reference[i].astype(np.float64), result[i].astype(np.float64),
                                              data_range=255, channel_axis=-1, win_size=65) for i in range(2)])
    assert ssim(reference, result) == pytest.approx(expected, abs=1e-9)
    small = [structural_similarity(reference[i, :30, :40].astype(np.float64), result[i, :30, :40].astype(np.float64),
                                   data_range=255, channel_axis=-1, win_size=29) for i in range(2)]
    assert ssim(reference[:, :30, :40], result[:, :30, :40]) == pytest.approx(np.mean(small), abs=1e-9)


# --- Frechet distance / VFID

def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    sqrtm = pytest.importorskip("scipy.linalg").sqrtm
    a, b = RNG.normal(size=(5, 5)), RNG.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = RNG.normal(size=5), RNG.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_vfid_of_identical_feature_sets_is_zero_and_grows_with_a_shift():
    features = RNG.normal(size=(6, 4))
    assert vfid(features, features) == pytest.approx(0, abs=1e-9)
    assert vfid(features, features + 1.0) == pytest.approx(4.0, rel=1e-9)  # ||mu shift||^2, same covariance


# --- I3D

def test_i3d_module_names_and_shapes_are_the_pytorch_i3d_layout():
    from cococo_core.metrics import InceptionI3d

    model = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    assert model == tiny_models.i3d_shapes()


def test_tiny_i3d_file_loads_and_gives_features_with_same_padding_sizes():
    model = load_i3d(tiny_models.i3d_file())
    assert model.logits.conv3d.out_channels == 10 and model.feature_channels == 4 + 4 + 3 + 3
    video = _video(5, 33, 45)
    features = i3d_features(video, model)
    assert features.shape == (14,) and np.isfinite(features).all()
    # TensorFlow SAME padding: every strided layer gives ceil(size / stride)
    with torch.no_grad():
        stem = model.Conv3d_1a_7x7(torch.rand(1, 3, 5, 33, 45))
    assert stem.shape[2:] == (3, 17, 23)
    assert not np.allclose(features, i3d_features(_video(5, 33, 45, seed=9), model))


def test_i3d_refuses_another_layout(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="pytorch-i3d layout"):
        load_i3d(path)


# --- CLIP: CS and TC against transformers' own model and image processor

def _reference_embeddings(frames, prompt):
    from transformers import CLIPImageProcessorPil, CLIPTokenizer

    model = tiny_models.clip_model()
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_models.clip_folder()))
    tokens = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
    return torch.nn.functional.normalize(image.double(), dim=-1), torch.nn.functional.normalize(text.double(), dim=-1)


@pytest.fixture(scope="module")
def clip_frames():
    return _video(3, 40, 56, seed=5)


def test_clip_score_and_temporal_consistency_match_transformers(clip_frames):
    image, text = _reference_embeddings(clip_frames, "a cat")
    expected_cs = float((100 * image @ text[0]).clamp(min=0).mean())
    expected_tc = float(100 * (image[:-1] * image[1:]).sum(-1).mean())
    for clip in (load_clip(tiny_models.clip_folder()),
                 load_clip(tiny_models.clip_file(), tokenizer=tiny_models.clip_folder())):
        assert clip_score(clip_frames, "a cat", clip) == pytest.approx(expected_cs, abs=2e-3)
        assert temporal_consistency(clip_frames, clip) == pytest.approx(expected_tc, abs=2e-3)


def test_vision_only_clip_file_gives_tc_and_a_clear_error_for_cs(clip_frames):
    clip = load_clip(tiny_models.clip_file(text=False))
    folder = load_clip(tiny_models.clip_folder())
    assert not clip.has_text
    assert temporal_consistency(clip_frames, clip) == pytest.approx(temporal_consistency(clip_frames, folder), abs=1e-9)
    with pytest.raises(ValueError, match="no text encoder"):
        clip_score(clip_frames, "a cat", clip)


def test_clip_score_on_the_mask_box_scores_the_crop(clip_frames):
    clip = load_clip(tiny_models.clip_folder())
    mask = np.zeros(clip_frames.shape[:3], np.float32)
    mask[:, 5:25, 10:40] = 1
    crop = clip_frames[:, 5:25, 10:40]
    assert clip_score(clip_frames, "a dog", clip, mask=mask, crop="mask") == pytest.approx(
        clip_score(crop, "a dog", clip), abs=1e-4)


# --- flow and warping error

def test_warp_with_a_known_integer_flow_is_a_shift():
    video = torch.from_numpy(_smooth_video(2, 16, 24)).double()
    flow = torch.zeros(1, 16, 24, 2, dtype=torch.float64)
    flow[..., 0] = 3  # pixel x of frame 0 is at x + 3 in frame 1
    warped = warp_frames(video[1:], flow)
    torch.testing.assert_close(warped[0, :, :-3], video[1, :, 3:], rtol=0, atol=1e-9)


def test_occlusion_mask_follows_the_forward_backward_formulas():
    forward = torch.zeros(1, 8, 10, 2, dtype=torch.float64)
    backward = torch.zeros_like(forward)
    forward[..., 0], backward[..., 0] = 2.0, -2.0  # consistent: no occlusion
    assert not occlusion_mask(forward, backward).any()
    backward[..., 0] = 0.0  # |F + B~|^2 = 4 > 0.01 (4 + 0) + 0.5: all occluded
    assert occlusion_mask(forward, backward).all()
    forward = torch.zeros(1, 8, 10, 2, dtype=torch.float64)
    forward[:, :, 5:, 0] = 3.0  # a motion boundary between columns 4 and 5 (forward difference at column 4)
    backward = -forward.clone()
    occluded = occlusion_mask(forward, torch.zeros_like(forward) + backward)
    assert occluded[0, :, 4].all()
    assert not occluded[0, :, :4].any()


def test_warp_error_is_zero_for_a_static_video_and_small_for_a_known_shift():
    pytest.importorskip("cv2")
    flow = load_flow("dis")
    assert flow.name == "dis"
    static = np.repeat(_smooth_video(1), 4, axis=0)
    assert warp_error(static, flow=flow) < 1e-12
    moving = _smooth_video(4, shift=2)
    estimate = flow(moving[:-1], moving[1:])
    assert estimate[:, 8:-8, 8:-8, 0].mean() == pytest.approx(2.0, abs=0.05)
    assert estimate[:, 8:-8, 8:-8, 1].abs().mean() < 0.05
    # with the exact flow only the wrapped-around columns differ: Lai et al.'s formula by hand
    frames = torch.from_numpy(moving).double() / 255
    forward = torch.zeros(3, *moving.shape[1:3], 2, dtype=torch.float64)
    forward[..., 0] = 2.0
    squared = (warp_frames(frames[1:], forward) - frames[:-1]).pow(2)
    assert warp_error(moving, flows=(forward, -forward)) == pytest.approx(float(squared.mean()), rel=1e-12)
    # DIS recovers the motion: its error stays near the exact flow's; a flickering video costs far more
    assert warp_error(moving, flow=flow) < 2 * float(squared.mean()) + 1e-4
    flicker = moving.copy()
    flicker[1::2] = (flicker[1::2] * 0.7).astype(np.uint8)
    assert warp_error(flicker, flow=flow) > 10 * warp_error(moving, flow=flow)


def test_flow_without_any_backend_says_what_to_install(monkeypatch):
    import cococo_core.metrics.flow as flow_module

    monkeypatch.setattr(flow_module, "flow_backends", lambda: [])
    with pytest.raises(ValueError, match="opencv-python-headless"):
        flow_module.load_flow("auto")


def test_raft_backend_runs_torchvision_raft_from_local_weights(tmp_path):
    optical_flow = pytest.importorskip("torchvision.models.optical_flow")
    from safetensors.torch import save_file

    model = optical_flow.raft_large(weights=None)
    path = tmp_path / "raft.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    estimator = load_flow("raft", raft_weights=path)
    video = _smooth_video(2, 64, 64)
    assert estimator.name == "raft" and estimator(video[:1], video[1:]).shape == (1, 64, 64, 2)


def test_frames_accept_uint8_and_float():
    video = _video(1, 4, 4)
    assert torch.equal(as_frames(video), as_frames(torch.from_numpy(video).float() / 255).round())


def test_suite_encodes_frames_once_for_cs_and_tc(clip_frames):
    from cococo_core.metrics import MetricSuite

    clip = load_clip(tiny_models.clip_folder())
    calls = []
    encode = clip.image_embeddings
    clip.image_embeddings = lambda frames, **kw: calls.append(len(frames)) or encode(frames, **kw)
    values = MetricSuite(clip=clip).evaluate(clip_frames, clip_frames, prompt="a cat").values
    assert calls == [3]
    clip.image_embeddings = encode
    assert values["cs"] == pytest.approx(clip_score(clip_frames, "a cat", clip), abs=1e-9)
    assert values["tc"] == pytest.approx(temporal_consistency(clip_frames, clip), abs=1e-9)
