"""``cococo mask --tracker`` on a tiny SAM 2 folder: prompts, outputs, saved logits, argument checks first."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tiny_trackers
from cococo_core import cli
from cococo_core.masks.tracking import load_tracker, track_masks
from cococo_core.video_io import read_mask


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    generator = np.random.default_rng(5)
    for index in range(4):
        Image.fromarray(generator.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"f{index:03d}.png")
    return folder


def _frames(folder):
    return torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]))


def test_tracker_masks_and_logits_equal_the_library(tmp_path, frames_folder):
    tracker = tiny_trackers.sam2_folder()
    out, preview, logits = tmp_path / "masks", tmp_path / "preview.gif", tmp_path / "logits.safetensors"
    code = cli.main(["mask", "--video", str(frames_folder), "--tracker", str(tracker), "--box", "5,4,30,28@2",
                     "--point", "40,30@1", "--point", "44,12@1:neg", "--out", str(out), "--preview", str(preview),
                     "--save-logits", str(logits)])
    assert code == 0
    expected = track_masks(_frames(frames_folder), load_tracker(tracker), boxes=["5,4,30,28@2"],
                           points=["40,30@1", "44,12@1:neg"])
    saved = load_file(str(logits))
    assert saved["object_ids"].tolist() == expected.object_ids == [1, 2]
    torch.testing.assert_close(saved["logits"], expected.logits)
    assert np.array_equal(read_mask(out, threshold=None) > 0.5, expected.masks.numpy())
    assert preview.is_file()


@pytest.mark.parametrize("arguments, message", [
    (["--box", "1,2,3"], "box '1,2,3'"),
    (["--box", "1,1,9,9@7"], "frame 7 but the video has 4 frames"),
    (["--text", "dog"], "reads no text: give --detector"),
    (["--box", "1,1,9,9", "--segmenter", "x"], "--segmenter: per-frame mask options, not used with --tracker"),
    ([], "needs something to track"),
    (["--box", "1,1,9,9", "--objects", "top:x"], "top:N"),
    (["--box", "1,1,9,9", "--save-logits", "x.npy"], "give a .safetensors file name"),
])
def test_arguments_are_checked_before_any_model_loads(tmp_path, frames_folder, monkeypatch, capsys, arguments,
                                                     message):
    import dataclasses

    from cococo_core.masks.tracking import registry

    registry.detect_kind(registry.open_source(tiny_trackers.sam2_folder()))  # the built-in backends registered
    backend = registry._BACKENDS["sam2"]
    monkeypatch.setitem(registry._BACKENDS, "sam2", dataclasses.replace(
        backend, load=lambda *a, **k: pytest.fail("a model was loaded")))
    code = cli.main(["mask", "--video", str(frames_folder), "--tracker", str(tiny_trackers.sam2_folder()),
                     "--out", str(tmp_path / "m")] + arguments)
    assert code != 0 and message in capsys.readouterr().err


def test_tracking_options_need_a_tracker(tmp_path, frames_folder, capsys):
    code = cli.main(["mask", "--video", str(frames_folder), "--text", "dog", "--detector", "d", "--box", "1,1,5,5",
                     "--out", str(tmp_path / "m")])
    assert code != 0 and "need --tracker" in capsys.readouterr().err
