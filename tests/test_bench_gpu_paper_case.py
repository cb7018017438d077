"""``bench/gpu_paper_case.py`` runs end to end on CPU with tiny models (the full case needs a GPU)."""
import json

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
