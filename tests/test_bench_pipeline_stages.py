"""``bench/bench_pipeline.py --stages`` times every stage of one pipeline call (tiny models here)."""
import json

from bench import bench_pipeline


def test_stage_breakdown_covers_every_stage_and_step(tmp_path, capsys):
    out = tmp_path / "stages.json"
    assert bench_pipeline.main(["--stages", "--tiny", "--size", "64", "--stage-frames", "3", "--steps", "3",
                                "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    stages = result["stages"]
    steps = [name for name in stages if name.startswith("step ")]
    assert len(steps) == 3
    assert list(stages)[:2] == ["text encode", "VAE encode"] and "VAE decode" in stages
    assert all(seconds > 0 for name, seconds in stages.items() if not name.startswith("other"))
    assert abs(sum(stages.values()) - result["total_seconds"]) < 1e-9
    assert "VAE decode" in capsys.readouterr().out
