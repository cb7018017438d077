"""``python -m cococo_core evaluate`` end to end on a tiny dataset with the tiny models (CoCoCo, LGVI, CLIP,
I3D), in one process and sharded over two with ``accelerate launch``; and its parts (datasets, protocol,
result files) on their own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import cpu_processes
import pytest

import tiny_models
from cococo_core import cli
from cococo_core.evaluation.dataset import read_dataset
from cococo_core.evaluation.protocol import PAPER, random_mask, random_prompt, sample_videos
from cococo_core.evaluation.results import ResultStore

ROOT = Path(__file__).resolve().parent.parent
METRIC_KEYS = ("cs", "bp", "tc", "psnr", "ssim", "ewarp")


def _texture_video(seed: int, frames: int = 6, size: int = 64) -> np.ndarray:
    from PIL import Image

    coarse = np.random.default_rng(seed).integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    return np.stack([np.roll(base, 2 * t, axis=1) for t in range(frames)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """videos/clip0, videos/clip1 (PNG folders), masks/clip0.png, prompts.json."""
    from PIL import Image

    root = tmp_path_factory.mktemp("dataset")
    for index in range(2):
        folder = root / "videos" / f"clip{index}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(_texture_video(index)):
            Image.fromarray(frame).save(folder / f"{t:03d}.png")
    (root / "masks").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:44] = 255
    Image.fromarray(mask).save(root / "masks" / "clip0.png")
    (root / "prompts.json").write_text(json.dumps({"clip0": "a cat", "clip1": "a dog"}))
    return root


def _evaluate(arguments: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    if processes > 1:
        return cpu_processes.launch(["-m", "cococo_core", "evaluate", *arguments], processes=processes, cwd=ROOT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cococo_core", "evaluate", *arguments], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _rows(folder: Path) -> list[dict]:
    return json.loads((folder / "rows.json").read_text())


def test_inpainting_run_is_the_same_in_one_and_two_processes(dataset, tmp_path):
    common = ["--dataset", str(dataset), "--mode", "inpaint", "--base", str(tiny_models.sd_folder()),
              "--motion", str(tiny_models.motion_folder()), "--steps", "1", "--max-frames", "3", "--stride", "2",
              "--random-masks", "--clip", str(tiny_models.clip_folder()), "--i3d", str(tiny_models.i3d_file()),
              "--flow", "dis", "--device", "cpu", "--conventions", "paper"]  # I3D BatchNorm per video on each rank
    one, two = tmp_path / "one", tmp_path / "two"
    _evaluate([*common, "--out", str(one)])
    _evaluate([*common, "--out", str(two)], processes=2)
    assert sorted(p.name for p in (two / "parts").iterdir()) == ["part-0.jsonl", "part-1.jsonl"]
    rows_one, rows_two = _rows(one), _rows(two)
    assert [r["id"] for r in rows_one] == [r["id"] for r in rows_two] == ["clip0", "clip1"]
    for a, b in zip(rows_one, rows_two):
        assert a["prompt"] == b["prompt"] and a["frames"] == 3 and a["flow"] == "dis"
        for key in METRIC_KEYS:
            assert np.isfinite(a[key]) and a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    summary_one = json.loads((one / "summary.json").read_text())
    summary_two = json.loads((two / "summary.json").read_text())
    assert summary_one["videos"] == 2 and summary_two["settings"]["processes"] == 2
    for key, entry in summary_one["metrics"].items():
        assert entry["mean"] == pytest.approx(summary_two["metrics"][key]["mean"], rel=1e-6, abs=1e-9), key
    assert "vfid" in summary_one["metrics"] and (one / "summary.csv").read_text().startswith("metric,value,videos")
    assert summary_one["conventions"] == summary_two["conventions"] and summary_one["conventions"]["i3d_norm"] == "per-video"
    assert (one / "rows.csv").read_text().splitlines()[0].startswith("id,video,prompt,frames")



def test_existing_results_equal_to_the_input_give_the_known_values(dataset, tmp_path):
    out = tmp_path / "out"
    arguments = ["--dataset", str(dataset), "--results", str(dataset / "videos"), "--out", str(out), "--flow", "none",
                 "--device", "cpu"]
    done = _evaluate(arguments)
    rows = _rows(out)
    clip0 = rows[0]
    assert clip0["bp"] == 0 and clip0["psnr"] == 100 and clip0["ssim"] == pytest.approx(1, abs=1e-12)
    assert "bp" not in rows[1]  # clip1 has no mask and random masks are off
    assert "2 videos evaluated" in done.stdout

    # resume: with one finished row left, only the other video is evaluated again
    part = out / "parts" / "part-0.jsonl"
    part.write_text(part.read_text().splitlines()[0] + "\n")
    again = _evaluate(arguments)
    assert "1 of 2 videos to do (1 already done)" in again.stderr
    assert _rows(out) == rows[:1] + [{**rows[1], "seconds": _rows(out)[1]["seconds"]}]


def test_a_result_with_another_frame_count_than_its_input_is_refused(dataset, tmp_path):
    """With --stride 2 the input is frames 0, 2, 4 of 6; a 6-frame result (made from every frame) must not be
    cut to its first 3 frames, which would pair result frame 1 with input frame 2."""
    out = tmp_path / "out"
    done = _evaluate(["--dataset", str(dataset), "--results", str(dataset / "videos"), "--stride", "2",
                      "--flow", "none", "--device", "cpu", "--out", str(out)])
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["clip0", "clip1"]
    for row in rows:
        assert "psnr" not in row
        assert "has 6 frames, the input 3 (start 0, stride 2" in row["error"]
        assert str(dataset / "videos" / row["id"]) in row["error"]
    assert "clip0: the result" in done.stderr and "0 videos evaluated, 2 failed" in done.stdout


def test_lgvi_removal_run_uses_the_predicted_mask_for_bp(dataset, tmp_path):
    import test_lgvi_tiny

    out = tmp_path / "out"
    _evaluate(["--dataset", str(dataset), "--mode", "remove", "--model", str(test_lgvi_tiny.lgvi_folder(8)),
               "--steps", "1", "--guidance", "1", "--max-frames", "2", "--flow", "none", "--out", str(out),
               "--clip", str(tiny_models.clip_folder()), "--device", "cpu"])
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["clip0", "clip1"] and all(not r.get("error") for r in rows)
    assert all(np.isfinite(r["psnr"]) and r["frames"] == 2 for r in rows)
    assert "bp" in rows[0]  # the dataset's mask; clip1 gets the mask LGVI predicted (NaN if it covers everything)
    assert "bp" in rows[1]
    assert all("tc" in r and "cs" not in r for r in rows)  # the prompt of a removal names what must be gone


def test_user_errors_are_one_line(dataset, tmp_path, capsys):
    assert cli.main(["evaluate", "--dataset", str(dataset), "--out", str(tmp_path / "o")]) == 2
    assert "--mode results needs --results" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", str(tmp_path / "none"), "--results", str(dataset),
                     "--out", str(tmp_path / "o"), "--device", "cpu", "--flow", "none"]) == 2
    assert "dataset not found" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", str(dataset), "--mode", "inpaint", "--out", str(tmp_path / "o")]) == 2
    assert "needs --base and --motion" in capsys.readouterr().err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "settings.json").write_text('{"mode": "inpaint"}')
    assert cli.main(["evaluate", "--dataset", str(dataset), "--results", str(dataset / "videos"), "--flow", "none",
                     "--out", str(tmp_path / "old")]) == 2
    assert "other settings" in capsys.readouterr().err


# --- the parts

def test_webvid_csv_layout(tmp_path):
    (tmp_path / "videos" / "001").mkdir(parents=True)
    (tmp_path / "videos" / "001" / "123.mp4").write_bytes(b"")
    csv = tmp_path / "results_10M_val.csv"
    csv.write_text('videoid,contentUrl,duration,page_dir,name\n123,http://x,PT00H00M10S,001,"A dog runs, happily"\n')
    (sample,) = read_dataset(csv, video_root=tmp_path / "videos")
    assert sample.id == "123" and sample.video == (tmp_path / "videos" / "001" / "123.mp4").resolve()
    assert sample.prompt == "A dog runs, happily" and sample.mask is None


def test_plain_csv_paths_must_stay_inside_the_dataset(tmp_path):
    csv = tmp_path / "set.csv"
    csv.write_text("video,prompt,mask\na.mp4,a cat,m.png\n")
    (sample,) = read_dataset(csv)
    assert sample.video == (tmp_path / "a.mp4").resolve() and sample.mask == (tmp_path / "m.png").resolve()
    csv.write_text("video,prompt\n../../etc/passwd,x\n")
    with pytest.raises(ValueError, match="outside"):
        read_dataset(csv)
    csv.write_text("video,prompt\na.mp4,x\na.mp4,y\n")
    with pytest.raises(ValueError, match="twice"):
        read_dataset(csv)


def test_rovi_json_layout_gives_one_sample_per_object(tmp_path):
    """A ROVI JSON as LGVI training reads it (``read_rovi``'s field map): objects with their inpainted video,
    mask and referring expression; paths must stay inside the root."""
    rovi = {"vid1": {"video": "JPEGImages/vid1", "objects": [
        {"inpainted": "Inpainted/vid1/0", "mask": "Masks/vid1/0", "expression": "remove the dog on the left"},
        {"inpainted": "Inpainted/vid1/1", "mask": "Masks/vid1/1", "expression": ["remove the cat", "the cat"]}]}}
    (tmp_path / "test.json").write_text(json.dumps(rovi))
    samples = read_dataset(tmp_path / "test.json")
    assert [(s.id, s.prompt) for s in samples] == [("Inpainted/vid1/0", "remove the dog on the left"),
                                                   ("Inpainted/vid1/1", "remove the cat")]
    root = tmp_path.resolve()
    assert samples[0].video == root / "JPEGImages" / "vid1" and samples[1].target == root / "Inpainted" / "vid1" / "1"
    assert samples[1].mask == root / "Masks" / "vid1" / "1"
    rovi["vid1"]["objects"][0]["inpainted"] = "../../elsewhere/0"
    (tmp_path / "test.json").write_text(json.dumps(rovi))
    with pytest.raises(ValueError, match="outside"):
        read_dataset(tmp_path / "test.json")


def test_folder_layout(dataset):
    samples = read_dataset(dataset)
    assert [(s.id, s.prompt, s.mask is not None) for s in samples] == [("clip0", "a cat", True), ("clip1", "a dog", False)]


def test_paper_protocol_draws_depend_only_on_seed_and_id():
    assert (PAPER.start, PAPER.stride, PAPER.max_frames, PAPER.size, PAPER.sample) == (0, 4, 16, (384, 256), 1000)
    mask = random_mask("vid7", 16, 256, 384, seed=0)
    assert mask.shape == (16, 256, 384) and (mask == mask[:1]).all()
    rows, cols = np.nonzero(mask[0])
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 64 <= height <= 128 and 96 <= width <= 192 and mask[0].sum() == height * width
    assert np.array_equal(mask, random_mask("vid7", 16, 256, 384, seed=0))
    assert not np.array_equal(mask, random_mask("vid7", 16, 256, 384, seed=1))
    assert random_prompt("vid7", 0) == random_prompt("vid7", 0)
    picked = sample_videos(list(range(50)), 10, seed=0)
    assert len(picked) == 10 and picked == sorted(picked) and picked == sample_videos(list(range(50)), 10, seed=0)


def test_result_store_keeps_a_success_over_a_later_error_and_skips_broken_lines(tmp_path):
    store = ResultStore(tmp_path)
    store.prepare()
    store.append(0, {"id": "a", "error": "boom"})
    store.append(1, {"id": "a", "psnr": 30.0})
    store.append(1, {"id": "b", "error": "boom"})
    with open(tmp_path / "parts" / "part-1.jsonl", "a") as handle:
        handle.write('{"id": "c", "psn')  # cut short by a killed run
    assert store.finished() == {"a"}
    summary = store.gather(["a", "b"], {})
    assert summary["videos"] == 1 and summary["failed"] == 1 and summary["metrics"]["psnr"]["mean"] == 30.0


def test_resuming_with_other_settings_is_refused(dataset, tmp_path, capsys):
    store = ResultStore(tmp_path)
    store.prepare()
    store.check_settings({"mode": "results", "seed": 0})
    store.check_settings({"mode": "results", "seed": 0})  # the same settings resume
    with pytest.raises(ValueError, match="seed differ"):
        store.check_settings({"mode": "results", "seed": 1})


def test_paper_preset_with_an_override():
    import argparse

    from cococo_core.cli import evaluate as cli_evaluate

    parser = argparse.ArgumentParser()
    cli_evaluate.add_arguments(parser)
    args = parser.parse_args(["--dataset", "d", "--out", "o", "--protocol", "paper", "--stride", "2", "--seed", "3"])
    protocol = cli_evaluate._protocol(args)
    assert (protocol.stride, protocol.max_frames, protocol.size, protocol.seed) == (2, 16, (384, 256), 3)
    assert protocol.random_masks and protocol.random_prompts and protocol.sample == 1000
    plain = cli_evaluate._protocol(parser.parse_args(["--dataset", "d", "--out", "o"]))
    assert (plain.stride, plain.max_frames, plain.random_masks, plain.sample) == (1, None, False, None)
    # the metric conventions follow the preset unless named
    assert cli_evaluate._conventions(args).as_dict() == {"i3d_norm": "per-video", "warp_occluded": "zero",
                                                         "average": "frame", "cs_clamp": "frame"}
    mixed = parser.parse_args(["--dataset", "d", "--out", "o", "--protocol", "paper", "--i3d-norm", "running"])
    assert cli_evaluate._conventions(mixed).i3d_norm == "running" and cli_evaluate._conventions(mixed).average == "frame"
    assert cli_evaluate._conventions(parser.parse_args(["--dataset", "d", "--out", "o"])).average == "video"


def test_lgvi_preset_reads_clips_as_the_official_inference_script(dataset):
    """inference_referring.py load_video: sorted frame files [:24], each resized to 512x320 with Image.BILINEAR."""
    import argparse

    from PIL import Image

    from cococo_core.cli import evaluate as cli_evaluate
    from cococo_core.evaluation.protocol import LGVI
    from cococo_core.evaluation.runner import load_inputs

    folder = dataset / "videos" / "clip0"
    official = np.stack([np.asarray(Image.open(folder / name).convert("RGB").resize((512, 320), resample=Image.BILINEAR))
                         for name in sorted(os.listdir(folder))[:24]])
    assert np.array_equal(load_inputs(read_dataset(dataset)[0], LGVI).frames, official)

    parser = argparse.ArgumentParser()
    cli_evaluate.add_arguments(parser)
    args = parser.parse_args(["--dataset", "d", "--out", "o", "--protocol", "lgvi"])
    protocol = cli_evaluate._protocol(args)
    assert (protocol.start, protocol.stride, protocol.max_frames, protocol.size, protocol.resample) == \
        (0, 1, 24, (512, 320), "bilinear")
    assert not protocol.random_masks and not protocol.random_prompts and protocol.sample is None
    assert cli_evaluate._conventions(args).i3d_norm == "per-video"
