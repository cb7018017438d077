"""``python -m cococo_core remove`` on the tiny official-layout folders."""
from __future__ import annotations

import numpy as np
import pytest

import test_lgvi_tiny as tiny
from cococo_core import cli
from cococo_core.video_io import read_frames, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "in.mp4"
    frames = (np.random.default_rng(0).random((2, 32, 48, 3)) * 255).astype(np.uint8)
    write_video(path, frames, fps=10)
    return path


def test_referring_removal_writes_video_and_mask(video, tmp_path):
    out, mask = tmp_path / "out.mp4", tmp_path / "mask"
    code = cli.main(["remove", "--model", str(tiny.lgvi_folder(8)), "--video", str(video), "--text", "remove the bird",
                     "--out", str(out), "--mask-out", str(mask), "--steps", "1", "--guidance", "1",
                     "--width", "32", "--height", "32", "--device", "cpu"])
    assert code == 0
    clip = read_frames(out)
    assert clip.frames.shape == (2, 32, 48, 3) and clip.fps == pytest.approx(10)
    assert len(list(mask.glob("frame_*.png"))) == 2


def test_chat_removal_with_a_follow_up(video, tmp_path, capsys):
    out, replies = tmp_path / "out.gif", tmp_path / "replies.txt"
    code = cli.main(["remove", "--model", str(tiny.lgvi_folder(8, interactive=True)), "--chat", str(tiny.llava_hf_folder()),
                     "--video", str(video), "--text", "remove the bird", "--follow-up", "and the other one?",
                     "--out", str(out), "--reply-out", str(replies), "--steps", "1", "--guidance", "1",
                     "--native-size", "--max-new-tokens", "3", "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "out_turn1.gif").is_file() and (tmp_path / "out_turn2.gif").is_file()
    assert replies.read_text().count("User: ") == 2
    assert "[turn 2] Assistant:" in capsys.readouterr().out


def test_user_errors_are_one_line(video, tmp_path, capsys):
    assert cli.main(["remove", "--model", str(tmp_path / "none"), "--video", str(video), "--text", "x",
                     "--out", str(tmp_path / "o.mp4")]) == 2
    assert "--model folder not found" in capsys.readouterr().err
    assert cli.main(["remove", "--model", str(tiny.lgvi_folder(8)), "--video", str(video), "--text", "x",
                     "--follow-up", "y", "--out", str(tmp_path / "o.mp4")]) == 2
    assert "--follow-up needs the chat model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["remove", "--help"])
    assert "--llava-weights" in capsys.readouterr().out


def test_negative_text_and_eta_reach_the_pipeline(video, tmp_path, monkeypatch):
    from cococo_core.lgvi.pipeline import LGVIPipeline

    seen = []
    original = LGVIPipeline.__call__
    monkeypatch.setattr(LGVIPipeline, "__call__", lambda self, *a, **k: (seen.append(k), original(self, *a, **k))[1])
    code = cli.main(["remove", "--model", str(tiny.lgvi_folder(8)), "--video", str(video), "--text", "remove the bird",
                     "--negative-text", "a blurry bird", "--eta", "0.5", "--out", str(tmp_path / "o.mp4"),
                     "--steps", "1", "--width", "32", "--height", "32", "--device", "cpu"])
    assert code == 0
    assert seen[0]["negative_prompt"] == "a blurry bird" and seen[0]["eta"] == 0.5
