"""CoCoCoPipeline end to end on tiny random-weight models."""
import numpy as np
import pytest
import torch
from torch import nn

from cococo_core.hooks import Cancelled
from cococo_core.pipeline.conditioning import LATENT_SCALE, encode_images
from test_pipeline_helpers import Spy, moving_disc_mask, pan_clip, tiny_parts, tiny_pipeline

FRAMES, HEIGHT, WIDTH = 4, 40, 56  # not multiples of 64: padded to 64x64 (latent 8x8)


@pytest.fixture(scope="module")
def clip():
    return pan_clip(FRAMES, HEIGHT, WIDTH), moving_disc_mask(FRAMES, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def result(clip):
    """One default run (paste-back on), shared by the tests that only look at it."""
    video, mask = clip
    return tiny_pipeline()(video, mask, "the cat", num_inference_steps=2, seed=7, output="uint8")


class Forbidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("no model may run for an empty mask")

    def __getattr__(self, name):
        if name in ("encode", "decode"):
            raise AssertionError("no model may run for an empty mask")
        return super().__getattr__(name)


def test_empty_mask_returns_the_input_without_running_any_model(clip):
    video, _ = clip
    pipe = tiny_pipeline(unet=Forbidden())
    pipe.vae = pipe.text_encoder = Forbidden()
    empty = np.zeros((FRAMES, HEIGHT, WIDTH), np.uint8)
    assert np.array_equal(pipe(video, empty, "x", output="uint8").numpy(), video)
    assert torch.equal(pipe(video, empty, "x"), torch.from_numpy(video).float() / 255)


def test_result_has_the_input_size_and_keeps_every_unmasked_pixel(clip, result):
    video, mask = clip
    assert result.shape == (FRAMES, HEIGHT, WIDTH, 3) and result.dtype == torch.uint8
    weights_zero = ~torch.from_numpy(_grown(mask > 0, 8 + 4))
    assert torch.equal(result[weights_zero], torch.from_numpy(video)[weights_zero])
    hole = torch.from_numpy(mask > 0)
    assert (result[hole].int() - torch.from_numpy(video)[hole].int()).abs().float().mean() > 5  # the hole was filled


def _grown(mask, pixels):
    return torch.nn.functional.max_pool2d(torch.from_numpy(mask).float()[:, None], 2 * pixels + 1, 1, pixels)[:, 0].bool().numpy()


def test_float_input_float_output_keeps_unmasked_pixels_bit_identical(clip):
    video, mask = clip
    frames = torch.from_numpy(video).float() / 255
    out = tiny_pipeline()(frames, torch.from_numpy(mask > 0), "", num_inference_steps=1, paste_dilate=0, paste_feather=0)
    outside = torch.from_numpy(mask == 0)
    assert out.dtype == torch.float32 and torch.equal(out[outside], frames[outside])


def test_same_seed_same_video_other_seed_other_video(clip, result):
    video, mask = clip
    pipe = tiny_pipeline()
    again = pipe(video, mask, "the cat", num_inference_steps=2, seed=7, output="uint8")
    other = pipe(video, mask, "the cat", num_inference_steps=2, seed=8, output="uint8")
    assert torch.equal(again, result) and not torch.equal(other, result)


def test_full_mask_works_and_exact_path_returns_decoded_frames(clip):
    video, _ = clip
    full = np.ones((FRAMES, HEIGHT, WIDTH), np.float32)
    pipe = tiny_pipeline()
    out = pipe(video, full, "the dog", num_inference_steps=1, guidance_scale=1.0, paste_back=False)
    assert out.shape == (FRAMES, HEIGHT, WIDTH, 3) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    pasted = pipe(video, full, "the dog", num_inference_steps=1, guidance_scale=1.0)
    assert torch.equal(out, pasted)  # nothing is outside a full mask


def test_conditioning_is_the_scaled_posterior_sample_and_chunking_does_not_matter():
    vae = tiny_parts(dtype=torch.float64)[0]  # chunks of 2 vs one batch of 5: float32 rounding differs by CPU
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(5, 3, 32, 32, generator=generator) * 2 - 1).double()
    noise = torch.randn(5, 4, 4, 4, generator=generator).double()
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    expected = LATENT_SCALE * (posterior.mean + posterior.std * noise)
    # the sum 0.18215·(mean + std·noise) is formed in float32: three roundings of terms of size <= 1 (2**-24 each)
    bound = 3 * 2**-24 * float((posterior.mean.abs() + posterior.std * noise.abs()).max() + 1)
    float32_rounding = dict(rtol=0, atol=bound)
    torch.testing.assert_close(encode_images(vae, images, noise=noise, chunk=2).double(), expected, **float32_rounding)
    torch.testing.assert_close(encode_images(vae, images, chunk=5).double(), LATENT_SCALE * posterior.mean,
                               **float32_rounding)


def test_options_change_what_they_should(clip):
    video, mask = clip
    pipe = tiny_pipeline(dtype=torch.float64)  # batch-2 vs batch-1 U-Net calls: float64, then float32 frames
    base = dict(num_inference_steps=1, seed=1, paste_back=False)
    sampled = pipe(video, mask, "a", **base)
    assert not torch.equal(pipe(video, mask, "a", posterior="mean", **base), sampled)
    torch.testing.assert_close(pipe(video, mask, "a", split_cfg=True, **base), sampled, atol=2.5e-7, rtol=0)
    resized = pipe(video, mask, "a", width=32, **base)
    assert resized.shape == sampled.shape and not torch.equal(resized, sampled)


def test_windowed_call_and_progress(clip):
    video, mask = clip
    spy = Spy(tiny_parts()[3])
    steps = []
    out = tiny_pipeline(unet=spy)(video, mask, "a", num_inference_steps=2, context_length=3, context_overlap=1,
                                  callback=lambda step, total, latents: steps.append((step, total)))
    assert out.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert spy.calls == [(2, 3), (2, 3)] * 2 and steps == [(1, 2), (2, 2)]


def test_cancel_stops_within_one_step(clip):
    video, mask = clip
    spy, steps = Spy(tiny_parts()[3]), []
    with pytest.raises(Cancelled):
        tiny_pipeline(unet=spy)(video, mask, "a", num_inference_steps=5, callback=lambda s, t, x: steps.append(s),
                                cancel=lambda: len(steps) >= 1)
    assert len(spy.calls) == 1


def test_offload_keeps_encoders_on_the_cpu(clip):
    video, mask = clip
    pipe = tiny_pipeline(offload=True)
    pipe(video, mask, "a", num_inference_steps=1)
    assert next(pipe.vae.parameters()).device.type == "cpu"


@pytest.mark.parametrize("kwargs, message", [
    (dict(output="png"), "output must be"),
    (dict(posterior="mode"), "posterior must be"),
    (dict(prompt=3), "must be strings"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(mask_dilate=-1), "mask_dilate"),
    (dict(paste_feather=2.5), "paste_feather"),
    (dict(guidance_scale=float("inf")), "finite"),
    (dict(width=4), "working width"),
    (dict(mask=np.zeros((FRAMES + 1, HEIGHT, WIDTH), np.uint8) + 1), "mask has 5 frames"),
    (dict(video=np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.float32) - 1), r"\[0, 1\]"),
])
def test_bad_arguments_are_explained(clip, kwargs, message):
    video, mask = clip
    arguments = dict(video=video, mask=mask, prompt="a")
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tiny_pipeline()(**arguments)


def test_vae_chunk_size_does_not_change_the_result(clip):
    video, mask = clip
    options = dict(num_inference_steps=1, seed=3, paste_back=False)
    # VAE batches of 1 and 8 frames round differently in float32: float64, then the float32 frames differ by at
    # most one float32 rounding of values <= 1 (2 ulps: 2.5e-7)
    one = tiny_pipeline(vae_chunk=1, dtype=torch.float64)(video, mask, "a", **options)
    all_frames = tiny_pipeline(vae_chunk=8, dtype=torch.float64)(video, mask, "a", **options)
    torch.testing.assert_close(one, all_frames, atol=2.5e-7, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_run(clip, dtype):
    import copy

    video, mask = clip
    vae, text_encoder, tokenizer, unet = (copy.deepcopy(part) for part in tiny_parts())
    from cococo_core.pipeline import CoCoCoPipeline

    pipe = CoCoCoPipeline(vae.to(dtype), text_encoder.to(dtype), tokenizer, unet.to(dtype))
    out = pipe(video[:2], mask[:2], "a", num_inference_steps=1)
    assert out.dtype == torch.float32 and out.shape == (2, HEIGHT, WIDTH, 3) and torch.isfinite(out).all()


def test_noise_comes_from_one_cpu_generator_in_a_fixed_order():
    from cococo_core.pipeline.pipeline import draw_noise

    noise, posterior = draw_noise(5, 3, (4, 6))
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(noise, torch.randn((1, 4, 3, 4, 6), generator=generator))
    assert torch.equal(posterior, torch.randn((3, 4, 4, 6), generator=generator))
    mean_noise, none = draw_noise(5, 3, (4, 6), sample_posterior=False)
    assert torch.equal(mean_noise, noise) and none is None
    assert not torch.equal(draw_noise(None, 3, (4, 6))[0], draw_noise(None, 3, (4, 6))[0])


def test_unet_sees_the_official_conditioning():
    """cococo-official.md §3.2-3.3, transcribed: x in [-1, 1] as 2(x/255 - 0.5), masked = x·(1 - m) with the soft
    mask, 0.18215 · posterior sample, mask resized with F.interpolate's default (nearest); [z | m | c]."""
    from cococo_core.pipeline.pipeline import draw_noise

    video = pan_clip(3, 64, 64)
    mask = moving_disc_mask(3, 64, 64).astype(np.float32) / 255 * 0.8  # soft, not binarized upstream
    seen = []

    class Recorder(Spy):
        def forward(self, sample, timestep, encoder_hidden_states):
            seen.append(sample.clone())
            return super().forward(sample, timestep, encoder_hidden_states)

    vae = tiny_parts()[0]
    tiny_pipeline(unet=Recorder(tiny_parts()[3]))(video, mask, "a", num_inference_steps=1, seed=11)
    noise, posterior_noise = draw_noise(11, 3, (8, 8))
    images = 2 * (torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255 - 0.5)
    masks = torch.from_numpy(mask)[:, None]
    with torch.no_grad():
        posterior = vae.encode(images * (1 - masks)).latent_dist
    latents = (posterior.mean + posterior.std * posterior_noise) * 0.18215
    small = torch.nn.functional.interpolate(masks, size=(8, 8))
    expected = torch.cat([noise[0], small.permute(1, 0, 2, 3), latents.permute(1, 0, 2, 3)])[None]
    torch.testing.assert_close(seen[0][:1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[0][1:], expected, atol=1e-5, rtol=1e-5)  # both CFG halves
