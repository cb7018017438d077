"""Issue 23 case 7: multi-process runs that quietly are not. Run through the real ``accelerate launch`` (CPU, gloo,
loopback), kept short: the refused launch stops before any model is built; preparation runs on 6 tiny videos."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import cpu_processes
from cococo_core.training.launch import LaunchError, check_launch
from training_data import write_webvid

ROOT = Path(__file__).resolve().parents[1]


def test_accelerate_cpu_flag_with_two_processes_stops_with_an_explanation(tmp_path):
    """accelerate 1.x's ``--cpu --num_processes 2`` starts ONE process without mpirun; it must not train alone."""
    config = tmp_path / "toy.json"
    config.write_text(json.dumps({"recipe": "training_toy:ToyRecipe", "output_dir": str(tmp_path / "out"),
                                  "max_steps": 2, "train_batch_size": 2, "options": {"toy_samples": 8}}))
    done = cpu_processes.accelerate_launch(["--cpu", "--num_processes", "2"],
                                           ["-m", "cococo_core", "train", "--config", str(config)], cwd=tmp_path,
                                           timeout=300)
    assert done.returncode != 0, "a run asked for 2 processes trained as one"
    assert "started only this one" in done.stderr and "ACCELERATE_USE_CPU=true" in done.stderr
    assert not (tmp_path / "out" / "weights").exists()


@pytest.mark.parametrize("environ,processes", [
    ({}, 1),  # python -m cococo_core train
    ({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"}, 1),  # accelerate launch --cpu (1 process)
    ({"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "WORLD_SIZE": "1",
      "RANK": "0"}, 1),  # accelerate launch --multi_gpu --num_processes 1 (torchrun)
    ({"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "WORLD_SIZE": "2",
      "RANK": "0"}, 2),  # two processes that see each other
])
def test_launches_that_run_what_was_asked_pass(environ, processes):
    check_launch(processes, environ)


def test_torchrun_processes_that_cannot_see_each_other_are_refused():
    with pytest.raises(LaunchError, match="2 processes were launched but only one takes part"):
        check_launch(1, {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"})


def test_prepare_data_summary_is_written_once_every_rank_has_finished(tmp_path):
    """Each rank finishes at its own time; summary.json must hold the totals of all ranks' shards and every rank's
    run, whatever rank finishes last (before: each rank overwrote it with the totals seen at its own end)."""
    csv = write_webvid(tmp_path / "webvid", good=3, frames=20)
    output = tmp_path / "shards"
    cpu_processes.launch(["-m", "cococo_core", "prepare-data", "--csv", str(csv), "--videos",
                          str(tmp_path / "webvid" / "videos"), "--output", str(output), "--no-scene-filter",
                          "--min-frames", "4", "--max-frames", "4", "--short-side", "32"], cwd=tmp_path, timeout=300)
    summary = json.loads((output / "summary.json").read_text())
    assert sorted(summary["ranks"]) == ["0", "1"]
    assert [summary["ranks"][r]["seen"] for r in ("0", "1")] == [3, 3]  # 6 rows: 0, 2, 4 and 1, 3, 5
    # every video is counted once: 3 written, 1 missing, 1 unreadable, 1 two-scene video kept (no scene filter)
    assert summary["written"] == sum(summary["ranks"][r]["written"] for r in ("0", "1")) == 4
    assert summary["skipped"] == {"missing": 1, "unreadable": 1}
    assert summary["this_run"]["rank"] == 0
