"""Video / image-sequence / mask reading and writing through imageio-ffmpeg and Pillow."""
import numpy as np
import pytest
from PIL import Image

from cococo_core.video_io import read_frames, read_mask, write_video
from test_pipeline_helpers import moving_disc_mask, pan_clip


@pytest.fixture(scope="module")
def clip():
    return pan_clip(frames=9, height=48, width=64)


# GIF stores frame durations in 1/100 s, so 8 fps (125 ms) comes back as 120 ms
@pytest.mark.parametrize("suffix, fps, read_fps, tolerance",
                         [(".mp4", 12.5, 12.5, 12), (".webm", 10.0, 10.0, 16), (".gif", 8.0, 1000 / 120, 40)])
def test_video_round_trip_keeps_frames_size_and_fps(tmp_path, clip, suffix, fps, read_fps, tolerance):
    path = write_video(tmp_path / f"clip{suffix}", clip, fps)
    read = read_frames(path)
    assert read.frames.shape == clip.shape and read.frames.dtype == np.uint8
    assert read.fps == pytest.approx(read_fps, rel=1e-3)
    assert np.abs(read.frames.astype(int) - clip).mean() < tolerance


def test_odd_sizes_are_written_at_their_size(tmp_path, clip):
    odd = clip[:, :47, :63]
    assert read_frames(write_video(tmp_path / "odd.mp4", odd, 8)).frames.shape == odd.shape


def test_stride_start_and_limit(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip, 12)
    picked = read_frames(path, stride=2, start=1, max_frames=3)
    assert picked.frames.shape[0] == 3 and picked.fps == pytest.approx(6)
    every = read_frames(path).frames
    assert np.array_equal(picked.frames, every[[1, 3, 5]])


def test_png_folder_is_lossless_and_naturally_ordered(tmp_path, clip):
    folder = write_video(tmp_path / "frames", clip)
    assert sorted(p.name for p in folder.iterdir())[:2] == ["frame_00000.png", "frame_00001.png"]
    read = read_frames(folder)
    assert np.array_equal(read.frames, clip) and read.fps is None
    loose = tmp_path / "loose"
    loose.mkdir()
    for index in (10, 2, 1):
        Image.fromarray(clip[index % len(clip)]).save(loose / f"f{index}.png")
    assert np.array_equal(read_frames(loose).frames, clip[[1, 2, 1]])  # f1, f2, f10 (10 % 9 == 1)
    assert np.array_equal(read_frames(str(loose / "f1*.png")).frames, clip[[1, 1]])  # f1, f10
    assert np.array_equal(read_frames(loose / "f2.png").frames, clip[2:3])


def test_masks_threshold_or_grey(tmp_path):
    mask = moving_disc_mask(frames=5, height=48, width=64)
    folder = write_video(tmp_path / "mask", np.repeat(mask[..., None], 3, axis=-1))
    binary = read_mask(folder)
    assert binary.dtype == np.float32 and np.array_equal(binary, (mask > 0).astype(np.float32))
    grey = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], 3, -1).repeat(48, 1)
    soft = read_mask(write_video(tmp_path / "grey", grey), threshold=None)
    assert 0 < soft[0, 0, 30] < 1 and soft.max() == 1 and soft.min() == 0
    encoded = read_mask(write_video(tmp_path / "mask.mp4", np.repeat(mask[..., None], 3, -1), 8))
    assert (encoded != (mask > 0)).mean() < 0.02  # lossy video masks survive the threshold


def test_clear_errors(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match="no such video"):
        read_frames(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="no images"):
        read_frames(tmp_path)
    with pytest.raises(FileNotFoundError, match="matches no image"):
        read_frames(str(tmp_path / "*.png"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_frames(tmp_path / "notes.txt")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read the video"):
        read_frames(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="stride"):
        read_frames(tmp_path, stride=0)
    with pytest.raises(ValueError, match="threshold"):
        read_mask(tmp_path, threshold=2)
    with pytest.raises(ValueError, match="cannot write"):
        write_video(tmp_path / "out.txt", clip)
    with pytest.raises(FileNotFoundError, match="output folder"):
        write_video(tmp_path / "nowhere" / "out.mp4", clip)
    with pytest.raises(ValueError, match="non-empty"):
        write_video(tmp_path / "out.mp4", clip[:0])
