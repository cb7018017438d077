"""One validation layer for frames, masks and numbers (cococo_core.validation), seen from every entry point:
the CoCoCo and LGVI pipelines, masks from text, the node inputs and the command line."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import test_lgvi_tiny as tiny
import tiny_models
from cococo_core import cli
from cococo_core.lgvi.pipeline import LGVIPipeline
from cococo_core.lgvi.video_tensor import as_frames as lgvi_frames
from cococo_core.masks.text_masks import as_float, as_frames as mask_model_frames
from cococo_core.pipeline.frames import as_mask, as_video, video_to_float
from nodes.common import frames_in, mask_in

# every way frames enter the pack, each giving float frames in [0, 1]
FRAME_ENTRIES = {
    "cococo": lambda x: video_to_float(as_video(x)),
    "lgvi": lgvi_frames,
    "mask-from-text": lambda x: as_float(mask_model_frames(x)),
    "node IMAGE": frames_in,
}
MASK_ENTRIES = {
    "cococo": lambda x: as_mask(x, x.shape[0], x.shape[1], x.shape[2]),
    "node MASK": mask_in,
}


def _frames(value: float) -> torch.Tensor:
    frames = torch.rand(2, 16, 16, 3) * 0.5 + 0.25
    frames[0, 0, 0, 0] = value
    return frames


@pytest.mark.parametrize("entry", FRAME_ENTRIES)
@pytest.mark.parametrize("value, clamped", [(1 + 1e-4, 1.0), (1 + 1e-3, 1.0), (-5e-4, 0.0)])
def test_tiny_overshoots_are_clamped_everywhere(entry, value, clamped):
    """Image operations (resize, colour) leave values a hair outside [0, 1]; they are rounding, not errors."""
    result = FRAME_ENTRIES[entry](_frames(value))
    assert result.dtype == torch.float32 and result[0, 0, 0, 0].item() == clamped
    assert 0 <= result.min().item() and result.max().item() <= 1


@pytest.mark.parametrize("entry", FRAME_ENTRIES)
@pytest.mark.parametrize("value, message", [
    (float("nan"), "NaN"), (float("inf"), "NaN or infinite"), (1.01, r"must lie in \[0, 1\]"), (-0.2, "rescale"),
])
def test_bad_frames_are_refused_everywhere(entry, value, message):
    with pytest.raises(ValueError, match=message):
        FRAME_ENTRIES[entry](_frames(value))


@pytest.mark.parametrize("entry", FRAME_ENTRIES)
def test_0_255_floats_are_refused_with_what_to_do(entry):
    with pytest.raises(ValueError, match="0..255.*divide by 255"):
        FRAME_ENTRIES[entry](torch.rand(2, 16, 16, 3) * 255)


@pytest.mark.parametrize("entry", MASK_ENTRIES)
def test_masks_follow_the_same_rules(entry):
    mask = torch.rand(2, 16, 16) * 0.5
    mask[0, 0, 0] = 1.0005
    assert MASK_ENTRIES[entry](mask).max().item() == 1.0
    for value, message in ((float("nan"), "NaN"), (255.0, "divide by 255"), (1.5, r"\[0, 1\]")):
        mask[0, 0, 0] = value
        with pytest.raises(ValueError, match=message):
            MASK_ENTRIES[entry](mask)


@pytest.fixture(scope="module")
def lgvi_pipe():
    return LGVIPipeline.from_pretrained(tiny.lgvi_folder(8), device="cpu")


@pytest.mark.parametrize("options, message", [
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(num_inference_steps=2.5), "num_inference_steps"),
    (dict(seed=2**64), "seed"), (dict(seed=-1), "seed"), (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(image_guidance_scale=math.inf), "image_guidance_scale"),
])
def test_lgvi_numbers_are_checked(lgvi_pipe, options, message):
    with pytest.raises(ValueError, match=message):
        lgvi_pipe(torch.rand(2, 16, 16, 3), "remove it", **options)


def test_lgvi_remove_and_mask_from_text_nodes_refuse_bad_frames(lgvi_pipe):
    from nodes.nodes_lgvi import CoCoCoLGVIRemove
    from nodes.nodes_masks import CoCoCoMaskFromText

    sampling = dict(steps=1, text_cfg=3.0, image_cfg=1.5, seed=0, window_length=24, window_overlap=4, width=0,
                    height=0)
    nan_frames = torch.full((2, 16, 16, 3), math.nan)
    with pytest.raises(ValueError, match="NaN"):
        CoCoCoLGVIRemove().remove(lgvi_pipe, nan_frames, "remove it", **sampling)
    with pytest.raises(ValueError, match="num_inference_steps"):
        CoCoCoLGVIRemove().remove(lgvi_pipe, torch.rand(2, 16, 16, 3), "remove it", **{**sampling, "steps": 0})
    masks = dict(text="the dog", box_threshold=0.35, text_threshold=0.25, box_mode=True, detect_every=1, grow=0,
                 fill_holes=False, temporal_smooth=0, feather=0, detection_size=800)
    for frames, message in ((nan_frames, "NaN"), (torch.rand(2, 16, 16, 3) * 255, "divide by 255")):
        with pytest.raises(ValueError, match=message):
            CoCoCoMaskFromText().make_masks(frames, None, **masks)


def test_cococo_pipeline_checks_seed_and_guidance():
    from cococo_core.pipeline.pipeline import _check_options

    _check_options("a", "", 1, 14.0, 2**64 - 1, "float", "sample")
    for steps, guidance, seed in ((0, 14.0, 0), (1, math.nan, 0), (1, 14.0, 2**64), (1, 14.0, -3)):
        with pytest.raises(ValueError):
            _check_options("a", "", steps, guidance, seed, "float", "sample")


def test_merge_weights_and_lora_strengths_must_be_finite():
    from cococo_core.personalize import LoraSpec, MergeRecipe

    with pytest.raises(ValueError, match="strength"):
        LoraSpec.parse("style.safetensors:inf")
    with pytest.raises(ValueError, match="beta"):
        MergeRecipe(inpaint="x", beta=math.inf)
    assert LoraSpec.parse("C:/loras/style.safetensors").source == "C:/loras/style.safetensors"


# --- the command line: every argument is checked before a model loads --------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from cococo_core.video_io import write_video

    folder = tmp_path_factory.mktemp("args")
    clip = (np.random.default_rng(0).random((2, 32, 48, 3)) * 255).astype(np.uint8)
    return {"folder": folder, "video": str(write_video(folder / "in.mp4", clip, 10.0)),
            "base": str(tiny_models.sd_folder()), "motion": str(tiny_models.motion_folder()),
            "lgvi": str(tiny.lgvi_folder(8))}




def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


def _inpaint(files, **changes):
    options = {"--base": files["base"], "--motion": files["motion"], "--video": files["video"],
               "--mask": files["video"], "--prompt": "a car", "--out": str(files["folder"] / "out.mp4")}
    options.update(changes)
    return ["inpaint", *[text for pair in options.items() for text in pair if text is not None]]


NO_CUDA = "cuda is available" if torch.cuda.is_available() else ""


@pytest.mark.parametrize("changes, message", [
    ({"--base": "models/missing"}, "--base not found"),
    ({"--motion": "models/cococo-typo"}, "--motion not found"),
    ({"--seed": str(2**64)}, "--seed"),
    ({"--seed": "-1"}, "--seed"),
    ({"--steps": "0"}, "--steps"),
    ({"--steps": "1001"}, "--steps"),
    ({"--steps": "5o"}, "--steps"),
    ({"--guidance": "nan"}, "--guidance"),
    ({"--width": "5"}, "working width must be an integer >= 8"),
    ({"--size-multiple": "12"}, "size_multiple"),
    ({"--context-length": "4", "--context-overlap": "4"}, "--context-overlap"),
    pytest.param({"--device": "cuda"}, "CUDA is not available",
                 marks=pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)),
])
def test_inpaint_arguments_are_checked_before_loading(files, no_loading, capsys, changes, message):
    assert _exit_code(_inpaint(files, **changes)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--width", "500"], "multiples of 8"),
    (["--overlap", "24"], "--overlap"),
    (["--seed", str(2**64)], "--seed"),
    (["--image-guidance", "inf"], "--image-guidance"),
    (["--chat", "models/llava-typo"], "--chat not found"),
])
def test_remove_arguments_are_checked_before_loading(files, no_loading, capsys, argv, message):
    base = ["remove", "--model", files["lgvi"], "--video", files["video"], "--text", "remove it",
            "--out", str(files["folder"] / "removed.mp4")]
    assert _exit_code(base + argv) == 2
    assert message in capsys.readouterr().err


def test_merge_weights_are_checked_by_the_parser(files, capsys):
    for option in ("--beta", "--alpha", "--beta-unet"):
        assert _exit_code(["merge", "--base", files["base"], "--inpaint", files["base"],
                           "--out", str(files["folder"] / "m.safetensors"), option, "inf"]) == 2
        assert option in capsys.readouterr().err


@pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)
def test_cuda_on_a_cpu_torch_is_one_line(files):
    completed = subprocess.run([sys.executable, "-m", "cococo_core", *_inpaint(files, **{"--device": "cuda"})],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "CUDA is not available" in completed.stderr


# --- environment ------------------------------------------------------------------------------------


def test_a_bad_cache_size_does_not_stop_the_pack_from_importing():
    code = "import nodes.comfy_adapter as a; print(a.MODEL_CACHE.per_slot)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "COCOCO_CACHE_PER_LOADER": "abc"})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "1" and "COCOCO_CACHE_PER_LOADER" in completed.stderr


@pytest.mark.parametrize("value, expected, warns", [("0", 1, True), ("-2", 1, True), ("2.5", 1, True), ("3", 3, False),
                                                     (" 4 ", 4, False), ("", 1, False)])
def test_cache_size_environment_values(monkeypatch, caplog, value, expected, warns):
    from nodes.comfy_adapter import cache_size_from_environment

    monkeypatch.setenv("COCOCO_CACHE_PER_LOADER", value)
    assert cache_size_from_environment() == expected
    assert ("COCOCO_CACHE_PER_LOADER" in caplog.text) == warns
