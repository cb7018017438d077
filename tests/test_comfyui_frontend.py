"""Every shipped UI workflow as a user sees it in the real ComfyUI frontend (headless Chromium, one browser for
all): no two nodes overlap, every widget label is drawn in full, every node is inside the view the workflow
opens in; checked on opening and again after a run on tiny models (output nodes grow to show their results).
A workflow with a planted overlap and a planted over-long value must fail the same check.

Screenshots go to ``$COCOCO_ARTIFACTS/frontend/`` (``.ci/stage-10-comfyui.sh`` keeps them as CI artifacts),
else to a temporary folder. Needs Chromium (``$CHROMIUM`` or ``chromium`` on PATH): skipped without it, failed
under ``CI``."""
import copy
import json
import os

import comfyui_server

comfyui_server.require()

import pytest  # noqa: E402

import comfyui_frontend as frontend  # noqa: E402

if frontend.chromium() is None:
    reason = "no Chromium (install Debian's chromium package or set CHROMIUM)"
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the real-frontend check but found {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

ROOT = comfyui_server.ROOT
WORKFLOWS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "workflows").glob("*.json"))}
# runs on the tiny models: one step; random-weight detectors keep every box; a short LLaVA reply
FAST = {"CoCoCoSampler": {"steps": 1}, "CoCoCoLGVIRemove": {"steps": 1},
        "CoCoCoLGVIChat": {"steps": 1, "max_new_tokens": 6},
        "CoCoCoMaskFromText": {"box_threshold": 0.0, "detection_size": 256},
        "CoCoCoTrackMasks": {"box_threshold": 0.0, "detection_size": 256, "max_objects": 2}}
# the native workflows need full-size CLIP/VAE checkpoints (tests/test_comfyui_native_server.py): opened only
RUNS = {name: FAST for name in WORKFLOWS if not name.startswith("cococo_native_")}
PLANTED = "planted_overlap_and_long_value"
RELEASE = "release_models"
# CoCoCo Release Models on its own (no shipped workflow has it): its status text box and label after a run
RELEASE_WORKFLOW = {
    "last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "version": 0.4,
    "extra": {"ds": {"scale": 1.0, "offset": [100, 100]}},
    "nodes": [{"id": 1, "type": "CoCoCoReleaseModels", "pos": [200, 100], "size": [340, 200], "flags": {}, "order": 0,
               "mode": 0, "inputs": [{"name": "after", "type": "*", "link": None}], "outputs": [],
               "properties": {}, "widgets_values": []}],
}
RUNS[RELEASE] = {}


def planted_workflow() -> dict:
    """The drawn-mask workflow with the sampler moved onto the model loader and an over-long combo value."""
    workflow = copy.deepcopy(WORKFLOWS["cococo_inpaint_drawn_mask"])
    by_type = {node["type"]: node for node in workflow["nodes"]}
    loader, sampler = by_type["CoCoCoModelLoader"], by_type["CoCoCoSampler"]
    sampler["pos"] = [loader["pos"][0] + 40, loader["pos"][1] + 40]
    loader["widgets_values"][0] = "diffusers/" + "a-very-long-model-folder-name-" * 4
    return workflow


@pytest.fixture(scope="module")
def found(comfyui, tmp_path_factory):
    import test_comfyui_workflows

    test_comfyui_workflows.install_tiny_models(comfyui.base)
    artifacts = os.environ.get("COCOCO_ARTIFACTS")
    out = (frontend.Path(artifacts) if artifacts else tmp_path_factory.mktemp("shots")) / "frontend"
    return frontend.check_all(comfyui, {**WORKFLOWS, RELEASE: RELEASE_WORKFLOW, PLANTED: planted_workflow()}, out, RUNS)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_reads_well_when_opened(found, name):
    listed = found[name]["problems"]
    assert not listed, "\n".join(listed)


@pytest.mark.parametrize("name", RUNS)
def test_workflow_reads_well_after_a_run(found, name):
    listed = found[f"{name} after a run"]["problems"]
    assert not listed, "\n".join(listed)


def _status(found, name: str, node_type: str) -> str:
    return next(node["status"] for node in found[name]["view"]["nodes"] if node["type"] == node_type)


def test_results_show_on_the_nodes_after_a_run(found):
    """web/cococo_status_text.js: the metrics table and the saved file's folder, in the node's text box."""
    assert _status(found, "cococo_inpaint_drawn_mask", "CoCoCoVideoMetrics") == ""  # an empty box before a run
    table = _status(found, "cococo_inpaint_drawn_mask after a run", "CoCoCoVideoMetrics")
    assert "PSNR" in table and "SSIM" in table, table
    assert _status(found, f"{RELEASE} after a run", "CoCoCoReleaseModels").startswith("Released ")
    assert not found[f"{RELEASE} after a run"]["problems"]
    saved = _status(found, "cococo_dreambooth_checkpoint after a run", "CoCoCoSaveCheckpoint")
    assert saved.startswith("Saved checkpoints/cococo_dreambooth_inpainting_") and "in the output folder (" in saved


def test_a_planted_overlap_and_a_hidden_label_fail_the_check(found):
    listed = found[PLANTED]["problems"]
    assert any("'CoCoCo Video Inpaint'" in p and "overlaps" in p and "Model" in p for p in listed), listed
    assert any("the label 'base_model' is not drawn in full" in p for p in listed), listed
