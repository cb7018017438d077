"""The CoCoCo Video Metrics node in a stand-in ComfyUI: IMAGE/MASK in, the table and numbers out, CLIP from
``models/clip_vision/`` (a transformers folder or a vision-only single file)."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import tiny_models
import workflow_executor as wx
from nodes import comfy_adapter
from nodes.nodes_metrics import CoCoCoVideoMetrics


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui")
    with wx.fake_comfyui(root) as state:
        comfy_adapter.MODEL_CACHE.release()
        clip_vision = root / "models" / "clip_vision"
        shutil.copytree(tiny_models.clip_folder(), clip_vision / "clip-vit-large-patch14")
        shutil.copy(tiny_models.clip_file(text=False), clip_vision / "clip_vision_vit_l.safetensors")
        state["root"] = root
        yield state
        comfy_adapter.MODEL_CACHE.release()


def _images(seed: int, frames: int = 3, height: int = 40, width: int = 48) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((frames, height, width, 3), dtype=np.float32))


def test_lists_clip_models_and_reports_missing_ones(comfy):
    choices = CoCoCoVideoMetrics.INPUT_TYPES()["required"]["clip_model"][0]
    assert choices == ["none", "clip-vit-large-patch14", "clip_vision_vit_l.safetensors"]
    assert CoCoCoVideoMetrics.VALIDATE_INPUTS(clip_model="none") is True
    message = CoCoCoVideoMetrics.VALIDATE_INPUTS(clip_model="missing.safetensors")
    assert "clip_vision" in message and "clip-vit-large-patch14" in message
    assert CoCoCoVideoMetrics.VALIDATE_INPUTS(clip_model="../../etc/passwd") is not True


def test_identical_videos_and_the_bp_formula(comfy):
    original = _images(0)
    mask = torch.zeros(40, 48)
    mask[10:30, 10:30] = 1
    out = CoCoCoVideoMetrics().measure(original, original.clone(), mask, "", "none", "frame", "dis")
    table, cs, bp, tc, psnr, ssim, ewarp = out["result"]
    assert (bp, psnr) == (0.0, 100.0) and ssim == pytest.approx(1, abs=1e-9)
    assert math.isnan(cs) and math.isnan(tc) and math.isfinite(ewarp)
    assert out["ui"]["text"] == [table] and "PSNR" in table and "[flow: dis]" in table
    result = original.clone()
    result[:, :, :5] = 0  # outside the mask: BP = mean |difference| over the kept pixels, on [0, 255]
    keep = (mask == 0)[None, :, :, None].expand_as(original)
    expected = float(((original - result).abs() * 255)[keep].double().mean())
    assert CoCoCoVideoMetrics().measure(original, result, mask, "", "none", "frame", "none")["result"][2] == \
        pytest.approx(expected, rel=1e-6)


def test_clip_folder_gives_cs_and_tc_and_a_vision_file_tc_only(comfy):
    original, result = _images(1), _images(2)
    mask = torch.ones(3, 40, 48)
    full = CoCoCoVideoMetrics().measure(original, result, mask, "a cat", "clip-vit-large-patch14", "frame", "none")
    table, cs, bp, tc = full["result"][:4]
    assert math.isfinite(cs) and 0 <= cs <= 100 and -100 <= tc <= 100 and "CS" in table
    assert math.isnan(bp)  # the mask covers every pixel: nothing to compare
    vision = CoCoCoVideoMetrics().measure(original, result, mask, "a cat", "clip_vision_vit_l.safetensors", "frame",
                                          "none")
    assert math.isnan(vision["result"][1]) and vision["result"][3] == pytest.approx(tc, abs=1e-6)
    assert "no text tower" in vision["result"][0]


def test_shape_mismatches_are_clear_errors(comfy):
    with pytest.raises(ValueError, match="same shape"):
        CoCoCoVideoMetrics().measure(_images(0), _images(0, frames=2), torch.zeros(40, 48), "", "none", "frame", "none")
    with pytest.raises(ValueError, match="does not fit"):
        CoCoCoVideoMetrics().measure(_images(0), _images(1), torch.zeros(20, 48), "", "none", "frame", "none")


def test_conventions_combo_names_the_presets_and_reaches_the_metrics(comfy, monkeypatch):
    import cococo_core.metrics.suite as suite_module

    combo, options = CoCoCoVideoMetrics.INPUT_TYPES()["optional"]["conventions"]
    assert combo == ["pack", "paper"] and options["default"] == "pack"
    used = []
    evaluate = suite_module.MetricSuite.evaluate
    monkeypatch.setattr(suite_module.MetricSuite, "evaluate",
                        lambda self, *a, **k: used.append(self.conventions) or evaluate(self, *a, **k))
    original = _images(0)
    table = CoCoCoVideoMetrics().measure(original, original.clone(), torch.zeros(40, 48), "", "none", "frame", "none",
                                         conventions="paper")["result"][0]
    assert used[0].warp_occluded == "zero" and "conventions: paper" in table
    with pytest.raises(ValueError, match="conventions must be one of"):
        CoCoCoVideoMetrics().measure(original, original, torch.zeros(40, 48), "", "none", "frame", "none",
                                     conventions="other")

