"""Issue 23 case 6: errors come before any model loads and name the file or option the user gave.

Memory: the estimate is compared with the bytes of the tensors the pipeline really builds (``to_working`` and
``masked_image``, measured here), so it is a true lower bound of what a run holds; the refusals run with the
``no_loading`` fixture (tests/conftest.py), which fails the test if a model starts loading."""
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from cococo_core.cli import main
from cococo_core.pipeline import memory
from cococo_core.pipeline.conditioning import masked_image
from cococo_core.pipeline.frames import plan_geometry, to_working, video_to_float
from cococo_core.video_io import read_frames, read_mask, write_video
from test_pipeline_helpers import moving_disc_mask, pan_clip, tiny_pipeline

FRAMES, HEIGHT, WIDTH = 3, 40, 56


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("early")
    clip, mask = pan_clip(FRAMES, HEIGHT, WIDTH), moving_disc_mask(FRAMES, HEIGHT, WIDTH)
    return {"folder": folder, "video": write_video(folder / "video", clip),
            "mask": write_video(folder / "mask", np.repeat(mask[..., None], 3, -1)),
            "base": str(tiny_models.sd_folder()), "motion": str(tiny_models.motion_folder())}


def _inpaint(files, *extra, base=None, out="out.mp4"):
    return main(["inpaint", "--base", base or files["base"], "--motion", files["motion"], "--video",
                 str(files["video"]), "--mask", str(files["mask"]), "--prompt", "x", "--steps", "1",
                 "--out", str(files["folder"] / out), *extra])


# --- memory ----------------------------------------------------------------------------------------------------
def test_the_host_estimate_equals_the_working_tensors_the_pipeline_builds():
    clip, mask = torch.from_numpy(pan_clip(2, 40, 56)), torch.from_numpy(moving_disc_mask(2, 40, 56))
    geometry = plan_geometry(40, 56, work_width=120, size_multiple=64)
    frames = to_working(video_to_float(clip).permute(0, 3, 1, 2), geometry)
    holes = to_working(mask.float()[:, None], geometry, binary=True)
    held = frames.nbytes + holes.nbytes + masked_image(frames, holes).nbytes
    estimate = memory.cococo(2, geometry.padded_hw, dtype=torch.float32)
    assert estimate.host_bytes == held


def test_width_100000_is_refused_with_numbers_before_loading(files, capsys, no_loading):
    assert _inpaint(files, "--width", "100000") == 2
    error = capsys.readouterr().err
    assert "need at least" in error and "GiB of RAM" in error and "this machine has" in error
    assert "--width/--height" in error and "3 frame(s) at 100032x" in error
    assert "\n" not in error.strip()


def test_the_lgvi_host_estimate_equals_the_model_input_it_builds():
    from cococo_core.lgvi.video_tensor import to_model_input

    video = torch.rand(3, 40, 56, 3)
    assert memory.lgvi(3, (64, 96), dtype=torch.float32).host_bytes == to_model_input(video, 64, 96).nbytes


def test_above_free_memory_warns_and_above_total_refuses(caplog):
    estimate = memory.lgvi(16, (320, 512), dtype=torch.float32, window=16)
    need = estimate.host_bytes + estimate.device_bytes
    with caplog.at_level(logging.WARNING):
        memory.check(estimate, "cpu", machine=(need * 2, need // 2))
    assert "is free now" in caplog.text
    with pytest.raises(ValueError, match="need at least .* of RAM .* this machine has"):
        memory.check(estimate, "cpu", machine=(need - 1, None))
    memory.check(estimate, "cpu", machine=(need, need))  # fits: silent


def test_on_a_gpu_the_device_part_is_compared_with_the_gpu_memory(monkeypatch):
    """No GPU here: the GPU's (total, free) is stubbed; the host part still goes against the RAM."""
    estimate = memory.cococo(16, (512, 512), dtype=torch.float16)
    monkeypatch.setattr(memory, "_device_memory", lambda device: (estimate.device_bytes - 1, 0))
    with pytest.raises(ValueError, match="of cuda:0 memory"):
        memory.check(estimate, "cuda:0", machine=(estimate.host_bytes, None))
    monkeypatch.setattr(memory, "_device_memory", lambda device: (estimate.device_bytes, None))
    memory.check(estimate, "cuda:0", machine=(estimate.host_bytes, None))  # each part fits where it lives
    with pytest.raises(ValueError, match="of RAM"):
        memory.check(estimate, "cuda:0", machine=(estimate.host_bytes - 1, None))


def test_the_pipeline_call_checks_memory_before_building_working_frames(monkeypatch):
    """The nodes call the pipeline directly: the check sits in front of the first working-size tensor."""
    pipe = tiny_pipeline()
    monkeypatch.setattr("cococo_core.pipeline.pipeline.to_working",
                        lambda *a, **k: pytest.fail("working frames were built before the memory check"))
    with pytest.raises(ValueError, match="need at least .* lower width/height"):
        pipe(pan_clip(2, 40, 56), moving_disc_mask(2, 40, 56), "x", num_inference_steps=1, width=100000)


# --- tokenizer, pickles, frames, masks ---------------------------------------------------------------------------
def test_single_file_base_without_tokenizer_is_refused_before_loading(files, capsys, no_loading):
    assert _inpaint(files, base=str(tiny_models.ldm_file())) == 2
    error = capsys.readouterr().err
    assert "single-file checkpoint and has no tokenizer" in error and "--tokenizer" in error


def test_corrupt_png_frame_names_the_file(files, tmp_path, capsys, no_loading):
    folder = shutil.copytree(files["video"], tmp_path / "frames")
    broken = sorted(folder.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 2])
    with pytest.raises(ValueError, match=f"cannot read the image {broken}"):
        read_frames(folder)
    assert main(["inpaint", "--base", files["base"], "--motion", files["motion"], "--video", str(folder), "--mask",
                 str(files["mask"]), "--prompt", "x", "--out", str(tmp_path / "o.mp4")]) == 2
    assert str(broken) in capsys.readouterr().err


def test_mask_drawn_only_in_alpha_is_read_from_alpha_as_comfyui_does(tmp_path, caplog):
    """ComfyUI's LoadImage (nodes.py) takes MASK = 1 - alpha: transparent pixels are the region to fill."""
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[10:20, 5:30, 3] = 0  # the drawn region: transparent, colour black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    expected = np.zeros((1, HEIGHT, WIDTH), np.float32)
    expected[0, 10:20, 5:30] = 1
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(read_mask(tmp_path / "alpha.png"), expected)
    assert "read from the alpha channel" in caplog.text
    # colours mark a region too: the colours win (as before), and the ignored alpha is said
    rgba[30:35, 40:50, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "both.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        both = read_mask(tmp_path / "both.png")
    assert both[0, 30:35, 40:50].all() and both.sum() == 50 and "were ignored" in caplog.text


# --- the mask command --------------------------------------------------------------------------------------------
@pytest.fixture
def no_mask_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a mask model was loaded before the arguments were checked")

    monkeypatch.setattr("cococo_core.masks.loading.load_detector", refuse)
    monkeypatch.setattr("cococo_core.masks.loading.load_segmenter", refuse)


@pytest.mark.parametrize("text", ["", "  .  . "])
def test_empty_mask_text_is_refused_before_loading(files, tmp_path, capsys, no_mask_models, text):
    assert main(["mask", "--video", str(files["video"]), "--text", text, "--detector", files["base"], "--box-mode",
                 "--out", str(tmp_path / "m")]) == 2
    assert "--text" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--detection-size", "0"), ("--chunk-size", "0"), ("--feather", "-1"),
                                          ("--box-threshold", "1.5")])
def test_mask_command_errors_name_the_option_typed(files, tmp_path, capsys, no_mask_models, option, value):
    assert main(["mask", "--video", str(files["video"]), "--text", "dog", "--detector", files["base"], "--box-mode",
                 "--out", str(tmp_path / "m"), option, value]) == 2
    error = capsys.readouterr().err
    assert option in error and "_" not in error.split(":")[1].split()[0]


# --- the native conditioning node --------------------------------------------------------------------------------
class _NoVAE:
    def encode(self, pixels):
        raise AssertionError("unchecked frames reached the VAE")


@pytest.mark.parametrize("poison,message", [("nan", "NaN"), ("255", "0..255")])
def test_native_conditioning_node_validates_its_image(poison, message):
    from nodes.nodes_native import CoCoCoVideoInpaintConditioning

    images = torch.rand(2, 16, 16, 3)
    if poison == "nan":
        images[1, 3, 4, 0] = float("nan")
    else:
        images = images * 255
    with pytest.raises(ValueError, match=message):
        CoCoCoVideoInpaintConditioning().encode([], [], _NoVAE(), images, torch.ones(2, 16, 16))


def test_remove_width_100000_is_refused_with_numbers_before_loading(files, tmp_path, capsys, no_loading):
    import test_lgvi_tiny as tiny

    assert main(["remove", "--model", str(tiny.lgvi_folder(8)), "--video", str(files["video"]), "--text", "the bird",
                 "--out", str(tmp_path / "o.mp4"), "--width", "100000", "--height", "75000"]) == 2
    error = capsys.readouterr().err
    assert "need at least" in error and "this machine has" in error and "--width/--height" in error


def test_mask_node_refuses_an_empty_text_when_queued():
    """VALIDATE_INPUTS runs when ComfyUI validates the prompt, before any loader node loads a model."""
    from nodes.nodes_masks import CoCoCoMaskFromText

    assert CoCoCoMaskFromText.VALIDATE_INPUTS(text="the dog . cat") is True
    assert CoCoCoMaskFromText.VALIDATE_INPUTS() is True  # a linked text: checked when the node runs
    for empty in ("", " . "):
        assert "names nothing" in CoCoCoMaskFromText.VALIDATE_INPUTS(text=empty)


@pytest.mark.parametrize("extra,expected", [
    (["--min-frames", "20", "--max-frames", "10"], "--min-frames 20 is more than --max-frames 10"),
    (["--box-threshold", "2"], "--box-threshold must lie"),
    (["--rank", "2", "--world-size", "2"], "--rank 2 is not in [0, --world-size"),
])
def test_prepare_data_errors_name_the_option_typed(tmp_path, capsys, extra, expected):
    (tmp_path / "rows.csv").write_text("videoid,name,page_dir\n1,a dog,000\n")
    assert main(["prepare-data", "--csv", str(tmp_path / "rows.csv"), "--videos", str(tmp_path), "--output",
                 str(tmp_path / "out"), *extra]) == 2
    assert expected in capsys.readouterr().err


def test_wrong_base_and_motion_sources_are_refused_before_loading(files, tmp_path, capsys, no_loading):
    assert _inpaint(files, "--tokenizer", str(tiny_models.tokenizer_folder()), base=str(tiny_models.sd2_file())) == 2
    assert "Stable Diffusion 2.x" in capsys.readouterr().err
    assert _inpaint(files, base=str(tiny_models.sd_folder(in_channels=4))) == 2
    assert "text-to-image model (U-Net with 4 input channels)" in capsys.readouterr().err
    empty = tmp_path / "motion"
    empty.mkdir()
    files = {**files, "motion": str(empty)}
    assert _inpaint(files) == 2
    assert str(empty) in capsys.readouterr().err


def test_a_pickle_named_safetensors_base_is_one_line_naming_the_file(files, tmp_path, capsys, no_loading):
    from cococo_core.checkpoints import load_state_dict

    misnamed = tmp_path / "base.safetensors"
    torch.save(load_state_dict(tiny_models.ldm_file()), misnamed)
    assert _inpaint(files, "--tokenizer", str(tiny_models.tokenizer_folder()), base=str(misnamed)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {misnamed}: named .safetensors but it is a torch pickle") and "\n" not in error
