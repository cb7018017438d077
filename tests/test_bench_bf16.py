"""``bench/bench_bf16.py``: the bf16 models carry the fp32 weights cast, and the script runs (tiny models)."""
import json

import torch

from bench import _models, bench_bf16


def test_cast_copy_holds_the_same_weights_in_bf16():
    unet = _models.video_unet(tiny=True)
    copy = bench_bf16.cast_copy(unet, lambda device: _models.video_unet(tiny=True, device=device), torch.bfloat16)
    ours, theirs = unet.state_dict(), copy.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(theirs[k], v.to(torch.bfloat16)) for k, v in ours.items())
    assert copy.dtype == torch.bfloat16


def test_rel_l2_is_the_relative_euclidean_distance():
    assert bench_bf16.rel_l2(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 5.0])) == (9 + 1) ** 0.5 / 5


def test_tiny_bf16_bench_runs(tmp_path):
    out = tmp_path / "bf16.json"
    assert bench_bf16.main(["--tiny", "--size", "64", "--quality-size", "64", "--frames", "2", "--steps", "2",
                            "--repeat", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["quality"]["finite"] and 0 < result["quality"]["latents_rel_l2"] < 1
    assert set(result["timing"]) == {"fp32", "bf16"}
