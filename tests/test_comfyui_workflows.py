"""Every shipped API workflow, as shipped except model/file names and step counts, executed by the real
ComfyUI server on tiny models."""
import json

import comfyui_server

comfyui_server.require()

import pytest  # noqa: E402

import test_workflows  # noqa: E402  (the tiny models and input files the workflows name)

ROOT = comfyui_server.ROOT


@pytest.fixture(scope="module")
def server(comfyui):
    test_workflows.install_test_files(comfyui.base)
    return comfyui


def _api(name: str, steps: int = 1) -> dict:
    prompt = json.loads((ROOT / "workflows" / "api" / name).read_text())
    for node in prompt.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
    return prompt


def test_drawn_mask_workflow_runs(server):
    server.run(_api("cococo_inpaint_drawn_mask.json", steps=2))
    assert list((server.base / "output" / "video").glob("cococo_inpaint_*.mp4"))
