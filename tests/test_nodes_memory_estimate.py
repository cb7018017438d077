"""nodes/memory_estimate.py: its U-Net steps are memory_plan's estimate; its VAE calls against the working memory
the pack measured (docs/nodes.md "Memory": peak RSS above the weights, fp32, CPU)."""
import pytest
import torch

from nodes import memory_estimate as estimate

GIB = 1 << 30


@pytest.mark.parametrize("options, batch", [(dict(), 2), (dict(frame_chunk=4), 2),
                                            (dict(frame_chunk=4, split_cfg=True), 1), (dict(guidance=False), 1)])
def test_unet_steps_are_memory_plans_estimate(options, batch):
    """One source: the U-Net steps are cococo_core.pipeline.memory_plan's estimate (tested there against the
    block layout and the measured 512²×16 peaks)."""
    from cococo_core.pipeline import memory_plan

    chunk = options.get("frame_chunk")
    assert estimate.cococo_step_bytes(512, 512, 16, **options) == memory_plan.unet_working_bytes(
        512, 512, 16, torch.float32, batch=batch, frame_chunk=chunk)
    assert estimate.lgvi_step_bytes(512, 320, 24, frame_chunk=chunk) == memory_plan.unet_working_bytes(
        320, 512, 24, torch.float32, batch=1, frame_chunk=chunk, shape=memory_plan.LGVI_SHAPE)


def test_lgvi_pass_and_vae_calls():
    for frames, decoded, encoded in ((1, 0.387, 0.168), (2, 0.485, 0.324), (4, 0.808, 0.637)):
        need = estimate.vae_bytes(256, 256, frames) / GIB
        assert need >= max(decoded, encoded) - 0.05  # never far below a reading
        assert need <= 1.1 * max(decoded, encoded)


def test_smaller_dtypes_and_options_need_less():
    full = estimate.cococo_run_bytes(512, 512, 16, vae_frames=1)
    half = estimate.cococo_run_bytes(512, 512, 16, dtype=torch.float16, vae_dtype=torch.float16, vae_frames=1)
    assert half < full
    assert estimate.cococo_step_bytes(512, 512, 16, guidance=False) == \
        estimate.cococo_step_bytes(512, 512, 16, split_cfg=True)
    windows = estimate.cococo_run_bytes(512, 512, 64, context_length=16, vae_frames=8)
    assert windows == estimate.cococo_run_bytes(512, 512, 16, vae_frames=8)  # one window at a time
    # a run needs the larger of its steps and its VAE calls
    assert estimate.cococo_run_bytes(256, 256, 8) == max(estimate.cococo_step_bytes(256, 256, 8),
                                                         estimate.vae_bytes(256, 256, 8))
