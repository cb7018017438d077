"""Opt-in torch.compile of the video U-Net: same numbers as eager, hooks intact, a clear fallback.

Compiling the whole tiny U-Net with Inductor takes minutes on a 2-core CI machine, so Inductor's numerics are
checked on one motion module (the pack's own code; the diffusers layers are torch's), and the pipeline path
(compiled forward hooks, progress, cancel) on a one-level U-Net traced by TorchDynamo with the ``eager`` backend.
"""
import logging

import pytest
import torch

from cococo_core.hooks import Cancelled
from cococo_core.models import compilation
from cococo_core.models.motion_module import MotionModule
from cococo_core.models.video_unet import VideoUNet
from cococo_core.pipeline import CoCoCoPipeline

needs_inductor = pytest.mark.skipif(compilation.compile_unavailable_reason("cpu") is not None,
                                    reason="torch.compile cannot run on this CPU (see compile_unavailable_reason)")
EPS = {torch.float64: torch.finfo(torch.float64).eps, torch.float32: torch.finfo(torch.float32).eps}
WIDTH, TEXT, FRAMES = 32, 16, 4


def _rel_l2(test, reference):
    return float((test.double() - reference.double()).norm() / reference.double().norm())


def _motion_module(dtype):
    torch.manual_seed(0)
    module = MotionModule(WIDTH, TEXT)
    torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.2)  # not the identity
    return module.to(dtype).eval().requires_grad_(False)


def _motion_inputs(dtype):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2 * FRAMES, WIDTH, 4, 4, generator=generator, dtype=torch.float64)
    text = torch.randn(2, 7, TEXT, generator=generator, dtype=torch.float64)
    return x.to(dtype), text.to(dtype)


@needs_inductor
def test_inductor_motion_module_matches_eager_to_rounding():
    """In float64 compiled and eager differ only by the order of sums: each output element is a chain of about
    10 reductions (GroupNorm/LayerNorm over <= 128 values, Linear over <= 4C = 128, attention over <= 64 keys),
    each exact to ~n·eps relative, so 10·128·eps ≈ 3e-13 bounds the relative error with margin. In float32 the
    compiled module must be as close to the float64 result as eager float32 is (4x for the different rounding
    order, plus a floor of 64 eps for cases where eager happens to be very close)."""
    module64 = _motion_module(torch.float64)
    x64, text64 = _motion_inputs(torch.float64)
    reference = module64(x64, frames=FRAMES, text=text64)
    compiled64 = torch.compile(module64)(x64, frames=FRAMES, text=text64)
    assert _rel_l2(compiled64, reference) <= 10 * 128 * EPS[torch.float64]

    module32 = _motion_module(torch.float32)
    x32, text32 = _motion_inputs(torch.float32)
    eager_error = _rel_l2(module32(x32, frames=FRAMES, text=text32), reference)
    compiled_error = _rel_l2(torch.compile(module32)(x32, frames=FRAMES, text=text32), reference)
    assert compiled_error <= max(4 * eager_error, 64 * EPS[torch.float32])


def _micro_video_unet():
    """One level with cross-attention (4 motion modules: down, mid, 2 up), float64, random motion weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32,),
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=TEXT, attention_head_dim=8, norm_num_groups=32)
    video = VideoUNet(unet)
    for _, module in video.motion_modules:
        torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.2)
    return video.double().eval().requires_grad_(False)


def _denoise_inputs():
    generator = torch.Generator().manual_seed(2)
    noise, masked = torch.randn(2, 1, 4, FRAMES, 8, 8, generator=generator, dtype=torch.float64)
    mask = (torch.rand(1, 1, FRAMES, 8, 8, generator=generator) > 0.5).double()
    prompt, negative = torch.randn(2, 1, 5, TEXT, generator=generator, dtype=torch.float64)
    return noise, masked, mask, prompt, negative


def test_compiled_pipeline_keeps_progress_and_cancel_and_the_result():
    eager = CoCoCoPipeline(None, None, None, _micro_video_unet())
    expected = eager.denoise(*_denoise_inputs(), num_inference_steps=3, guidance_scale=7.5)

    pipe = CoCoCoPipeline(None, None, None, _micro_video_unet())
    assert pipe.compile_unet(backend="eager", fullgraph=True)  # fullgraph: a graph break fails here
    assert compilation.is_compiled(pipe.unet)
    steps = []
    result = pipe.denoise(*_denoise_inputs(), num_inference_steps=3, guidance_scale=7.5,
                          callback=lambda step, total, latents: steps.append((step, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert _rel_l2(result, expected) <= 1e-12  # the same float64 operations, traced

    polls = []
    with pytest.raises(Cancelled):
        pipe.denoise(*_denoise_inputs(), num_inference_steps=3, guidance_scale=7.5,
                     cancel=lambda: polls.append(1) or len(polls) > 2)


def test_without_a_cpp_compiler_the_unet_stays_eager_and_says_why(monkeypatch, caplog):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    unet = _micro_video_unet()
    with caplog.at_level(logging.WARNING, logger=compilation.__name__):
        pipe = CoCoCoPipeline(None, None, None, unet, compile_unet=True)
    assert not compilation.is_compiled(pipe.unet)
    assert "C++ compiler" in caplog.text and "run without compiling" in caplog.text


def test_unsupported_platform_is_reported(monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert "does not support this platform" in compilation.compile_unavailable_reason("cpu")


def test_inpaint_cli_has_an_off_by_default_compile_flag():
    import argparse

    from cococo_core.cli import inpaint as cli_inpaint

    parser = argparse.ArgumentParser()
    cli_inpaint.add_arguments(parser)
    required = ["--video", "v", "--mask", "m", "--out", "o", "--base", "b", "--motion", "mo", "--prompt", "p"]
    assert parser.parse_args(required).compile is False
    assert parser.parse_args(required + ["--compile"]).compile is True


def test_cpu_compile_turns_off_inductor_layout_optimization(monkeypatch):
    """Measured: Inductor's channels-last layout optimisation made the full-size CPU step slower than eager."""
    seen = {}
    unet = _micro_video_unet()
    monkeypatch.setattr(unet.unet, "compile", lambda **options: seen.update(options))
    assert compilation.compile_unet(unet) or compilation.compile_unavailable_reason("cpu")
    if seen:
        assert seen["options"]["layout_optimization"] is False
