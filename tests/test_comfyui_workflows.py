"""Every shipped API workflow, as shipped except model/file names and step counts, executed by the real ComfyUI
server on tiny models; both base kinds (a single-file LDM checkpoint read with ComfyUI's own comfy/sd1_tokenizer,
and a diffusers folder); progress per step, Cancel, and *Free model and node cache*; the validation messages and
combo lists the server shows."""
import json

import comfyui_server

comfyui_server.require()

import imageio.v3 as iio  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import test_workflows as tw  # noqa: E402  (the tiny models and input files the workflows name)
import tiny_models  # noqa: E402

ROOT = comfyui_server.ROOT
# the native workflows need checkpoints ComfyUI's own loader recognises: tests/test_comfyui_native_server.py
API_FILES = sorted(p for p in (ROOT / "workflows" / "api").glob("*.json") if not p.stem.startswith("cococo_native_"))
CLIP_VOCAB = 49408  # ComfyUI's sd1_tokenizer (openai/clip-vit-large-patch14) ids


def _single_file_base_for_comfyuis_tokenizer(path):
    """The tiny inpainting checkpoint with a token table as long as real CLIP's, so the ids ComfyUI's own
    sd1_tokenizer produces index it (the loader reads the vocabulary size from this table's shape)."""
    state = tiny_models.ldm_state()
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    state[key] = 0.02 * torch.randn(CLIP_VOCAB, state[key].shape[1], generator=torch.Generator().manual_seed(0))
    tiny_models.write_ldm_file(path, state)


def install_tiny_models(base) -> None:
    """Every tiny model and input file the shipped workflows name, under a ComfyUI base directory."""
    tw.install_test_files(base)
    _single_file_base_for_comfyuis_tokenizer(base / "models" / "checkpoints" / "sd-v1-5-inpainting.safetensors")
    tw._install_mask_models(base)
    tw._install_personal_models(base)
    tw._install_lgvi_models(base)


@pytest.fixture(scope="module")
def server(comfyui):
    install_tiny_models(comfyui.base)
    return comfyui


def _api(name: str, steps: int = 1) -> dict:
    prompt = json.loads((ROOT / "workflows" / "api" / name).read_text())
    for node in prompt.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
        if node["class_type"] == "CoCoCoMaskFromText":  # random weights: keep every box so masks are not empty
            node["inputs"].update(box_threshold=0.0, detection_size=256)
        if node["class_type"] == "CoCoCoTrackMasks":
            node["inputs"].update(box_threshold=0.0, detection_size=256, max_objects=2)
        if node["class_type"] == "CoCoCoLGVIChat":
            node["inputs"]["max_new_tokens"] = 6
    return prompt


def _saved_videos(server, entry) -> list:
    """Every video the SaveVideo nodes of a finished prompt wrote, decoded."""
    videos = []
    for output in entry["outputs"].values():
        for item in output.get("images", []):
            if item["filename"].endswith(".mp4"):
                videos.append(iio.imread(server.base / item["type"] / item["subfolder"] / item["filename"], index=None))
    return videos


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_shipped_workflow_runs_and_writes_a_decodable_video(server, api_file):
    entry = server.run(_api(api_file.name, steps=2))
    videos = _saved_videos(server, entry)
    assert videos, f"no video in {entry['outputs']}"
    for frames in videos:
        assert frames.shape == (tw.FRAMES, tw.SIZE, tw.SIZE, 3)
    sampler = next(node_id for node_id, node in _api(api_file.name).items() if "steps" in node["inputs"])
    progress = [m["data"] for m in server.messages(entry["prompt_id"], "progress") if m["data"]["node"] == sampler]
    total = progress[-1]["max"] if progress else 0
    # one message per denoising step (LGVI-I Chat counts its LLaVA reply as one more step)
    assert [p["value"] for p in progress] == list(range(1, total + 1)) and total in (2, 3), progress


@pytest.mark.parametrize("base_model", ["checkpoints/sd-v1-5-inpainting.safetensors",
                                        "diffusers/stable-diffusion-v1-5-inpainting"])
def test_both_base_kinds(server, base_model):
    prompt = _api("cococo_inpaint_drawn_mask.json")
    prompt["4"]["inputs"]["base_model"] = base_model
    entry = server.run(prompt)
    assert [frames.shape for frames in _saved_videos(server, entry)] == [(tw.FRAMES, tw.SIZE, tw.SIZE, 3)]
    metrics = next(node_id for node_id, node in prompt.items() if node["class_type"] == "CoCoCoVideoMetrics")
    table = entry["outputs"][metrics]["text"][0]  # the metrics node's table, shown on the node
    assert "PSNR" in table and "BP" in table, table


def test_single_file_base_uses_comfyuis_own_tokenizer(server):
    """ComfyUI's ``comfy`` is a namespace package: the tokenizer must be found through its search path."""
    prompt = _api("cococo_text_mask_inpaint.json")
    assert prompt["7"]["inputs"]["base_model"].startswith("checkpoints/")
    assert not (server.base / "models" / "cococo" / "clip_tokenizer").exists()  # no other tokenizer to fall back on
    server.run(prompt)


def test_cancel_stops_within_a_step_and_the_next_run_succeeds(server):
    prompt = _api("cococo_inpaint_drawn_mask.json", steps=200)
    prompt_id = server.queue(prompt)
    server.wait_for(lambda: server.messages(prompt_id, "progress"), what="the first sampling step")
    seen = max(m["data"]["value"] for m in server.messages(prompt_id, "progress"))
    server.interrupt()
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert server.messages(prompt_id, "execution_interrupted")
    done = [m["data"]["value"] for m in server.messages(prompt_id, "progress") if m["data"]["node"] == "5"]
    # the step running when Cancel arrived may finish (and messages already on their way arrive): no more
    assert max(done) <= seen + 3, f"sampling went on after Cancel at step {seen}: {done}"
    server.run(_api("cococo_inpaint_drawn_mask.json"))


def test_free_model_and_node_cache_releases_the_packs_models(server):
    server.run(_api("cococo_inpaint_drawn_mask.json"))  # the model loader fills the pack's cache
    released_before = server.log().count("cached CoCoCo model(s)")
    server.free()
    server.wait_for(lambda: server.log().count("cached CoCoCo model(s)") > released_before, timeout=60,
                    what="the pack's cache to be released")
    server.run(_api("cococo_inpaint_drawn_mask.json"))  # loads again


def _node_errors(server, prompt) -> dict:
    with pytest.raises(comfyui_server.PromptFailed) as refused:
        server.queue(prompt)
    return json.loads(str(refused.value).split(": ", 1)[1])["node_errors"]


def test_a_missing_model_is_reported_once_on_its_own_input(server):
    prompt = _api("cococo_inpaint_drawn_mask.json")
    prompt["4"]["inputs"]["motion_model"] = "not_there.safetensors"
    errors = _node_errors(server, prompt)["4"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["motion_model"]
    assert "github.com/zibojia/COCOCO" in errors[0]["details"]
    prompt = _api("lgvi_i_chat_removal.json")
    prompt["3"]["inputs"]["llava_model"] = "not_there"
    errors = _node_errors(server, prompt)["3"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["llava_model"]


def test_combo_lists_offer_only_models_of_the_right_kind(server):
    info = server.get("/object_info")
    bases = info["CoCoCoModelLoader"]["input"]["required"]["base_model"][0]
    assert {"checkpoints/sd-v1-5-inpainting.safetensors", "diffusers/stable-diffusion-v1-5-inpainting"} <= set(bases)
    four_channel = {"checkpoints/v1-5-pruned-emaonly.safetensors", "checkpoints/dreambooth_sd15.safetensors"}
    assert not four_channel & set(bases), bases
    personal = info["CoCoCoPersonalize"]["input"]["required"]["personal_model"][0]
    assert four_channel <= set(personal)  # personalization sources are 4-channel models: still offered there
    lgvi_i = info["CoCoCoLGVIILoader"]["input"]["required"]
    assert lgvi_i["lgvi_i_model"][0] == ["lgvi-i"]
    assert lgvi_i["llava_model"][0] == ["llava-1.5-7b-hf"]
    assert "llava-1.5-7b-hf" not in info["CoCoCoLGVILoader"]["input"]["required"]["lgvi_model"][0]
