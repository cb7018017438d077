"""LGVI / LGVI-I recipes on the shared training loop (float64 tiny models): processes, resume, the README commands.

Reference for the two-process run: the same training in one process with the same global micro-batch (the loop's
data order and per-sample seeds do not depend on the process count); the runs differ only in how the float64
gradient mean is summed, which moves an Adam update by far less than lr x 1e-8 per step (see
tests/test_training_loop.py), while a different sample, noise draw or group weighting moves it by O(lr).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import cpu_processes
import pytest
import torch
from safetensors.torch import load_file

import tiny_models
from cococo_core.training.config import TrainConfig
from cococo_core.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
import make_tiny_lgvi  # noqa: E402

LR = 1e-3
SIZE, FRAMES = make_tiny_lgvi.SIZE, 2


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_tiny_lgvi.write_dataset(tmp_path_factory.mktemp("lgvi-loop-data"))


def _config(output: Path, samples: Path, **changes) -> TrainConfig:
    options = {"pretrained": str(tiny_models.sd_folder(in_channels=8)), "dtype": "float64",
               "learning_rates": {"unet": LR, "mask_decoder": LR},
               "data": {"samples": str(samples), "num_frames": FRAMES, "width": SIZE, "height": SIZE}}
    base = dict(recipe="lgvi", output_dir=str(output), max_steps=2, train_batch_size=2, checkpoint_every=1,
                checkpoints_total_limit=None, weight_decay=0.0, options=options)
    base.update(changes)
    return TrainConfig(**base)


def _trained(output: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(output / "checkpoints" / f"step-{step:08d}" / "trainable_0.safetensors"))



def test_lgvi_on_the_loop_resumes_exactly_and_two_processes_match_one(samples, tmp_path):
    straight = train(_config(tmp_path / "one", samples))
    assert straight.step == 2 and all(np.isfinite(straight.losses))
    metrics = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "diffusion", "mask"} <= set(metrics[0])

    # resume: 1 step, stop, continue to 2 = the uninterrupted run, bit for bit
    train(_config(tmp_path / "resumed", samples, max_steps=1))
    train(_config(tmp_path / "resumed", samples, resume="latest"))
    one, resumed = _trained(tmp_path / "one", 2), _trained(tmp_path / "resumed", 2)
    assert one.keys() == resumed.keys()
    assert all(torch.equal(one[k], resumed[k]) for k in one)

    # two gloo processes, 1 batch group each = one process with 2 groups (a 4-item dataset: video and image groups)
    two = _config(tmp_path / "two", samples, train_batch_size=1)
    config_file = tmp_path / "two.json"
    config_file.write_text(json.dumps(two.to_dict()))
    cpu_processes.launch([str(ROOT / "training" / "train_lgvi.py"), "--config", str(config_file)], cwd=tmp_path, timeout=400)
    split = _trained(tmp_path / "two", 2)
    initial = _trained(tmp_path / "resumed", 1)  # after one step: the runs must have moved since
    tolerance = 2 * LR * 1e-8
    for key in one:
        assert one[key].dtype == torch.float64
        torch.testing.assert_close(split[key], one[key], rtol=0, atol=tolerance, msg=key)
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 100 * tolerance


def readme_training_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Training LGVI / LGVI-I"):]
    return [line for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines() if line.strip()]


def test_readme_training_commands_run_and_the_outputs_load(tmp_path):
    """The README's tiny LGVI -> LGVI-I commands as written (run in a scratch folder), then both stages load the result."""
    from cococo_core.lgvi import LGVIChat, LGVIPipeline

    commands = readme_training_commands()
    assert [c.split()[1] for c in commands] == ["training/make_tiny_lgvi.py", "training/train_lgvi.py", "training/train_lgvi.py", "-m"]
    (tmp_path / "training").symlink_to(ROOT / "training")  # the commands name repository-relative scripts
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "python"
        done = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, command + "\n" + done.stderr[-3000:]
    final = tmp_path / "runs" / "lgvi-i-tiny" / "weights" / "step-00000002"
    metrics = json.loads((tmp_path / "runs" / "lgvi-i-tiny" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"diffusion", "mask", "lm"} <= set(metrics) and metrics["step"] == 2
    chat = LGVIChat.load(tmp_path / "runs" / "tiny-lgvi" / "llava", final / "llava" / "llava_weights.pth")
    turn = chat.ask(chat.start(np.zeros((SIZE, SIZE, 3), np.float32)), "remove the bird", max_new_tokens=4)
    pipe = LGVIPipeline.from_pretrained(final, device="cpu", text_encoder=False)
    out = pipe(np.zeros((FRAMES, SIZE, SIZE, 3), np.float32), context=turn.context, num_inference_steps=2)
    assert out.frames.shape == (FRAMES, SIZE, SIZE, 3) and out.mask is not None
    assert (tmp_path / "runs" / "removed.mp4").stat().st_size > 0
