"""nodes/memory_estimate.py against the working memory the pack measured (README "Benchmarks",
docs/video_unet.md "Working memory", docs/lgvi.md "Benchmark", docs/nodes.md "Memory": peak RSS above the
weights, fp32, CPU)."""
import pytest
import torch

from nodes import memory_estimate as estimate

GIB = 1 << 30


@pytest.mark.parametrize("options, measured", [
    (dict(), 4.10),  # 512²×16, batched CFG
    (dict(frame_chunk=4), 3.25),
    (dict(frame_chunk=4, split_cfg=True), 1.85),
])
def test_cococo_step_at_the_paper_size(options, measured):
    assert estimate.cococo_step_bytes(512, 512, 16, **options) / GIB == pytest.approx(measured, abs=0.03)


def test_cococo_step_at_256_lies_within_the_measured_readings():
    assert 0.78 - 0.03 <= estimate.cococo_step_bytes(256, 256, 8) / GIB <= 0.92  # two runs: 0.78 and 0.92 GiB


def test_lgvi_pass_and_vae_calls():
    assert estimate.lgvi_step_bytes(256, 256, 8) / GIB == pytest.approx(0.47, abs=0.01)
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
