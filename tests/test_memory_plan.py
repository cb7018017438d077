"""The working-memory estimate and the frame_chunk / split-CFG planner (cococo_core/pipeline/memory_plan.py).

References from outside the module: the skip connections are counted on a real diffusers U-Net's forward
pass; the SD-1.5 numbers are worked out by hand from its block layout (320/640/1280/1280 channels, two
layers per block, three stride-2 down-samplers); the calibration is checked against the peaks measured in
docs/video_unet.md ("Working memory", 512²×16 fp32).
"""
import pytest
import torch

from bench import _models
from cococo_core.pipeline import memory_plan as mp

GIB = 2**30


def test_skip_connections_match_a_diffusers_unet_forward_pass():
    """conv_in's output plus every down block's output states is what UNet2DConditionModel keeps for the up
    path; the odd latent (5 x 7) checks the ceil rounding of the stride-2 down-samplers."""
    from diffusers import UNet2DConditionModel

    config = dict(_models.TINY_UNET_CONFIG, in_channels=4)
    unet = UNet2DConditionModel(**config).eval()
    kept = []
    unet.conv_in.register_forward_hook(lambda module, args, out: kept.append(out.numel()))
    for block in unet.down_blocks:
        block.register_forward_hook(lambda module, args, out: kept.append(sum(t.numel() for t in out[1])))
    frames = 3
    with torch.no_grad():
        unet(torch.randn(frames, 4, 5, 7), 10, torch.randn(frames, 77, 32))
    shape = mp.UNetShape.from_config(unet.config)
    assert shape.block_out_channels == (32, 32, 64, 64) and shape.layers_per_block == 2
    assert sum(kept) == frames * shape.skip_elements(5, 7)


def test_sd15_numbers_worked_out_by_hand():
    # per latent pixel: 3·320 at full size, (320 + 2·640)/4, (640 + 2·1280)/16, (1280 + 2·1280)/64
    assert 3 * 320 + (320 + 2 * 640) / 4 + (640 + 2 * 1280) / 16 + 3 * 1280 / 64 == 1620
    assert mp.COCOCO_SHAPE.skip_elements(64, 64) == 1620 * 64 * 64
    # the three top-level skips for B·F = 32 frames at 64x64 in fp32 are the 480 MiB of docs/video_unet.md
    assert 3 * 320 * 64 * 64 * 32 * 4 == 480 * 2**20
    # 512²×16, batched CFG (N = 32 frames per call), fp32: skips + 16 full-size copies + a GEGLU projection
    # (2·4·320 channels) over all 32 frames; with frame_chunk=4 over 4 frames
    unit = 320 * 64 * 64
    batched = 4 * (32 * (1620 * 64 * 64 + 16 * unit) + 32 * 8 * unit)
    assert mp.unet_working_bytes(512, 512, 16, torch.float32, batch=2) == batched
    chunked = 4 * (32 * (1620 * 64 * 64 + 16 * unit) + 4 * 8 * unit)
    assert mp.unet_working_bytes(512, 512, 16, torch.float32, batch=2, frame_chunk=4) == chunked
    split = 4 * (16 * (1620 * 64 * 64 + 16 * unit) + 4 * 8 * unit)
    assert mp.unet_working_bytes(512, 512, 16, torch.float32, batch=1, frame_chunk=4) == split
    # bytes scale with the element size; a chunk larger than the call is no chunking; pixels round up to the latent
    assert mp.unet_working_bytes(512, 512, 16, torch.float16, batch=2) * 2 == batched
    assert mp.unet_working_bytes(512, 512, 16, torch.float32, batch=2, frame_chunk=64) == batched
    assert mp.unet_working_bytes(505, 510, 16, torch.float32, batch=2) == batched


@pytest.mark.parametrize("batch, chunk, measured_gib", [(2, None, 4.10), (2, 4, 3.25), (1, 4, 1.85)])
def test_estimate_agrees_with_the_measured_peaks(batch, chunk, measured_gib):
    """docs/video_unet.md, 512²×16 fp32, peak above the weights; within the planner's SAFETY margin."""
    estimate = mp.unet_working_bytes(512, 512, 16, torch.float32, batch=batch, frame_chunk=chunk) / GIB
    assert measured_gib <= estimate * mp.SAFETY
    assert estimate <= measured_gib * mp.SAFETY


def _bytes(batch, chunk, frames=16, dtype=torch.float16, shape=mp.COCOCO_SHAPE):
    return mp.unet_working_bytes(512, 512, frames, dtype, batch=batch, frame_chunk=chunk, shape=shape)


def test_the_plan_is_the_least_restrictive_that_fits():
    whole = _bytes(2, None)
    assert mp.plan_unet_memory(None, 512, 512, 16, torch.float16) == mp.MemoryPlan(None, False, whole, None)
    roomy = mp.plan_unet_memory(24 * GIB, 512, 512, 16, torch.float16)
    assert (roomy.frame_chunk, roomy.split_cfg, roomy.fits) == (None, False, True)
    # just too little for the whole batched call: the largest of the other plans that fits
    budget = int(whole * mp.SAFETY) - 1
    plan = mp.plan_unet_memory(budget, 512, 512, 16, torch.float16)
    others = [_bytes(b, c) for b in (1, 2) for c in (None, 16, 8, 4, 2, 1) if (b, c) != (2, None)]
    assert plan.working_bytes == max(x for x in others if x * mp.SAFETY <= budget)
    assert plan.working_bytes * mp.SAFETY <= budget < whole * mp.SAFETY and plan.fits
    assert plan.working_bytes == _bytes(1 if plan.split_cfg else 2, plan.frame_chunk)
    # nothing fits: the smallest plan, flagged
    tight = mp.plan_unet_memory(1, 512, 512, 16, torch.float16)
    assert (tight.frame_chunk, tight.split_cfg, tight.fits) == (1, True, False)
    assert tight.working_bytes == _bytes(1, 1)
    assert "split CFG, frame_chunk=1" in tight.describe()


def test_explicit_values_are_kept_and_guidance_off_runs_one_half():
    plan = mp.plan_unet_memory(1, 512, 512, 16, torch.float16, frame_chunk=8, split_cfg=False)
    assert (plan.frame_chunk, plan.split_cfg, plan.fits) == (8, False, False)
    assert plan.working_bytes == _bytes(2, 8)
    plan = mp.plan_unet_memory(1, 512, 512, 16, torch.float16, frame_chunk=None)
    assert (plan.frame_chunk, plan.split_cfg) == (None, True)
    plan = mp.plan_unet_memory(None, 512, 512, 16, torch.float16, guided=False)
    assert (plan.split_cfg, plan.working_bytes) == (False, _bytes(1, None))
    with pytest.raises(ValueError, match="frame_chunk"):
        mp.plan_unet_memory(None, 512, 512, 16, torch.float16, frame_chunk=0)
    with pytest.raises(ValueError, match="frames"):
        mp.unet_working_bytes(512, 512, 0, torch.float16)


def test_lgvi_runs_its_guidance_passes_one_at_a_time():
    plan = mp.plan_unet_memory(None, 512, 512, 16, torch.float16, shape=mp.LGVI_SHAPE, split_available=False)
    assert plan.split_cfg and plan.working_bytes == _bytes(1, None, shape=mp.LGVI_SHAPE)
    small = mp.plan_unet_memory(plan.working_bytes, 512, 512, 16, torch.float16, shape=mp.LGVI_SHAPE,
                                split_available=False)
    fitting = [c for c in (8, 4, 2, 1) if _bytes(1, c, shape=mp.LGVI_SHAPE) * mp.SAFETY <= plan.working_bytes]
    assert small.split_cfg and small.fits and small.frame_chunk == fitting[0]  # B·F = 16: a chunk of 16 is none
