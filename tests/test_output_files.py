"""Writing outputs without losing data: overwrite rules, outputs that are inputs, stale PNG frames, failed writes,
and truncated input videos (cococo_core.output_files through cococo_core.video_io and the commands)."""
import errno
import logging
import os

import numpy as np
import pytest

import tiny_models
from cococo_core import cli, video_io
from cococo_core.video_io import read_frames, write_video

FRAMES, HEIGHT, WIDTH = 4, 32, 48


@pytest.fixture
def clip():
    return (np.random.default_rng(0).random((FRAMES, HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("name", ["out.mp4", "out.webm", "out.gif", "frames"])
def test_existing_outputs_need_overwrite(tmp_path, clip, name):
    path = write_video(tmp_path / name, clip, 8.0)
    with pytest.raises(ValueError, match="--overwrite"):
        write_video(path, clip[:2], 8.0)
    assert read_frames(path).frames.shape[0] == FRAMES
    write_video(path, clip[:2], 8.0, overwrite=True)
    assert read_frames(path).frames.shape[0] == 2
    assert _leftovers(tmp_path) == []


def test_png_folder_outputs_never_keep_stale_frames(tmp_path, clip):
    folder = write_video(tmp_path / "frames", clip, 8.0)
    (folder / "notes.txt").write_text("mine")
    write_video(folder, clip[:2], 8.0, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["frame_00000.png", "frame_00001.png", "notes.txt"]
    assert np.array_equal(read_frames(folder).frames, clip[:2])


def test_static_gifs_verify(tmp_path, clip):
    """Pillow stores identical consecutive frames once; the check counts play time, not images."""
    still = np.repeat(clip[:1], 6, axis=0)
    for fps in (8.0, 12.0, 30.0):
        write_video(tmp_path / f"still{fps:g}.gif", still, fps)


def test_outputs_that_are_inputs_are_refused_even_with_overwrite(tmp_path, clip):
    video = write_video(tmp_path / "in.mp4", clip, 8.0)
    folder = write_video(tmp_path / "in_frames", clip, 8.0)
    os.symlink(video, tmp_path / "link.mp4")
    os.link(video, tmp_path / "hard.mp4")
    cases = [(video, video), (tmp_path / "link.mp4", video), (tmp_path / "hard.mp4", video),
             (tmp_path / "sub" / ".." / "in.mp4", video), (folder, folder),
             (folder, folder / "frame_00001.png"), (folder, str(folder / "*.png"))]
    (tmp_path / "sub").mkdir()
    before = video.read_bytes()
    for out, source in cases:
        with pytest.raises(ValueError, match="destroy"):
            write_video(out, clip[:1], 8.0, overwrite=True, inputs=[source])
    assert video.read_bytes() == before and read_frames(folder).frames.shape[0] == FRAMES
    write_video(tmp_path, clip[:1], 8.0, inputs=[video])  # PNG frames beside the input video do not touch it
    assert video.read_bytes() == before


def _write_then_fail(path, frames, fps, crf):
    path.write_bytes(b"\x00" * 100)  # what a full disk leaves: a partial file
    raise OSError(errno.ENOSPC, "No space left on device")


def _write_garbage(path, frames, fps, crf):
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 50)  # the encoder "succeeded" into a cut file


@pytest.mark.parametrize("writer", [_write_then_fail, _write_garbage])
def test_failed_writes_raise_and_keep_the_earlier_file(tmp_path, clip, monkeypatch, writer):
    path = write_video(tmp_path / "out.mp4", clip, 8.0)
    before = path.read_bytes()
    monkeypatch.setattr(video_io, "_write_ffmpeg", writer)
    with pytest.raises(OSError, match="could not write"):
        write_video(path, clip[:2], 8.0, overwrite=True)
    with pytest.raises(OSError):
        write_video(tmp_path / "new.mp4", clip, 8.0)
    assert path.read_bytes() == before
    assert not (tmp_path / "new.mp4").exists() and _leftovers(tmp_path) == []


def test_failed_png_folder_write_leaves_no_partial_folder(tmp_path, clip, monkeypatch):
    from PIL import Image

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_video(tmp_path / "frames", clip, 8.0)
    assert list(tmp_path.iterdir()) == []


def test_a_written_file_that_does_not_read_back_fails_the_check(tmp_path, clip):
    path = tmp_path / "cut.mp4"
    write_video(path, clip, 8.0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError):
        video_io._verify_video(path, FRAMES, 8.0)


def test_truncated_video_is_reported(tmp_path, caplog):
    """An mp4 whose index comes first (faststart), cut short: the container announces 16 frames, 9 decode."""
    import imageio.v2 as iio

    frames = (np.random.default_rng(1).random((16, 64, 64, 3)) * 255).astype(np.uint8)
    whole = tmp_path / "whole.mp4"
    writer = iio.get_writer(whole, format="FFMPEG", fps=8, codec="libx264", pixelformat="yuv420p", macro_block_size=1,
                            quality=None, output_params=["-crf", "18", "-movflags", "+faststart"])
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with caplog.at_level(logging.WARNING, logger="cococo_core.video_io"):
        assert read_frames(whole).frames.shape[0] == 16
        assert not caplog.records
        decoded = read_frames(cut).frames.shape[0]
    assert decoded < 16
    assert f"announces 16 frames" in caplog.text and f"only {decoded} could be decoded" in caplog.text


# --- the commands ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(2)
    clip = (rng.random((FRAMES, HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
    mask = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    mask[:, 8:20, 10:30] = 255
    return {"folder": folder, "video": write_video(folder / "in.mp4", clip, 10.0),
            "mask": write_video(folder / "mask.mp4", mask, 10.0),
            "base": str(tiny_models.sd_folder()), "motion": str(tiny_models.motion_folder())}


def _inpaint(files, out, *extra):
    return ["inpaint", "--base", files["base"], "--motion", files["motion"], "--video", str(files["video"]),
            "--mask", str(files["mask"]), "--prompt", "a red car", "--out", str(out), "--steps", "1", *extra]


def test_inpaint_refuses_to_overwrite_its_input(files, capsys, no_loading):
    before = files["video"].read_bytes()
    for extra in ((), ("--overwrite",)):
        assert cli.main(_inpaint(files, files["video"], *extra)) == 2
        assert "destroy" in capsys.readouterr().err
    assert cli.main(_inpaint(files, files["mask"], "--overwrite")) == 2
    assert files["video"].read_bytes() == before


def test_inpaint_needs_overwrite_for_an_existing_output(files, capsys, no_loading):
    out = files["folder"] / "taken.mp4"
    out.write_bytes(b"keep me")
    assert cli.main(_inpaint(files, out)) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"


def test_inpaint_on_a_full_disk_exits_non_zero_and_keeps_files(files, capsys, monkeypatch, caplog):
    out = files["folder"] / "earlier.mp4"
    out.write_bytes(b"an earlier result")
    before = files["video"].read_bytes()
    monkeypatch.setattr(video_io, "_write_ffmpeg", _write_garbage)
    with caplog.at_level(logging.INFO):
        assert cli.main(_inpaint(files, out, "--overwrite")) == 1
    assert "could not write" in capsys.readouterr().err and "wrote" not in caplog.text
    assert out.read_bytes() == b"an earlier result" and files["video"].read_bytes() == before
    assert _leftovers(files["folder"]) == []


def test_mask_and_remove_refuse_to_overwrite_their_input(files, capsys, no_loading):
    video = str(files["video"])
    before = files["video"].read_bytes()
    mask = ["mask", "--video", video, "--text", "car", "--detector", files["base"], "--box-mode"]
    assert cli.main(mask + ["--out", video, "--overwrite"]) == 2
    assert "destroy" in capsys.readouterr().err
    assert cli.main(mask + ["--out", str(files["folder"] / "m.mp4"), "--preview", video, "--overwrite"]) == 2
    assert "destroy" in capsys.readouterr().err
    remove = ["remove", "--model", files["base"], "--video", video, "--text", "remove it"]
    assert cli.main(remove + ["--out", video, "--overwrite"]) == 2
    assert "destroy" in capsys.readouterr().err
    assert cli.main(remove + ["--out", str(files["folder"] / "r.mp4"), "--mask-out", video, "--overwrite"]) == 2
    assert "destroy" in capsys.readouterr().err
    assert cli.main(remove + ["--out", str(files["folder"] / "r.mp4"), "--mask-out",
                              str(files["folder"] / "r.mp4")]) == 2
    assert "same path" in capsys.readouterr().err
    assert files["video"].read_bytes() == before


def test_merge_and_convert_refuse_to_overwrite_an_input(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    assert cli.main(["merge", "--base", str(model), "--inpaint", str(model), "--out", str(model), "--overwrite"]) == 2
    assert "destroy" in capsys.readouterr().err
    assert cli.main(["convert-motion", "-i", str(model), "-o", str(model), "--overwrite"]) == 2
    assert "destroy" in capsys.readouterr().err
    assert model.read_bytes() == b"weights"
    from cococo_core import output_files

    assert output_files.check_output(tmp_path / "new.safetensors", inputs=[model]) == tmp_path / "new.safetensors"


def test_save_nodes_refuse_sub_folders_linked_out_of_output(tmp_path):
    """Refused before any folder is made: a refused prefix creates nothing outside the output folder."""
    from types import SimpleNamespace

    from nodes import comfy_adapter as adapter
    from nodes.nodes_personalize import CoCoCoSaveCheckpoint
    from workflow_executor import fake_comfyui

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with fake_comfyui(tmp_path):
        output = adapter.output_directory()
        output.mkdir(parents=True, exist_ok=True)
        os.symlink(outside, output / "escape")
        os.symlink(outside / "missing", output / "dangling")
        for prefix in ("escape/merged", "escape/new/deeper/merged", "dangling/new/merged"):
            with pytest.raises(ValueError, match="outside the output folder"):
                adapter.output_path(prefix, ".safetensors")
        with pytest.raises(ValueError, match="outside the output folder"):  # the save node, before any folder is made
            CoCoCoSaveCheckpoint().save(SimpleNamespace(recipe=object()), "escape/sub/merged")
        (output / "inside").mkdir()
        os.symlink(output / "inside", output / "alias")  # a link that stays inside is fine
        assert adapter.output_path("alias/merged", ".safetensors").name == "merged_00001_.safetensors"
        os.symlink(outside / "target.safetensors", output / "dangling_00001_.safetensors")
        assert adapter.output_path("dangling", ".safetensors").name == "dangling_00002_.safetensors"
    assert list(outside.iterdir()) == []
