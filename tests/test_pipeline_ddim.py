"""Our stateless DDIM equals diffusers' DDIMScheduler with the official CoCoCo config, step for step."""
import pytest
import torch
from diffusers import DDIMScheduler

from cococo_core.pipeline.ddim import ddim_schedule, ddim_step


def official_scheduler(steps):
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                              steps_offset=1, clip_sample=False)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [1, 7, 30, 50, 1000])
def test_timesteps_match_diffusers(steps):
    assert list(ddim_schedule(steps).timesteps) == official_scheduler(steps).timesteps.tolist()


def test_fifty_steps_run_981_to_1():
    timesteps = ddim_schedule(50).timesteps
    assert timesteps[0] == 981 and timesteps[-1] == 1 and len(timesteps) == 50


@pytest.mark.parametrize("steps", [4, 50])
def test_every_step_matches_diffusers(steps):
    scheduler, schedule = official_scheduler(steps), ddim_schedule(steps)
    generator = torch.Generator().manual_seed(1)
    ours = theirs = torch.randn(1, 4, 3, 8, 8, generator=generator)
    for t in schedule.timesteps:
        eps = torch.randn(ours.shape, generator=generator)
        theirs = scheduler.step(eps, torch.tensor(t), theirs, eta=0.0).prev_sample
        ours = ddim_step(schedule, eps, t, ours)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_last_step_uses_alpha_one():
    schedule = ddim_schedule(50)
    alpha, alpha_prev = schedule.alphas(1)
    assert alpha_prev.item() == 1.0 and alpha.item() < 1.0


@pytest.mark.parametrize("bad", [0, 1001, 2.5, True])
def test_bad_step_counts(bad):
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddim_schedule(bad)
