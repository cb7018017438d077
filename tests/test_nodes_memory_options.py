"""The pipeline nodes' new options reach the library: LGVI's negative_prompt and eta give exactly what the library
call with those arguments gives; frame_chunk and split CFG change no number beyond float rounding; "auto" follows
the free memory ComfyUI reports (here the adapter's answer, patched) through memory_plan."""
import json
import shutil

import pytest
import torch

import test_lgvi_tiny as lgvi_tiny
import tiny_models
from cococo_core.lgvi import LGVIPipeline
from cococo_core.pipeline import CoCoCoPipeline
from cococo_core.pipeline import memory_plan
from nodes import comfy_adapter, memory_estimate, memory_options
from nodes.nodes_cococo import CoCoCoModel, CoCoCoSampler, run_memory
from nodes.nodes_lgvi import CoCoCoLGVIRemove

# The pipelines run in float64 and return float32 frames: the float64 paths agree to ~1e-12 (the chunked
# layers do the same arithmetic on fewer rows), so the outputs differ by at most the float32 rounding of values
# in [0, 1] (one ulp, 6e-8) carried through the bilinear resize back (weights summing to 1): 1e-6 bounds it.
FLOAT32_OUTPUT_TOLERANCE = 1e-6
LGVI_SAMPLING = dict(steps=2, text_cfg=3.0, image_cfg=1.5, seed=4, window_length=24, window_overlap=4, width=0,
                     height=0)


@pytest.fixture(scope="module")
def ddim_lgvi(tmp_path_factory):
    """The tiny LGVI folder with a DDIM scheduler (the published folders ship PNDM, which takes no eta)."""
    folder = tmp_path_factory.mktemp("lgvi") / "lgvi"
    shutil.copytree(lgvi_tiny.lgvi_folder(8), folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}))
    return LGVIPipeline.from_pretrained(folder, device="cpu").to(dtype=torch.float64)


def _video(frames=3, height=24, width=32, seed=0):
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def test_lgvi_negative_prompt_and_eta_reach_the_library(ddim_lgvi):
    images = _video()
    node = CoCoCoLGVIRemove()
    frames, mask = node.remove(ddim_lgvi, images, "remove the bird", negative_prompt="a cat", eta=0.7, **LGVI_SAMPLING)
    expected = ddim_lgvi(images, "remove the bird", negative_prompt="a cat", eta=0.7, num_inference_steps=2,
                         guidance_scale=3.0, image_guidance_scale=1.5, seed=4, window_length=24, window_overlap=4)
    assert torch.equal(frames, expected.frames) and torch.equal(mask, expected.mask)
    # both options change the result, so the equality above could not hold if the node dropped one
    plain, _ = node.remove(ddim_lgvi, images, "remove the bird", **LGVI_SAMPLING)
    no_negative, _ = node.remove(ddim_lgvi, images, "remove the bird", eta=0.7, **LGVI_SAMPLING)
    assert (plain - no_negative).abs().max() > 1e-4 and (no_negative - frames).abs().max() > 1e-4


def test_lgvi_frame_chunk_gives_the_same_frames_and_is_restored(ddim_lgvi):
    images = _video(frames=4)
    node = CoCoCoLGVIRemove()
    whole, whole_mask = node.remove(ddim_lgvi, images, "remove the bird", frame_chunk=0, **LGVI_SAMPLING)
    rows = []
    ff = ddim_lgvi.unet.down_blocks[0].attentions[0].transformer_blocks[0].ff
    handle = ff.net[0].register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        chunked, chunked_mask = node.remove(ddim_lgvi, images, "remove the bird", frame_chunk=3, **LGVI_SAMPLING)
    finally:
        handle.remove()
    assert set(rows) == {3, 1}  # 4 frames per pass, 3 at a time
    assert ddim_lgvi.unet.frame_chunk is None  # the cached model is left as it was
    torch.testing.assert_close(chunked, whole, rtol=0, atol=FLOAT32_OUTPUT_TOLERANCE)
    torch.testing.assert_close(chunked_mask, whole_mask, rtol=0, atol=FLOAT32_OUTPUT_TOLERANCE)


@pytest.fixture(scope="module")
def cococo_model():
    pipe = CoCoCoPipeline.from_pretrained(str(tiny_models.sd_folder()), str(tiny_models.motion_folder()),
                                          device="cpu", dtype=torch.float64)
    return CoCoCoModel(pipe, tiny_models.sd_folder(), tiny_models.motion_folder())


def _sample(model, images, mask, **options):
    return CoCoCoSampler().sample(model, images, mask, "a swan", "", 2, 14.0, 0, 0, -1, 0, True, 8, 8, 0, 0,
                                  **options)[0]


def _spy_unet_batches(unet):
    """(U-Net call batch sizes, first-resnet row counts) recorded while the block runs."""
    calls, rows = [], []
    handles = [unet.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0])),
               unet.unet.down_blocks[0].resnets[0].norm1.register_forward_pre_hook(
                   lambda module, args: rows.append(args[0].shape[0]))]
    return calls, rows, handles


def test_cococo_frame_chunk_and_split_cfg_reach_the_sampler(cococo_model):
    images = _video(frames=3, height=64, width=64)
    mask = torch.zeros(3, 64, 64)
    mask[:, 16:40, 20:44] = 1
    whole = _sample(cococo_model, images, mask)
    calls, rows, handles = _spy_unet_batches(cococo_model.pipeline.unet)
    try:
        chunked = _sample(cococo_model, images, mask, frame_chunk=2, split_cfg="split")
    finally:
        for handle in handles:
            handle.remove()
    assert set(calls) == {3} and set(rows) == {2, 1}  # two calls of one video, 3 frames, chunks of 2
    assert cococo_model.pipeline.unet.frame_chunk is None
    torch.testing.assert_close(chunked, whole, rtol=0, atol=FLOAT32_OUTPUT_TOLERANCE)


def test_cococo_auto_follows_the_free_memory(cococo_model, monkeypatch):
    """With little free memory reported, "auto" runs what memory_plan chooses for that budget."""
    images = _video(frames=3, height=64, width=64)
    mask = torch.ones(3, 64, 64)
    whole = _sample(cococo_model, images, mask)  # no limit known on the CPU: batched, all frames
    budget = memory_plan.unet_working_bytes(64, 64, 3, torch.float64, batch=1, frame_chunk=2) * 1.2
    expected = memory_plan.plan_unet_memory(int(budget), 64, 64, 3, torch.float64)
    assert expected.split_cfg and expected.frame_chunk == 2 and expected.fits
    monkeypatch.setattr(comfy_adapter, "free_memory_bytes", lambda device: int(budget))
    calls, rows, handles = _spy_unet_batches(cococo_model.pipeline.unet)
    try:
        limited = _sample(cococo_model, images, mask)
    finally:
        for handle in handles:
            handle.remove()
    assert set(calls) == {3} and set(rows) == {2, 1}
    torch.testing.assert_close(limited, whole, rtol=0, atol=FLOAT32_OUTPUT_TOLERANCE)


def test_bad_widget_values_are_refused_before_running(cococo_model):
    images, mask = _video(frames=1, height=64, width=64), torch.ones(1, 64, 64)
    with pytest.raises(ValueError, match="split_cfg"):
        _sample(cococo_model, images, mask, split_cfg="sometimes")
    with pytest.raises(ValueError, match="frame_chunk"):
        memory_options.widget_values(-1)


def test_comfyui_is_asked_for_the_working_memory_of_the_least_restrictive_plan(cococo_model, monkeypatch):
    """load_models_gpu's memory_required is the larger of a VAE call and the U-Net step of the least restrictive
    plan the widgets allow (batched, all frames for auto; what explicit values give otherwise)."""
    asked = []
    real = comfy_adapter.load_for_run
    monkeypatch.setattr(comfy_adapter, "load_for_run",
                        lambda models, memory_required=0: (asked.append(memory_required), real(models, memory_required))[1])
    images, mask = _video(frames=3, height=64, width=64), torch.ones(3, 64, 64)
    _sample(cococo_model, images, mask)
    _sample(cococo_model, images, mask, frame_chunk=1, split_cfg="split")
    vae = memory_estimate.vae_bytes(64, 64, 3, torch.float64)
    assert asked == [max(vae, memory_plan.unet_working_bytes(64, 64, 3, torch.float64, batch=2)),
                     max(vae, memory_plan.unet_working_bytes(64, 64, 3, torch.float64, batch=1, frame_chunk=1))]
    # where the U-Net step outweighs a VAE call (32 frames, one frame per VAE call), the options set the amount
    monkeypatch.setattr(cococo_model.pipeline, "vae_chunk", 1)
    video = torch.empty(32, 128, 128, 3)
    auto = run_memory(cococo_model.pipeline, video, cfg=14.0)
    chunked = run_memory(cococo_model.pipeline, video, cfg=14.0, split_cfg=True, frame_chunk=1)
    assert auto == memory_plan.unet_working_bytes(128, 128, 32, torch.float64, batch=2)
    assert chunked == memory_plan.unet_working_bytes(128, 128, 32, torch.float64, batch=1, frame_chunk=1) < auto
