"""The metric conventions (``cococo_core.metrics.conventions``) against the published evaluation code, whose
arithmetic is re-stated here from its source (file and function named at each helper), never computed with
the pack's own functions; every case is one where the two conventions give different numbers:

* I3D features with BatchNorm per video: piergiaj/pytorch-i3d ``pytorch_i3d.py`` as E2FGVI / ProPainter
  ``core/metrics.py`` run it (``init_i3d_model`` never calls ``.eval()``, so every BatchNorm normalises the one
  clip ``calculate_i3d_activations`` feeds it with that clip's own statistics);
* E_warp of a fully occluded frame pair: Lai et al. ``evaluate_WarpError.py`` (``N == 0`` -> H*W*C, the
  masked difference is 0, so the pair adds 0);
* PSNR / SSIM over videos of different lengths: E2FGVI ``evaluate.py`` (``total_frame_psnr`` over all frames)
  with ``core/metrics.py`` ``calculate_psnr`` / ``calc_psnr_and_ssim`` and ``calculate_vfid``;
* the CS clamp: torchmetrics ``CLIPScore.compute`` (``max(score / n_samples, 0)``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tiny_models
from cococo_core.metrics import (Conventions, clip_score, conventions_preset, i3d_features, load_clip, load_i3d,
                                 psnr, warp_error)

ROOT = Path(__file__).resolve().parent.parent


# --- pytorch-i3d re-stated (pytorch_i3d.py: Unit3D, MaxPool3dSamePadding, InceptionModule, InceptionI3d)

# VALID_ENDPOINTS up to Mixed_5c with (kernel_shape, stride) of the units and pools, from InceptionI3d.__init__
PUBLISHED_ENDPOINTS = (
    ("Conv3d_1a_7x7", "unit", (7, 7, 7), (2, 2, 2)), ("MaxPool3d_2a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", "unit", (1, 1, 1), (1, 1, 1)), ("Conv3d_2c_3x3", "unit", (3, 3, 3), (1, 1, 1)),
    ("MaxPool3d_3a_3x3", "pool", (1, 3, 3), (1, 2, 2)), ("Mixed_3b", "mixed", None, None),
    ("Mixed_3c", "mixed", None, None), ("MaxPool3d_4a_3x3", "pool", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", "mixed", None, None), ("Mixed_4c", "mixed", None, None), ("Mixed_4d", "mixed", None, None),
    ("Mixed_4e", "mixed", None, None), ("Mixed_4f", "mixed", None, None),
    ("MaxPool3d_5a_2x2", "pool", (2, 2, 2), (2, 2, 2)), ("Mixed_5b", "mixed", None, None),
    ("Mixed_5c", "mixed", None, None),
)


def _same_pad(x, kernel, stride):
    """Unit3D.compute_pad / forward: pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0), front = pad // 2."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
        pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads.append((pad // 2, pad - pad // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


def _published_unit(state, name, x, kernel, stride, train_mode):
    """Unit3D.forward: same padding, conv3d (no bias), BatchNorm3d(eps=0.001), ReLU. In train mode (the
    model never put in eval mode) BatchNorm uses the batch's mean and biased variance over (N, T, H, W)."""
    weight = state[f"{name}.conv3d.weight"]
    x = F.conv3d(_same_pad(x, weight.shape[2:] if kernel is None else kernel, stride), weight, stride=stride)
    if train_mode:
        mean = x.mean(dim=(0, 2, 3, 4), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3, 4), keepdim=True)
    else:
        mean = state[f"{name}.bn.running_mean"].view(1, -1, 1, 1, 1)
        var = state[f"{name}.bn.running_var"].view(1, -1, 1, 1, 1)
    scale, shift = state[f"{name}.bn.weight"].view(1, -1, 1, 1, 1), state[f"{name}.bn.bias"].view(1, -1, 1, 1, 1)
    return torch.relu((x - mean) / torch.sqrt(var + 0.001) * scale + shift)


def _published_pool(x, kernel, stride):
    """MaxPool3dSamePadding.forward: the same padding, then nn.MaxPool3d(kernel, stride, padding=0)."""
    return F.max_pool3d(_same_pad(x, kernel, stride), kernel, stride)


def published_i3d_features(state, frames_uint8, *, train_mode=True) -> np.ndarray:
    """E2FGVI core/metrics.py calculate_i3d_activations for one video: to_tensors() (/255, no rescale),
    unsqueeze(0), get_i3d_activations -> extract_features(x.transpose(1, 2), 'Logits') =
    x.mean(4).mean(3).mean(2) after Mixed_5c. float64 throughout."""
    state = {k: v.double() for k, v in state.items()}
    x = torch.from_numpy(frames_uint8).double().div(255).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    for name, kind, kernel, stride in PUBLISHED_ENDPOINTS:
        if kind == "pool":
            x = _published_pool(x, kernel, stride)
        elif kind == "unit":
            x = _published_unit(state, name, x, kernel, stride, train_mode)
        else:  # InceptionModule.forward
            one = (1, 1, 1)
            b0 = _published_unit(state, f"{name}.b0", x, one, one, train_mode)
            b1 = _published_unit(state, f"{name}.b1b", _published_unit(state, f"{name}.b1a", x, one, one, train_mode),
                                 (3, 3, 3), one, train_mode)
            b2 = _published_unit(state, f"{name}.b2b", _published_unit(state, f"{name}.b2a", x, one, one, train_mode),
                                 (3, 3, 3), one, train_mode)
            b3 = _published_unit(state, f"{name}.b3b", _published_pool(x, (3, 3, 3), one), one, one, train_mode)
            x = torch.cat([b0, b1, b2, b3], dim=1)
    return x.mean(4).mean(3).mean(2)[0].numpy()


def published_vfid(real, fake) -> float:
    """E2FGVI core/metrics.py calculate_vfid + calculate_frechet_distance (scipy.linalg.sqrtm of s1 s2)."""
    linalg = pytest.importorskip("scipy.linalg")
    m1, m2 = np.mean(real, axis=0), np.mean(fake, axis=0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    assert np.isfinite(covmean).all()
    covmean = covmean.real
    diff = m1 - m2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def published_psnr(img1, img2) -> float:
    """E2FGVI core/metrics.py calculate_psnr on float64 frames (calc_psnr_and_ssim casts them)."""
    mse = np.mean((img1.astype(np.float64) - img2.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(20.0 * np.log10(255.0 / np.sqrt(mse)))


def _relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _texture(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    from PIL import Image

    coarse = np.random.default_rng(seed).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return np.stack([np.roll(base, 3 * t, axis=1) for t in range(frames)])


# --- I3D BatchNorm per video

def test_i3d_per_video_batchnorm_is_the_published_codes_train_mode():
    state = torch.load(tiny_models.i3d_file(), weights_only=True)
    model = load_i3d(tiny_models.i3d_file(), dtype=torch.float64)  # float64 on both sides: one rounding level
    video = _texture(1, 6, 40, 56)
    per_video = i3d_features(video, model, norm="per-video")
    running = i3d_features(video, model, norm="running")
    published = published_i3d_features(state, video, train_mode=True)
    assert _relative(per_video, published) < 1e-10
    # the running-statistics convention is the same network in eval mode, and a different number
    assert _relative(running, published_i3d_features(state, video, train_mode=False)) < 1e-10
    assert _relative(running, published) > 1e-2
    # per video means per video: a batch of two gives each video's own features, whatever it is batched with
    other = _texture(2, 6, 40, 56)
    batch = torch.from_numpy(np.stack([video, other])).double().div(255).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        batched = model.features(batch, per_video_statistics=True).numpy()
    assert _relative(batched[0], published) < 1e-10
    assert _relative(batched[1], published_i3d_features(state, other)) < 1e-10
    # and the model's running statistics are left as they were (train-mode BatchNorm would update them)
    assert torch.equal(model.Conv3d_1a_7x7.bn.running_mean, state["Conv3d_1a_7x7.bn.running_mean"])


def test_i3d_per_video_on_a_clip_too_small_says_so():
    model = load_i3d(tiny_models.i3d_file())
    with pytest.raises(ValueError, match="too small for I3D with per-video BatchNorm"):
        i3d_features(_texture(0, 4, 32, 32), model, norm="per-video")


# --- E_warp of a fully occluded pair

def test_warp_error_of_a_fully_occluded_pair_follows_lai_et_al():
    video = np.random.default_rng(3).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    forward = torch.zeros(2, 8, 10, 2, dtype=torch.float64)
    backward = torch.zeros_like(forward)
    forward[0, ..., 0] = 2.0  # pair 0: forward +2, backward 0 -> |F + B~|^2 = 4 > 0.5: every pixel occluded
    # pair 1: zero flows -> nothing occluded, the warp is the identity
    frames = video.astype(np.float64) / 255
    # evaluate_WarpError.py: diff = (warp_img2 - img1) * noc_mask; N = sum(noc_mask) (3 channels), 0 -> H*W*C
    noc = [np.zeros((8, 10, 3)), np.ones((8, 10, 3))]
    shifted = frames[1][:, np.minimum(np.arange(10) + 2, 9)]  # frame 1 sampled at x + 2, clamped at the border
    warped = [shifted, frames[2]]
    err = 0.0
    for t in range(2):
        diff = (warped[t] - frames[t]) * noc[t]
        n = noc[t].sum() or diff.size
        err += np.sum(diff ** 2) / n
    lai = err / 2
    assert warp_error(video, flows=(forward, backward), occluded="zero") == pytest.approx(lai, rel=1e-12)
    # the pack's convention averages the occluded pair over every pixel instead
    all_pixels = (np.mean((shifted - frames[0]) ** 2) + np.mean((frames[2] - frames[1]) ** 2)) / 2
    assert warp_error(video, flows=(forward, backward)) == pytest.approx(all_pixels, rel=1e-12)
    assert abs(all_pixels - lai) > 0.01


def test_metric_suite_passes_the_occlusion_convention_to_e_warp():
    from cococo_core.metrics import MetricSuite

    class FixedFlow:  # a stand-in estimator: pair 0 fully occluded (forward +2, backward 0), pair 1 static
        name = "fixed"

        def __init__(self):
            self.calls = 0

        def __call__(self, first, second):
            self.calls += 1
            flow = torch.zeros(2, 8, 10, 2, dtype=torch.float64)
            if self.calls % 2 == 1:
                flow[0, ..., 0] = 2.0
            return flow

    video = np.random.default_rng(3).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    frames = video.astype(np.float64) / 255
    lai = 100 * np.mean((frames[2] - frames[1]) ** 2) / 2  # evaluate_WarpError.py: the occluded pair adds 0
    paper = MetricSuite(flow=FixedFlow(), conventions=conventions_preset("paper")).evaluate(video, video).values
    pack = MetricSuite(flow=FixedFlow()).evaluate(video, video).values
    assert paper["ewarp"] == pytest.approx(lai, rel=1e-12)
    assert pack["ewarp"] > paper["ewarp"] + 1.0


# --- the CS clamp

def test_clip_score_clamps_each_frame_or_the_mean_as_torchmetrics():
    clip = load_clip(tiny_models.clip_folder())
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    text = clip.text_embeddings(["a cat"])[0]
    embeddings = torch.stack([text, -text, -text])  # cosines +1, -1, -1
    scores = torch.tensor([100.0, -100.0, -100.0], dtype=torch.float64)
    torchmetrics = float(torch.max(scores.sum(0) / 3, torch.zeros(())))  # CLIPScore.compute
    hessel = float(scores.clamp(min=0).mean())  # CLIP-S per pair, x100
    assert clip_score(frames, "a cat", clip, image_embeddings=embeddings, clamp="mean") == pytest.approx(torchmetrics, abs=1e-4)
    assert clip_score(frames, "a cat", clip, image_embeddings=embeddings) == pytest.approx(hessel, abs=1e-4)
    assert (torchmetrics, round(hessel, 3)) == (0.0, 33.333)


# --- NaN frames

def test_a_nan_frame_is_an_error_naming_the_video_and_frame_not_100_db():
    reference = np.full((3, 8, 8, 3), 0.5, np.float32)
    result = reference.copy()
    result[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"result: frame 1 \(of 3\) has NaN"):
        psnr(reference, result)
    result[1] = reference[1]
    result[2, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"reference: frame 2"):
        psnr(result, reference)


# --- the presets

def test_presets_name_every_convention_and_overrides_apply():
    assert conventions_preset("pack") == Conventions()
    paper = conventions_preset("paper")
    assert paper.as_dict() == {"i3d_norm": "per-video", "warp_occluded": "zero", "average": "frame", "cs_clamp": "frame"}
    assert conventions_preset("paper", average="video").average == "video"
    assert paper.of_metric("psnr") == {"average": "frame"} and paper.of_metric("bp") == {}
    with pytest.raises(ValueError, match="i3d_norm must be one of"):
        Conventions(i3d_norm="eval")


# --- evaluate --protocol paper end to end, videos of different lengths

LENGTHS = (2, 3, 5, 2, 4, 3, 2, 6, 3, 2, 4, 2, 3, 5, 2, 3)  # 16 videos: a full-rank 14-D feature covariance
HEIGHT, WIDTH = 72, 80  # SSIM's 65 px window fits; I3D keeps more than one value per channel


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory):
    """videos/vNN and results/vNN (PNG folders; the result = the video plus noise), lengths :data:`LENGTHS`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("uneven")
    noise = np.random.default_rng(7)
    pairs = {}
    for index, length in enumerate(LENGTHS):
        video = _texture(10 + index, length, HEIGHT, WIDTH)
        amplitude = 90 if length == 2 else 12  # short videos far worse: frame and video means differ
        result = np.clip(video.astype(int) + noise.integers(-amplitude, amplitude, video.shape), 0, 255).astype(np.uint8)
        for folder, frames in (("videos", video), ("results", result)):
            (root / folder / f"v{index:02d}").mkdir(parents=True)
            for t, frame in enumerate(frames):
                Image.fromarray(frame).save(root / folder / f"v{index:02d}" / f"{t:03d}.png")
        pairs[f"v{index:02d}"] = (video, result)
    return root, pairs


def _run_evaluate(arguments):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cococo_core", "evaluate", *arguments], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # features that ReLU keeps at 0 in every video
def test_evaluate_protocol_paper_equals_the_published_code_on_uneven_videos(uneven_dataset, tmp_path):
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    root, pairs = uneven_dataset
    common = ["--dataset", str(root), "--results", str(root / "results"), "--i3d", str(tiny_models.i3d_file()),
              "--flow", "none", "--device", "cpu", "--stride", "1", "--max-frames", "8", "--size", f"{WIDTH}x{HEIGHT}"]
    _run_evaluate([*common, "--protocol", "paper", "--out", str(tmp_path / "paper")])
    _run_evaluate([*common, "--protocol", "paper", "--conventions", "pack", "--out", str(tmp_path / "pack")])
    paper = json.loads((tmp_path / "paper" / "summary.json").read_text())
    pack = json.loads((tmp_path / "pack" / "summary.json").read_text())

    # E2FGVI evaluate.py: every frame's PSNR / SSIM into one list, averaged once; I3D per video, then VFID
    state = torch.load(tiny_models.i3d_file(), weights_only=True)
    frame_psnr, frame_ssim, video_psnr, video_ssim, real, fake, real_eval, fake_eval = ([] for _ in range(8))
    for video, result in pairs.values():
        psnrs = [published_psnr(o, c) for o, c in zip(video, result)]
        ssims = [structural_similarity(o.astype(np.float64), c.astype(np.float64), data_range=255, channel_axis=-1,
                                       win_size=65) for o, c in zip(video, result)]
        frame_psnr += psnrs
        frame_ssim += ssims
        video_psnr.append(sum(psnrs) / len(psnrs))
        video_ssim.append(sum(ssims) / len(ssims))
        real.append(published_i3d_features(state, video))
        fake.append(published_i3d_features(state, result))
        real_eval.append(published_i3d_features(state, video, train_mode=False))
        fake_eval.append(published_i3d_features(state, result, train_mode=False))

    metrics = paper["metrics"]
    assert paper["videos"] == len(LENGTHS) and metrics["psnr"]["frames"] == sum(LENGTHS)
    assert metrics["psnr"]["mean"] == pytest.approx(sum(frame_psnr) / len(frame_psnr), rel=1e-12)
    assert metrics["ssim"]["mean"] == pytest.approx(sum(frame_ssim) / len(frame_ssim), abs=1e-9)
    expected_vfid = published_vfid(np.stack(real), np.stack(fake))
    # the command's I3D runs in float32: features carry ~2e-5 relative rounding, the distance ~4e-5 here
    assert metrics["vfid"]["mean"] == pytest.approx(expected_vfid, rel=5e-4)
    assert metrics["psnr"]["conventions"] == {"average": "frame"}
    assert metrics["vfid"]["conventions"] == {"i3d_norm": "per-video"} and paper["conventions"]["warp_occluded"] == "zero"
    assert "E2FGVI" in metrics["psnr"]["convention"]
    assert "convention" in (tmp_path / "paper" / "summary.csv").read_text().splitlines()[0]

    # the pack's conventions: per-video means and the I3D in eval mode, which differ on these videos
    assert pack["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(video_psnr), rel=1e-12)
    assert pack["metrics"]["ssim"]["mean"] == pytest.approx(np.mean(video_ssim), abs=1e-9)
    assert pack["metrics"]["vfid"]["mean"] == pytest.approx(published_vfid(np.stack(real_eval), np.stack(fake_eval)),
                                                            rel=5e-4)
    assert abs(np.mean(video_psnr) - np.mean(frame_psnr)) > 1.0
    assert not math.isclose(pack["metrics"]["vfid"]["mean"], metrics["vfid"]["mean"], rel_tol=1e-2)
    assert pack["settings"]["conventions"]["i3d_norm"] == "running"
