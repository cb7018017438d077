"""LGVI referring pipeline: guidance, temporal windows, end to end on the tiny official-layout folder."""
from __future__ import annotations

import functools
import inspect

import pytest
import torch

import test_lgvi_tiny as tiny
from cococo_core.hooks import Cancelled
from cococo_core.lgvi.guidance import combine_guidance, guidance_enabled
from cococo_core.lgvi.pipeline import LGVIPipeline


@pytest.fixture(scope="module")
def pipe():
    return LGVIPipeline.from_pretrained(tiny.lgvi_folder(8), device="cpu")


def _video(frames=3, height=40, width=56, seed=0):
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def test_guidance_formula_and_activation():
    eps_t, eps_i, eps_u = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([0.5])
    # eps_U + g_t (eps_T - eps_I) + g_i (eps_I - eps_U) = 0.5 + 3*1 + 1.5*1.5
    assert combine_guidance(eps_t, eps_i, eps_u, 3.0, 1.5).item() == pytest.approx(5.75)
    assert combine_guidance(eps_t, eps_i, eps_u, 1.0, 1.0).item() == pytest.approx(3.0)  # scales 1 -> eps_T
    assert guidance_enabled(3.0, 1.5) and guidance_enabled(1.01, 1.0)
    assert not guidance_enabled(1.0, 1.5) and not guidance_enabled(3.0, 0.9)


class _Spy(torch.nn.Module):
    """Stands in for the U-Net: records contexts/conditions and returns distinguishable predictions."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, sample, t, context, condition, return_mask=False):
        self.calls.append((context.clone(), condition.clone(), return_mask))
        return self.unet(sample, t, context, condition, return_mask=return_mask)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)


def test_three_sequential_passes_with_official_conditions(pipe, monkeypatch):
    spy = _Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy)
    pipe(_video(frames=2), "remove the dog", num_inference_steps=2, size=(32, 32))
    steps = len(pipe.scheduler.timesteps)
    assert len(spy.calls) == 3 * steps
    text, empty = pipe.encode_text("remove the dog"), pipe.encode_text("")
    (c_t, v_t, mask_t), (c_i, v_i, _), (c_u, v_u, _) = spy.calls[-3:]
    torch.testing.assert_close(c_t, text)
    torch.testing.assert_close(c_i, empty)  # CLIP(""), not zeros
    torch.testing.assert_close(c_u, empty)
    assert torch.equal(v_t, v_i) and v_t.abs().sum() > 0 and torch.count_nonzero(v_u) == 0  # zero video latent
    assert mask_t and not any(call[2] for call in spy.calls[:-3])  # mask decoder once, in the last step
    spy.calls.clear()
    pipe(_video(frames=2), "remove the dog", num_inference_steps=1, size=(32, 32), guidance_scale=1.0)
    assert len(spy.calls) == len(pipe.scheduler.timesteps)  # guidance off: the text-conditioned pass alone


def test_end_to_end_shapes_seed_and_mask(pipe):
    steps = []
    video = _video(frames=2)
    result = pipe(video, "remove the bird on left", num_inference_steps=2, seed=7, callback=lambda s, n, x: steps.append((s, n)))
    assert result.frames.shape == video.shape and result.frames.dtype == torch.float32
    assert 0 <= float(result.frames.min()) and float(result.frames.max()) <= 1
    assert result.mask.shape == video.shape[:3] and 0 <= float(result.mask.min()) and float(result.mask.max()) <= 1
    assert steps[-1][0] == steps[-1][1] == len(steps)
    once = pipe(video, "remove the bird on left", num_inference_steps=1, seed=7, guidance_scale=1.0)
    again = pipe(video, "remove the bird on left", num_inference_steps=1, seed=7, guidance_scale=1.0)
    other = pipe(video, "remove the bird on left", num_inference_steps=1, seed=8, guidance_scale=1.0)
    assert torch.equal(again.frames, once.frames)
    assert not torch.allclose(other.frames, once.frames)
    small = pipe(video, "remove the bird on left", num_inference_steps=1, size=(64, 48), resize_back=False,
                 return_mask=False, guidance_scale=1.0)
    assert small.frames.shape == (2, 48, 64, 3) and small.mask is None


def test_single_window_is_the_plain_path_and_windows_cover_long_videos(pipe):
    video = _video(frames=5, height=32, width=32)
    options = dict(num_inference_steps=1, guidance_scale=1.0)
    plain = pipe(video, "remove it", window_length=24, **options)
    exact = pipe(video, "remove it", window_length=5, window_overlap=2, **options)
    assert torch.equal(plain.frames, exact.frames) and torch.equal(plain.mask, exact.mask)
    windowed = pipe(video, "remove it", window_length=3, window_overlap=1, **options)
    assert windowed.frames.shape == plain.frames.shape and windowed.mask.shape == plain.mask.shape
    assert torch.isfinite(windowed.frames).all()


class _PerFrameModel(torch.nn.Module):
    """A U-Net stand-in whose prediction for a frame depends on that frame only."""

    def __init__(self, unet):
        super().__init__()
        self.config, self.mask_decoder = unet.config, None
        self.weight = torch.nn.Parameter(torch.tensor(0.7))

    dtype = property(lambda self: self.weight.dtype)
    device = property(lambda self: self.weight.device)

    def forward(self, sample, t, context, condition, return_mask=False):
        return torch.tanh(self.weight * sample + 0.1 * condition + context.mean()), None


def test_windows_equal_plain_when_frames_do_not_interact(monkeypatch):
    """For a per-frame model, blended overlapping windows must reproduce the plain prediction. In float64: the
    windows' differently shaped tensors may round differently in float32 on other CPUs; the frames come back as
    float32, so they may differ by one float32 rounding of values <= 1."""
    pipe = LGVIPipeline.from_pretrained(tiny.lgvi_folder(8), device="cpu", dtype=torch.float64)
    pipe.text_encoder.float()  # transformers 4.45's CLIP cannot build its causal mask in float64
    monkeypatch.setattr(pipe, "unet", _PerFrameModel(pipe.unet).double())
    video = _video(frames=7, height=32, width=32)
    plain = pipe(video, "remove it", num_inference_steps=2, return_mask=False)
    windowed = pipe(video, "remove it", num_inference_steps=2, window_length=3, window_overlap=1, return_mask=False)
    torch.testing.assert_close(windowed.frames, plain.frames, rtol=0, atol=2**-23)


def test_cancel_and_input_errors(pipe):
    with pytest.raises(Cancelled):
        pipe(_video(), "remove it", num_inference_steps=1, cancel=lambda: True)
    with pytest.raises(ValueError, match="exactly one"):
        pipe(_video(), "remove it", context=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        pipe(_video(), context=torch.zeros(1, 4, 768))
    with pytest.raises(ValueError, match="frames"):
        pipe(torch.rand(3, 32, 32), "remove it")


def test_context_conditioning_uses_zeros_as_negative(pipe, monkeypatch):
    spy = _Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy)
    context = torch.randn(1, 6, 32)
    pipe(_video(frames=2), context=context, num_inference_steps=1, size=(32, 32))
    (c_t, _, _), (c_i, _, _), (c_u, _, _) = spy.calls[:3]
    torch.testing.assert_close(c_t, context)
    assert c_i.shape == context.shape and torch.count_nonzero(c_i) == 0 and torch.count_nonzero(c_u) == 0


def test_four_channel_variant_runs_end_to_end():
    pipe4 = LGVIPipeline.from_pretrained(tiny.lgvi_folder(4), device="cpu", text_encoder=True)
    assert pipe4.unet.condition_conv_in is not None
    result = pipe4(_video(frames=2, height=32, width=32), "remove it", num_inference_steps=1, guidance_scale=1.0)
    assert result.frames.shape == (2, 32, 32, 3)


def test_text_negative_prompt_replaces_clip_empty_in_both_unconditional_passes(pipe, monkeypatch):
    spy = _Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy)
    pipe(_video(frames=2), "remove the dog", negative_prompt="the cat", num_inference_steps=1, size=(32, 32))
    (c_t, _, _), (c_i, _, _), (c_u, _, _) = spy.calls[:3]
    torch.testing.assert_close(c_t, pipe.encode_text("remove the dog"))
    torch.testing.assert_close(c_i, pipe.encode_text("the cat"))
    torch.testing.assert_close(c_u, pipe.encode_text("the cat"))
    with pytest.raises(TypeError, match="type of text"):
        pipe(_video(frames=2), "remove the dog", negative_prompt=["the cat"], num_inference_steps=1)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        pipe(_video(frames=2), ["remove the dog"], negative_prompt=["a", "b"], num_inference_steps=1)
    with pytest.raises(ValueError, match="negative_context"):
        pipe(_video(frames=2), context=torch.zeros(1, 4, 32), negative_prompt="the cat", num_inference_steps=1)


def test_user_latents_are_the_starting_noise(pipe, monkeypatch):
    spy = _Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy)
    samples = []
    original = spy.forward
    monkeypatch.setattr(spy, "forward", lambda sample, *a, **k: (samples.append(sample.clone()), original(sample, *a, **k))[1])
    latents = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    first = pipe(_video(frames=2), "remove it", latents=latents, num_inference_steps=1, size=(32, 32), guidance_scale=1.0)
    t0 = pipe.scheduler.timesteps[0]
    expected = pipe.scheduler.scale_model_input(latents * pipe.scheduler.init_noise_sigma, t0)
    torch.testing.assert_close(samples[0], expected)
    seeded = pipe(_video(frames=2), "remove it", num_inference_steps=1, size=(32, 32), guidance_scale=1.0)
    assert not torch.allclose(first.frames, seeded.frames)
    with pytest.raises(ValueError, match=r"latents must be shaped \(1, 4, 2, 4, 4\)"):
        pipe(_video(frames=2), "remove it", latents=torch.zeros(1, 4, 3, 4, 4), num_inference_steps=1, size=(32, 32))


def test_ddim_eta_reaches_the_scheduler(pipe, monkeypatch):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    monkeypatch.setattr(pipe, "scheduler", ddim)
    etas = []
    step = ddim.step

    @functools.wraps(step)  # keeps step's signature, which the pipeline inspects for "eta"
    def recording_step(*args, **kwargs):
        etas.append(kwargs.get("eta"))
        return step(*args, **kwargs)

    monkeypatch.setattr(ddim, "step", recording_step)
    options = dict(num_inference_steps=2, size=(32, 32), guidance_scale=1.0, seed=3)
    deterministic = pipe(_video(frames=2), "remove it", **options)
    stochastic = pipe(_video(frames=2), "remove it", eta=1.0, **options)
    assert etas == [0.0, 0.0, 1.0, 1.0]
    assert not torch.allclose(deterministic.frames, stochastic.frames)


def test_batched_prompts_and_videos_per_prompt_match_single_runs():
    """Official batching: prompts x num_videos_per_prompt videos, prompt-major; each video is normalised on its
    own (frame-pooled GroupNorm is per video), so a batch equals the single runs with the same starting noise
    (float64: batched and single GEMMs then agree far below the tolerance)."""
    pipe = LGVIPipeline.from_pretrained(tiny.lgvi_folder(8), device="cpu")
    pipe.unet.double(), pipe.vae.double()  # the CLIP text encoder stays float32 (its mask overflows in float64 on 4.x)
    video, prompts = _video(frames=2, height=32, width=32), ["remove the dog", "remove the cat"]
    latents = torch.randn(4, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    options = dict(num_inference_steps=2, seed=4, negative_prompt=["a dog", "a cat"])
    batch = pipe(video, prompts, num_videos_per_prompt=2, latents=latents, **options)
    assert batch.videos.shape == (4, 2, 32, 32, 3) and batch.masks.shape == (4, 2, 32, 32)
    for k in range(4):
        single = pipe(video, [prompts[k // 2]], latents=latents[k : k + 1], **{**options, "negative_prompt": [options["negative_prompt"][k // 2]]})
        torch.testing.assert_close(batch.videos[k], single.frames, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch.masks[k], single.mask, rtol=0, atol=1e-6)
    assert not torch.allclose(batch.videos[0], batch.videos[2], atol=1e-3)


def test_windows_normalise_each_window_on_its_own(pipe, monkeypatch):
    """Frame-pooled GroupNorm statistics cover the frames the U-Net sees: with windows, those of one window."""
    spy = _Spy(pipe.unet)
    monkeypatch.setattr(pipe, "unet", spy)
    video = _video(frames=5, height=32, width=32)
    windowed = pipe(video, "remove it", num_inference_steps=1, guidance_scale=1.0, window_length=3, window_overlap=1)
    assert {call[1].shape[2] for call in spy.calls} == {3}
    plain = pipe(video, "remove it", num_inference_steps=1, guidance_scale=1.0)
    assert not torch.allclose(windowed.frames, plain.frames, atol=1e-4)


def test_eta_on_a_scheduler_without_eta_is_not_silently_ignored(pipe, caplog):
    assert "eta" not in inspect.signature(pipe.scheduler.step).parameters  # the tiny folder ships PNDM, as upstream
    with caplog.at_level("WARNING", logger="cococo_core.lgvi.pipeline"):
        pipe(_video(frames=2, height=16, width=16), "remove the dog", num_inference_steps=1, eta=0.5)
    assert "eta=0.5 has no effect" in caplog.text and "PNDMScheduler" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cococo_core.lgvi.pipeline"):
        pipe(_video(frames=2, height=16, width=16), "remove the dog", num_inference_steps=1)
    assert "has no effect" not in caplog.text
