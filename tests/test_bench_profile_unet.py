"""``bench/profile_unet.py`` runs on the tiny U-Net, and what it reports is what ran."""
import json

from bench import profile_unet


def test_tiny_profile_reports_the_sdpa_kernel_and_the_motion_share(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert profile_unet.main(["--tiny", "--top", "5", "--out", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    # 16 spatial transformers x 2 attentions + 21 motion modules x 4 attentions, one batched CFG call
    assert sum(case["sdpa_kernels"].values()) == 16 * 2 + 21 * 4
    assert 0 < case["motion_modules_ms"] < case["step_ms"]
    assert len(case["by_self_time"]) == 5 and len(case["by_self_memory"]) == 5
    times = [row["self_cpu_ms"] for row in case["by_self_time"]]
    assert times == sorted(times, reverse=True)
    assert "by self CPU time" in capsys.readouterr().out
