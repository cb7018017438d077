"""``python -m cococo_core mask`` on tiny models: PNG folder / video in and out, errors, --help."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from cococo_core import cli
from cococo_core.cli import mask as cli_mask
from cococo_core.masks.loading import load_detector, load_segmenter
from cococo_core.masks.text_masks import MaskOptions, masks_from_text
from cococo_core.video_io import read_frames, read_mask
from test_masks_tiny import shared_files


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    generator = np.random.default_rng(3)
    for index in range(3):
        Image.fromarray(generator.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"f{index:03d}.png")
    return folder


def _read_pngs(folder):
    files = sorted(folder.glob("*.png"))
    return np.stack([np.asarray(Image.open(f)) for f in files])


def test_mask_command_writes_png_masks_equal_to_the_api(tmp_path, frames_folder):
    dino_hf, dino_original, _ = shared_files("dino")
    _, sam_original, _ = shared_files("sam")
    out, preview = tmp_path / "masks", tmp_path / "preview"
    code = cli.main(["mask", "--video", str(frames_folder), "--text", "The cat. dog", "--detector",
                     str(dino_original), "--segmenter", str(sam_original), "--out", str(out), "--preview", str(preview),
                     "--detection-size", "64", "--box-threshold", "0.3", "--max-boxes", "4", "--grow", "1"])
    assert code == 0
    assert set(np.unique(_read_pngs(out))) <= {0, 255}
    written = read_mask(out, threshold=None)  # what `inpaint --mask` reads
    frames = torch.from_numpy(_read_pngs(frames_folder))
    expected = masks_from_text(frames, "the cat . dog", load_detector(dino_hf), load_segmenter(sam_original),
                               MaskOptions(detection_short_side=64, box_threshold=0.3, max_boxes=4, grow=1))
    assert np.allclose(written, expected.masks.numpy(), atol=1e-3)
    assert 0 < written.mean() < 1
    assert _read_pngs(preview).shape == (3, 40, 56, 3)


def test_mask_command_reads_and_writes_videos(tmp_path, frames_folder):
    import imageio.v2 as imageio

    _, dino_original, _ = shared_files("dino")
    video = tmp_path / "clip.mp4"
    imageio.mimwrite(str(video), list(_read_pngs(frames_folder)), fps=10, macro_block_size=1)
    out = tmp_path / "mask.mp4"
    code = cli.main(["mask", "--video", str(video), "--text", "dog", "--detector", str(dino_original), "--box-mode",
                     "--out", str(out), "--detection-size", "64", "--box-threshold", "0.3", "--max-frames", "2"])
    assert code == 0
    clip = read_frames(out)
    assert clip.frames.shape[:3] == (2, 40, 56) and clip.fps == pytest.approx(10)
    assert read_mask(out).shape == (2, 40, 56)


def test_mask_command_errors_are_one_line(tmp_path, capsys):
    _, dino_original, _ = shared_files("dino")
    assert cli.main(["mask", "--video", str(tmp_path / "none.mp4"), "--text", "dog", "--detector", "x",
                     "--segmenter", "y", "--out", str(tmp_path / "o")]) == 2
    assert "--video not found" in capsys.readouterr().err
    assert cli.main(["mask", "--video", str(tmp_path), "--text", "dog", "--detector", str(dino_original),
                     "--out", str(tmp_path / "o")]) == 2
    assert "--segmenter is required" in capsys.readouterr().err
    assert cli.main(["mask", "--video", str(tmp_path), "--text", "dog", "--detector", str(dino_original),
                     "--box-mode", "--out", str(tmp_path / "o"), "--chunk-size", "0"]) == 2
    assert "--chunk-size must be >= 1" in capsys.readouterr().err


def test_every_option_has_help():
    parser = argparse.ArgumentParser()
    cli_mask.add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        assert action.help and len(action.help) > 15, action.option_strings
