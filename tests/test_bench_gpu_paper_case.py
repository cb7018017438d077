"""``bench/gpu_paper_case.py`` runs end to end on CPU with tiny models (the full case needs a GPU)."""
import json

import pytest
import torch

from bench import gpu_paper_case


def test_tiny_paper_case_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "case.json"
    assert gpu_paper_case.main(["--tiny", "--device", "cpu", "--dtype", "fp16", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["finite"] and result["tiny"] and result["dtype"] == "fp16"
    assert (result["frames"], result["size"], result["steps"], result["guidance"]) == (4, 64, 2, 14.0)
    assert len(result["step_seconds"]) == 2  # one callback per denoising step
    assert list(result["stages"]) == ["vae encode", "warm-up (1 step, not counted)", "denoise", "vae decode"]
    assert abs(result["it_per_s"] - 2 / result["stages"]["denoise"]) < 1e-9
    assert result["total_seconds"] < sum(result["stages"].values())  # the warm-up is not counted
    printed = capsys.readouterr().out
    assert "it/s" in printed and "vae decode" in printed


def test_tiny_budget_mode_picks_the_auto_plan_per_limit(tmp_path, capsys):
    """CPU: the plans and the three stages run under each limit; the limits themselves (set_per_process_memory_
    fraction) and the peaks need CUDA, so they are reported as null here (the CUDA test below measures them)."""
    from bench import _models
    from cococo_core.pipeline import memory_plan

    weights = sum(p.numel() * p.element_size() for m in (_models.video_unet(tiny=True), _models.vae(tiny=True))
                  for p in m.parameters())
    whole = memory_plan.unet_working_bytes(64, 64, 4, torch.float32, batch=2)
    limits = [(weights + 1000) / 1e9, (weights + whole) / 1e9, 24.0]  # nothing fits / just under the whole call / roomy
    out = tmp_path / "budget.json"
    assert gpu_paper_case.main(["--budget", "--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "1",
                                "--out", str(out), "--limits", *map(str, limits)]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "budget" and not result["measured"]
    assert (result["frames"], result["size"], result["steps"]) == (4, 64, 1)
    plans = [(case["frame_chunk"], case["split_cfg"], case["plan_fits"]) for case in result["cases"]]
    for case, limit in zip(result["cases"], limits):
        expected = memory_plan.plan_unet_memory(int(limit * 1e9) - weights, 64, 64, 4, torch.float32)
        assert (case["frame_chunk"], case["split_cfg"], case["plan_fits"]) == (
            expected.frame_chunk, expected.split_cfg, expected.fits)
        assert case["finite"] and case["out_of_memory"] is None
        assert list(case["seconds"]) == ["vae encode", "denoise", "vae decode"]
        assert set(case["peaks_gib"].values()) == {None}
    assert plans[0] == (1, True, False) and plans[2] == (None, False, True)
    assert plans[1][2] and plans[1][:2] != (None, False)  # fits only by chunking or splitting
    assert "limits and peaks need CUDA" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: set_per_process_memory_fraction and peak "
                    "memory need CUDA; run `python bench/gpu_paper_case.py --budget` on a GPU machine")
def test_tiny_budget_mode_measures_peaks_on_cuda(tmp_path):
    out = tmp_path / "budget.json"
    assert gpu_paper_case.main(["--budget", "--tiny", "--device", "cuda", "--limits", "8", "--out", str(out)]) == 0
    case = json.loads(out.read_text())["cases"][0]
    assert all(peak is not None and peak < 8e9 / 2**30 for peak in case["peaks_gib"].values())
