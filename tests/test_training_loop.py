"""The shared training loop on a float64 toy recipe (tests/training_toy.py): data order, resume, processes."""
from __future__ import annotations

import json
from pathlib import Path

import cpu_processes
import pytest
import torch
from safetensors.torch import load_file

from cococo_core.training.config import TrainConfig, apply_overrides, load_config
from cococo_core.training.loop import check_parameter_groups, train
from cococo_core.training.sampling import RankBatchSampler

ROOT = Path(__file__).resolve().parents[1]
TOY = "training_toy:ToyRecipe"
LR = 0.05


def toy_config(output: Path, **changes) -> TrainConfig:
    base = dict(recipe=TOY, output_dir=str(output), max_steps=4, train_batch_size=4, gradient_accumulation_steps=2,
                checkpoint_every=2, lr_scheduler="constant_with_warmup", lr_warmup_steps=3, ema=True,
                ema_decay=0.9, weight_decay=0.0, options={"toy_samples": 12, "toy_lr": LR})
    base.update(changes)
    return TrainConfig(**base)


def final_head(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((output / "weights").iterdir())[-1] / "head.safetensors"))


def test_ranks_split_each_global_batch_in_the_single_process_order():
    single = list(RankBatchSampler(10, 4, 1, 0, seed=3, max_epochs=3))
    ranks = [list(RankBatchSampler(10, 2, 2, r, seed=3, max_epochs=3)) for r in range(2)]
    assert len(single) == 2 * 3  # 10 // 4 micro-batches per epoch, the short remainder dropped
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch
    epochs = [sorted(i for b in single[e * 2:(e + 1) * 2] for _, i in b) for e in range(3)]
    assert all(len(set(e)) == 8 for e in epochs) and epochs[0] != epochs[1]
    assert list(RankBatchSampler(10, 4, 1, 0, seed=3, start=3, max_epochs=3)) == single[3:]


def test_frozen_or_forgotten_parameters_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        check_parameter_groups(model, [{"params": list(model.parameters())}])
    with pytest.raises(ValueError, match="no optimizer group"):
        check_parameter_groups(model, [{"params": [model[1].weight]}])


def test_config_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\nmixed_precision: bf16\noptions:\n  frames: 16\n")
    config = load_config(path, ["options.frames=8", "log_with=[\"tensorboard\"]", "resume=latest"])
    assert (config.max_steps, config.mixed_precision, config.options["frames"], config.resume) == (7, "bf16", 8, "latest")
    assert config.recipe_config()["frames"] == 8 and config.recipe_config()["seed"] == 0
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict(apply_overrides({}, ["frames=3"]))
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")


def test_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    straight = train(toy_config(tmp_path / "a", max_steps=6))
    assert len(straight.losses) == 6
    train(toy_config(tmp_path / "b", max_steps=2))
    resumed = train(toy_config(tmp_path / "b", max_steps=6, resume="latest"))
    assert (resumed.step, resumed.micro_step) == (6, 12)
    a, b = final_head(tmp_path / "a"), final_head(tmp_path / "b")
    for key in a:  # same process count, same order of operations: bit-identical (EMA, warm-up LR, data position)
        assert torch.equal(a[key], b[key]), key
    assert len(list((tmp_path / "a" / "checkpoints").iterdir())) == 3
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and metrics[0]["lr"] == pytest.approx(LR / 3)



def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, monkeypatch):
    """Two CPU processes (gloo) with batch 2 each vs one process with batch 4.

    ``accelerate launch --cpu --num_processes 2`` starts the processes through ``mpirun`` only (accelerate 1.x); without
    MPI the same two-process gloo run is ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2``.

    The runs differ only in how the float64 gradient mean is summed (two means of 2, all-reduced, vs one mean of 4):
    a relative error of a few 1e-16 per step. Through Adam (update = lr·m/(√v+ε), bounded by lr per step) such an
    error moves a weight by far less than lr·1e-8 per step, while a different data order or seed moves it by O(lr);
    the tolerance is steps·lr·1e-8."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = toy_config(tmp_path / "one", checkpoint_every=0)
    train(config)
    two = toy_config(tmp_path / "two", checkpoint_every=0, train_batch_size=2)
    config_file = tmp_path / "two.json"
    config_file.write_text(json.dumps(two.to_dict()))
    cpu_processes.launch(["-m", "cococo_core", "train", "--config", str(config_file)], cwd=tmp_path, timeout=240)
    one, two_weights = final_head(tmp_path / "one"), final_head(tmp_path / "two")
    tolerance = config.max_steps * LR * 1e-8
    for key in one:
        assert one[key].dtype == torch.float64
        torch.testing.assert_close(two_weights[key], one[key], rtol=0, atol=tolerance)
    moved = max(float((one[k] - toy_initial_head()[k]).abs().max()) for k in one)
    assert moved > 100 * tolerance  # the runs did train


def toy_initial_head() -> dict[str, torch.Tensor]:
    from training_toy import ToyModel

    return ToyModel().head.state_dict()


def test_validate_is_optional_and_missing_members_are_named(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from training_toy import ToyRecipe

    members = {k: v for k, v in vars(ToyRecipe).items() if k not in ("validate", "__dict__", "__weakref__")}
    recipe = type("NoValidation", (), members)()
    assert not hasattr(recipe, "validate")
    result = train(toy_config(tmp_path / "nv", max_steps=2, checkpoint_every=0, validate_every=1), recipe)
    assert result.step == 2 and result.validation == []

    class Broken:
        name = "broken"

    with pytest.raises(TypeError, match="lacks"):
        train(toy_config(tmp_path / "b"), Broken())


def test_an_interrupted_export_leaves_no_half_folder(tmp_path, monkeypatch):
    """The export is staged as a whole: a failure half-way leaves no weights folder, so the next run exports
    instead of taking a half folder as done."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from training_toy import ToyRecipe

    class FailsHalfWay(ToyRecipe):
        def save_pretrained(self, model, directory):
            ToyRecipe.save_pretrained(self, model, directory)  # one file written ...
            raise OSError(28, "No space left on device")  # ... then the disk is full

    config = toy_config(tmp_path / "run", max_steps=2, checkpoint_every=2, ema=False)
    with pytest.raises(OSError, match="could not write .*step-00000002"):
        train(config, FailsHalfWay())
    assert list((tmp_path / "run" / "weights").iterdir()) == []
    train(toy_config(tmp_path / "run", max_steps=2, checkpoint_every=2, ema=False, resume="latest"))
    assert set(final_head(tmp_path / "run")) == {"weight", "bias"}


@pytest.mark.parametrize("name", ["paper", "finetune", "tiny_cpu_smoke"])
def test_shipped_configs_parse(name):
    config = load_config(ROOT / "training" / "configs" / f"{name}.yaml")
    assert config.recipe == "cococo" and config.options["frames"] in (4, 16)
    if name == "paper":  # the paper: effective batch 256 on 8 GPUs, AdamW 1e-4 constant, 1 epoch, 16x256x384
        assert config.train_batch_size * 8 * config.gradient_accumulation_steps == 256
        assert (config.learning_rate, config.lr_scheduler, config.max_epochs) == (1e-4, "constant", 1)
        assert (config.options["height"], config.options["width"]) == (256, 384)
