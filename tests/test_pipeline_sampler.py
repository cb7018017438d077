"""The CoCoCo sampler: the official loop step for step, CFG variants, context windows, hooks, errors."""
import pytest
import torch

from cococo_core.hooks import Cancelled
from cococo_core.pipeline import denoise, dga_tokens_per_frame, max_window_frames, resolve_context
from test_pipeline_helpers import Spy, StandInUNet, official_loop, tiny_parts


def inputs(frames=4, size=8, seed=0, text_dim=32):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, frames, size, size, generator=generator)
    masked = torch.randn(1, 4, frames, size, size, generator=generator)
    mask = (torch.rand(1, 1, frames, size, size, generator=generator) > 0.5).float()
    cond = torch.randn(1, 77, text_dim, generator=generator)
    uncond = torch.randn(1, 77, text_dim, generator=generator)
    return noise, masked, mask, cond, uncond


def inputs_float64(**kwargs):
    return tuple(x.double() for x in inputs(**kwargs))


@pytest.mark.parametrize("split_cfg", [False, True])
def test_denoise_follows_the_official_loop_on_the_tiny_video_unet(split_cfg):
    # in float64 the batched CFG call is the only difference from upstream's two calls
    unet = tiny_parts(dtype=torch.float64)[3]
    noise, masked, mask, cond, uncond = inputs_float64(frames=3)
    expected = official_loop(unet, noise, masked, mask, cond, uncond, steps=2, guidance_scale=14.0)
    ours = denoise(unet, noise, masked, mask, cond, uncond, 2, 14.0, split_cfg=split_cfg)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-10)


def test_one_batched_call_per_step_and_two_when_split():
    # batch-2 and batch-1 calls round differently in float32 (by CPU): compared in float64
    noise, masked, mask, cond, uncond = inputs_float64()
    batched, split = StandInUNet().double(), StandInUNet().double()
    a = denoise(batched, noise, masked, mask, cond, uncond, 5, 7.5)
    b = denoise(split, noise, masked, mask, cond, uncond, 5, 7.5, split_cfg=True)
    assert batched.calls == [(2, 4)] * 5 and split.calls == [(1, 4)] * 10
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    reference = official_loop(StandInUNet().double(), noise, masked, mask, cond, uncond, 5, 7.5)
    torch.testing.assert_close(a, reference, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_guidance_at_most_one_runs_only_the_conditional_half(scale):
    noise, masked, mask, cond, _ = inputs_float64()
    unet = StandInUNet().double()
    ours = denoise(unet, noise, masked, mask, cond, None, 3, scale)
    assert unet.calls == [(1, 4)] * 3
    # with g <= 1 the official CFG formula would mix in the unconditional half; we run the conditional only
    reference = official_loop(StandInUNet().double(), noise, masked, mask, cond, cond, 3, 1.0)
    torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)


def test_single_window_is_bit_identical_to_the_plain_path():
    noise, masked, mask, cond, uncond = inputs(frames=5)
    plain = denoise(StandInUNet(), noise, masked, mask, cond, uncond, 3, 14.0)
    for length, overlap in [(5, 0), (5, 2), (200, 10)]:
        windowed = denoise(StandInUNet(), noise, masked, mask, cond, uncond, 3, 14.0,
                           context_length=length, context_overlap=overlap)
        assert torch.equal(windowed, plain)


def test_windows_equal_plain_for_frame_independent_motion():
    # identity motion modules (official zero proj_out init): each frame is denoised on its own, so
    # blending overlapping windows must give the plain result up to rounding. In float32 the 4- and 6-frame
    # U-Net calls round differently by CPU and CFG 14 amplifies it (1.7e-4 seen on AVX-512): float64
    unet = tiny_parts("identity", dtype=torch.float64)[3]
    noise, masked, mask, cond, uncond = inputs_float64(frames=6)
    plain = denoise(unet, noise, masked, mask, cond, uncond, 2, 14.0)
    windowed = denoise(unet, noise, masked, mask, cond, uncond, 2, 14.0, context_length=4, context_overlap=2)
    torch.testing.assert_close(windowed, plain, atol=1e-10, rtol=0)


def test_windows_change_the_result_when_frames_interact():
    noise, masked, mask, cond, uncond = inputs(frames=6)
    spy = Spy(tiny_parts()[3])
    plain = denoise(tiny_parts()[3], noise, masked, mask, cond, uncond, 1, 14.0)
    windowed = denoise(spy, noise, masked, mask, cond, uncond, 1, 14.0, context_length=4, context_overlap=2)
    assert spy.calls == [(2, 4), (2, 4)]
    assert not torch.allclose(windowed, plain, atol=1e-4)


def test_long_videos_get_windows_within_the_temporal_limit():
    noise, masked, mask, cond, uncond = inputs(frames=70, size=4)
    unet = StandInUNet()
    denoise(unet, noise, masked, mask, cond, uncond, 1, 2.0)
    assert unet.calls == [(2, 64), (2, 64)]


def test_dga_token_counts_match_the_official_limits():
    assert dga_tokens_per_frame(64, 64) == 144 and max_window_frames(64, 64) == 64  # 512x512
    assert dga_tokens_per_frame(45, 80) == 252 and max_window_frames(45, 80) == 39  # 640x360
    assert max_window_frames(32, 48) == 46 and max_window_frames(30, 54) == 39  # 384x256, 432x240
    assert dga_tokens_per_frame(8, 8) == 64 and dga_tokens_per_frame(12, 20) == 240


def test_resolve_context_defaults():
    assert resolve_context(16, 64, 64, None, None) == (16, 0)
    assert resolve_context(100, 64, 64, None, None) == (64, 16)
    assert resolve_context(100, 45, 80, None, None) == (39, 9)
    assert resolve_context(40, 8, 8, 16, None) == (16, 4)
    with pytest.raises(ValueError, match="overlap"):
        resolve_context(40, 8, 8, 16, 16)
    with pytest.raises(ValueError, match="damped-global-attention tokens"):
        resolve_context(4, 13, 20000, None, None)


def test_callback_gets_every_step_and_cancel_stops_within_one_step():
    noise, masked, mask, cond, uncond = inputs()
    seen = []
    denoise(StandInUNet(), noise, masked, mask, cond, uncond, 4, 14.0,
            callback=lambda step, total, latents: seen.append((step, total, tuple(latents.shape))))
    assert seen == [(s, 4, (1, 4, 4, 8, 8)) for s in range(1, 5)]

    unet, steps_done = StandInUNet(), []
    with pytest.raises(Cancelled):
        denoise(unet, noise, masked, mask, cond, uncond, 10, 14.0, callback=lambda s, t, x: steps_done.append(s),
                cancel=lambda: len(steps_done) >= 2)
    assert steps_done == [1, 2] and len(unet.calls) == 2


def test_cancel_is_polled_before_every_window():
    noise, masked, mask, cond, uncond = inputs(frames=12, size=4)
    unet = StandInUNet()
    with pytest.raises(Cancelled):
        denoise(unet, noise, masked, mask, cond, uncond, 3, 14.0, context_length=4, context_overlap=0,
                cancel=lambda: len(unet.calls) >= 2)
    assert len(unet.calls) == 2


def test_bad_inputs_are_reported():
    noise, masked, mask, cond, uncond = inputs()
    unet = StandInUNet()
    with pytest.raises(ValueError, match="latent mask"):
        denoise(unet, noise, masked, mask[:, :, :2], cond, uncond, 2, 14.0)
    with pytest.raises(ValueError, match="masked latents"):
        denoise(unet, noise, masked[:, :, :3], mask, cond, uncond, 2, 14.0)
    with pytest.raises(ValueError, match="noise"):
        denoise(unet, noise[0], masked, mask, cond, uncond, 2, 14.0)
    with pytest.raises(ValueError, match="negative prompt"):
        denoise(unet, noise, masked, mask, cond, None, 2, 14.0)
    with pytest.raises(ValueError, match="finite"):
        denoise(unet, noise, masked, mask, cond, uncond, 2, float("nan"))
    assert unet.calls == []


def test_explicit_windows_past_the_trained_limits_run_with_a_warning(caplog):
    assert resolve_context(100, 8, 8, 80, None) == (80, 20)
    assert "exceed the motion modules' trained limits" in caplog.text
    caplog.clear()
    assert resolve_context(100, 8, 8, 64, 8) == (64, 8)
    assert caplog.text == ""
