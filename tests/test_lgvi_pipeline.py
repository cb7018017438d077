"""LGVI referring pipeline: guidance, temporal windows, end to end on the tiny official-layout folder."""
from __future__ import annotations

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
