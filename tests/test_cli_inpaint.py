"""``python -m cococo_core inpaint`` end to end on tiny models, through real video files."""
import subprocess
import sys

import numpy as np
import pytest

import tiny_models
from cococo_core.cli import main
from cococo_core.video_io import read_frames, write_video
from test_pipeline_helpers import moving_disc_mask, pan_clip

FRAMES, HEIGHT, WIDTH = 6, 48, 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    clip, mask = pan_clip(FRAMES, HEIGHT, WIDTH), moving_disc_mask(FRAMES, HEIGHT, WIDTH)
    return {
        "folder": folder,
        "video": write_video(folder / "in.mp4", clip, 10.0),
        "mask": write_video(folder / "mask.mp4", np.repeat(mask[..., None], 3, -1), 10.0),
        "frames": write_video(folder / "frames", clip),
        "mask_frames": write_video(folder / "mask_frames", np.repeat(mask[..., None], 3, -1)),
        "clip": clip, "mask_array": mask,
        "base": str(tiny_models.sd_folder()), "motion": str(tiny_models.motion_folder()),
    }


def arguments(files, video, mask, out, *extra):
    return ["inpaint", "--base", files["base"], "--motion", files["motion"], "--video", str(video), "--mask", str(mask),
            "--prompt", "a red car", "--out", str(out), "--steps", "2", *extra]


def test_inpaints_an_mp4_into_an_mp4_keeping_fps(files):
    out = files["folder"] / "out.mp4"
    assert main(arguments(files, files["video"], files["mask"], out, "--stride", "2", "--context-length", "2")) == 0
    result = read_frames(out)
    assert result.frames.shape == (FRAMES // 2, HEIGHT, WIDTH, 3)
    assert result.fps == pytest.approx(5.0)


def test_png_frames_keep_unmasked_pixels_exactly(files):
    out = files["folder"] / "out_frames"
    assert main(arguments(files, files["frames"], files["mask_frames"], out, "--paste-dilate", "2",
                          "--paste-feather", "0", "--width", "56")) == 0
    result = read_frames(out).frames
    far = ~_grown(files["mask_array"] > 0, 2)
    assert result.shape == files["clip"].shape
    assert np.array_equal(result[far], files["clip"][far])
    assert not np.array_equal(result[files["mask_array"] > 0], files["clip"][files["mask_array"] > 0])


def _grown(mask, pixels):
    import torch

    return torch.nn.functional.max_pool2d(torch.from_numpy(mask).float()[:, None], 2 * pixels + 1, 1, pixels)[:, 0].bool().numpy()


def test_user_errors_are_one_line_and_exit_2(files, capsys):
    missing = files["folder"] / "missing.mp4"
    assert main(arguments(files, missing, files["mask"], files["folder"] / "x.mp4")) == 2
    assert "no such video" in capsys.readouterr().err
    assert main(arguments(files, files["video"], files["mask"], files["folder"] / "x.txt")) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(arguments(files, files["video"], files["mask"], files["folder"] / "x.mp4", "--start", "6")) == 2
    assert "no frames at start=6" in capsys.readouterr().err
    short_mask = write_video(files["folder"] / "short_mask.mp4", np.zeros((2, HEIGHT, WIDTH, 3), np.uint8), 10.0)
    assert main(arguments(files, files["video"], short_mask, files["folder"] / "x.mp4")) == 2
    assert "--mask gives 2 frames but --video gives 6" in capsys.readouterr().err
    assert main(arguments(files, files["video"], files["mask"], files["folder"] / "x.mp4", "--device", "gpu7")) == 2
    assert "unknown device" in capsys.readouterr().err


def test_help_describes_every_option():
    completed = subprocess.run([sys.executable, "-m", "cococo_core", "inpaint", "--help"], capture_output=True,
                               text=True, timeout=120, check=True)
    text = completed.stdout
    for option in ["--video", "--mask", "--out", "--base", "--motion", "--prompt", "--steps", "--guidance", "--seed",
                   "--stride", "--max-frames", "--width", "--height", "--context-length", "--no-paste-back", "--fps"]:
        assert option in text
    options = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
    assert len(options) > 20
