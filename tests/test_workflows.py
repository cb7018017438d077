"""Shipped workflows: UI files agree with their API twins and the node specs; every API workflow runs end to
end through the node classes on tiny models (core nodes replaced by the doubles in workflow_executor)."""
import json
import sys
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import nodes
import tiny_models
import tiny_trackers
import workflow_executor as wx
from nodes import comfy_adapter

ROOT = Path(__file__).resolve().parent.parent
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
CLASSES = {**wx.CORE_NODES, **nodes.NODE_CLASS_MAPPINGS}
FRAMES, SIZE = 3, 64


def _api(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / name).read_text())


def install_test_files(root: Path) -> None:
    """The CoCoCo tiny models and the input files the shipped workflows name, under ``root/models`` and
    ``root/input`` (a ComfyUI base directory)."""
    models = root / "models"
    shutil.copytree(tiny_models.sd_folder(), models / "diffusers" / "stable-diffusion-v1-5-inpainting")
    shutil.copytree(tiny_models.motion_folder(), models / "cococo" / "cococo_official")
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_models.ldm_file(), models / "checkpoints" / "sd-v1-5-inpainting.safetensors")
    inputs = root / "input"
    inputs.mkdir(exist_ok=True)
    generator = np.random.default_rng(0)
    video = (generator.random((FRAMES, SIZE, SIZE, 3)) * 255).astype(np.uint8)
    iio.imwrite(inputs / "cococo_input.mp4", video, fps=8)
    rgba = np.full((SIZE, SIZE, 4), 255, np.uint8)
    rgba[16:40, 20:44, 3] = 0  # painted in the mask editor: transparent = region to inpaint
    Image.fromarray(rgba).save(inputs / "cococo_mask.png")


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    """One fake ComfyUI install for the module, with the tiny models and input files every shipped workflow
    names (built once: loaded models are then reused across tests, as ComfyUI reuses them across runs)."""
    root = tmp_path_factory.mktemp("comfyui")
    with wx.fake_comfyui(root) as state:
        comfy_adapter.MODEL_CACHE.release()
        comfy_adapter.MODEL_CACHE.per_slot = 2  # both base layouts stay loaded across the tests
        comfy_adapter.register_model_folders()
        install_test_files(root)
        tokenizer = root / "comfy" / "sd1_tokenizer"  # the tiny CLIP's vocabulary stands in for ComfyUI's own
        shutil.rmtree(tokenizer)
        shutil.copytree(tiny_models.tokenizer_folder(), tokenizer)
        _install_mask_models(root)
        _install_personal_models(root)
        _install_lgvi_models(root)
        state["root"] = root
        yield state
        comfy_adapter.MODEL_CACHE.release()
        comfy_adapter.MODEL_CACHE.per_slot = 1


@pytest.fixture
def comfy_env(comfy_root):
    comfy_root["bars"].clear()
    comfy_root.update(interrupt_at=None, interrupted=False)
    return comfy_root


def _fast(prompt: dict, steps: int = 1) -> dict:
    """The same graph with 1 denoising step, so it runs in seconds on tiny models."""
    for node in prompt.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
    return prompt


def _saved(outputs: dict, node_id: str) -> np.ndarray:
    return np.load(outputs[node_id][1]["saved"][0])


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_api_and_node_specs(api_file, tmp_path):
    ui_file = ROOT / "workflows" / api_file.name
    assert ui_file.is_file(), f"{ui_file.name}: the UI-format twin of {api_file.name} is missing"
    ui, api = json.loads(ui_file.read_text()), json.loads(api_file.read_text())
    assert ui["version"] == 0.4
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max((link[0] for link in ui["links"]), default=0)
    assert len({n["id"] for n in ui["nodes"]}) == len(ui["nodes"])
    for link in ui["links"]:
        source = next(n for n in ui["nodes"] if n["id"] == link[1])
        assert source["outputs"][link[2]]["type"] == link[5]
        assert link[0] in source["outputs"][link[2]]["links"]
    for node in ui["nodes"]:
        assert node["type"] in CLASSES, f"unknown node type {node['type']}"
    with wx.fake_comfyui(tmp_path):
        assert wx.ui_to_api(ui, CLASSES) == api
        assert wx.api_to_ui(api, CLASSES) == ui, "regenerate with: python tests/workflow_executor.py"


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_ui_workflow_nodes_do_not_overlap_at_the_sizes_the_frontend_draws(api_file):
    ui = json.loads((ROOT / "workflows" / api_file.name).read_text())
    assert not wx.overlapping_nodes(ui)


def test_every_pack_node_appears_in_a_workflow():
    used = {node["class_type"] for f in API_FILES for node in json.loads(f.read_text()).values()}
    missing = set(nodes.NODE_CLASS_MAPPINGS) - used - {"CoCoCoReleaseModels", "CoCoCoConvertMotion"}
    assert not missing, f"nodes without an example workflow: {sorted(missing)}"


def test_drawn_mask_inpainting_workflow(comfy_env):
    prompt = _fast(_api("cococo_inpaint_drawn_mask.json"), steps=2)
    prompt["5"]["inputs"]["mask_dilate"] = 0
    outputs = wx.execute(prompt, CLASSES)
    frames = _saved(outputs, "7")
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    original = outputs["2"][0][0].numpy()
    hole = np.zeros((SIZE, SIZE), bool)
    hole[16:40, 20:44] = True
    assert np.abs(frames[:, hole] - original[:, hole]).mean() > 1e-3  # the hole was repainted
    far = np.ones((SIZE, SIZE), bool)
    far[4:52, 8:56] = False  # beyond the paste-back dilation and feathering
    np.testing.assert_array_equal(frames[:, far], original[:, far])
    bar = comfy_env["bars"][0]
    assert bar.updates == [1, 2] and bar.total == 2
    kind, picture, size = bar.previews[-1]  # a latent preview of the middle frame at every step
    assert kind == "JPEG" and picture.size == (SIZE // 8, SIZE // 8)


def test_single_file_base_and_model_reuse(comfy_env):
    loader = nodes.NODE_CLASS_MAPPINGS["CoCoCoModelLoader"]()
    first = loader.load("checkpoints/sd-v1-5-inpainting.safetensors", "cococo_official", "auto", False)[0]
    second = loader.load("checkpoints/sd-v1-5-inpainting.safetensors", "cococo_official", "auto", False)[0]
    assert first.pipeline is second.pipeline  # loaded once, kept across runs
    assert first.pipeline.tokenizer is not None  # ComfyUI's comfy/sd1_tokenizer was found for the single file


def test_cancel_during_sampling_raises_comfyui_interrupt(comfy_env):
    comfy_env["interrupt_at"] = 1
    with pytest.raises(wx.InterruptProcessingException):
        wx.execute(_fast(_api("cococo_inpaint_drawn_mask.json"), steps=3), CLASSES)
    assert comfy_env["bars"][-1].updates == [1]


def test_missing_model_is_reported_before_running(comfy_env):
    prompt = _api("cococo_inpaint_drawn_mask.json")
    prompt["4"]["inputs"]["motion_model"] = "not_there.safetensors"
    with pytest.raises(wx.PromptError) as error:
        wx.validate(prompt, CLASSES)
    assert "not_there.safetensors" in str(error.value) and "github.com/zibojia/COCOCO" in str(error.value)


def test_four_channel_base_is_not_offered_and_refused_if_it_slips_through(comfy_env):
    checkpoints = comfy_env["root"] / "models" / "checkpoints"
    shutil.copy(tiny_models.ldm_file(in_channels=4), checkpoints / "sd15.safetensors")
    shutil.copy(tiny_models.ldm_file("ckpt", in_channels=4), checkpoints / "sd15.ckpt")  # a pickle: not opened to list
    offered = nodes.NODE_CLASS_MAPPINGS["CoCoCoModelLoader"].INPUT_TYPES()["required"]["base_model"][0]
    assert "checkpoints/sd15.safetensors" not in offered and "checkpoints/sd-v1-5-inpainting.safetensors" in offered
    prompt = _fast(_api("cococo_inpaint_drawn_mask.json"))
    prompt["4"]["inputs"]["base_model"] = "checkpoints/sd15.ckpt"
    with pytest.raises(ValueError, match="4 input channels.*9-channel"):
        wx.execute(prompt, CLASSES)


# --- the other workflows: extra tiny models in the folders they name -----------------------------

def _install_mask_models(root: Path) -> None:
    from test_masks_tiny import write_dino_both, write_sam_both

    models = root / "models"
    dino_hf, _, _ = write_dino_both(models)
    sam_hf, _, _ = write_sam_both(models)
    shutil.move(str(dino_hf), models / "grounding-dino" / "grounding-dino-tiny")
    shutil.move(str(sam_hf), models / "sams" / "sam-vit-base")
    shutil.copytree(tiny_trackers.sam2_folder(), models / "sam2" / "sam2.1-hiera-tiny")


def _install_personal_models(root: Path) -> None:
    checkpoints = root / "models" / "checkpoints"
    tiny_models.write_ldm_file(checkpoints / "v1-5-pruned-emaonly.safetensors", tiny_models.ldm_state(in_channels=4))
    tiny_models.write_ldm_file(checkpoints / "dreambooth_sd15.safetensors", tiny_models.ldm_state(in_channels=4, seed=5))
    generator = torch.Generator().manual_seed(3)
    lora = {}
    for name, width in (("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32),
                        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 32)):
        lora[f"{name}.lora_down.weight"] = torch.randn(4, width, generator=generator)
        lora[f"{name}.lora_up.weight"] = torch.randn(width, 4, generator=generator)
        lora[f"{name}.alpha"] = torch.tensor(4.0)
    from safetensors.torch import save_file

    (root / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(lora, root / "models" / "loras" / "civitai_style_lora.safetensors")
    sdxl = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 640),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(640, 4)}
    save_file(sdxl, root / "models" / "loras" / "sdxl_lora.safetensors")


def _install_lgvi_models(root: Path) -> None:
    from test_lgvi_tiny import lgvi_folder, llava_hf_folder

    shutil.copytree(lgvi_folder(), root / "models" / "lgvi" / "lgvi")
    shutil.copytree(lgvi_folder(interactive=True), root / "models" / "lgvi" / "lgvi-i")
    shutil.copytree(llava_hf_folder(), root / "models" / "lgvi" / "llava-1.5-7b-hf")


def test_text_mask_inpainting_workflow(comfy_env):
    prompt = _fast(_api("cococo_text_mask_inpaint.json"))
    prompt["5"]["inputs"]["box_threshold"] = 0.0  # random weights: keep every box so the masks are not empty
    prompt["5"]["inputs"]["detection_size"] = 256
    outputs = wx.execute(prompt, CLASSES)
    mask, preview = outputs["5"][0]
    assert mask.shape == (FRAMES, SIZE, SIZE) and preview.shape == (FRAMES, SIZE, SIZE, 3)
    assert mask.max() > 0
    assert _saved(outputs, "6").shape == (FRAMES, SIZE, SIZE, 3)
    assert _saved(outputs, "10").shape == (FRAMES, SIZE, SIZE, 3)


def test_tracked_mask_inpainting_workflow(comfy_env):
    prompt = _fast(_api("cococo_tracked_mask_inpaint.json"))
    prompt["5"]["inputs"].update(box_threshold=0.0, detection_size=256, max_objects=2)  # random weights
    outputs = wx.execute(prompt, CLASSES)
    mask, object_masks, preview, ids = outputs["5"][0]
    assert ids == "1, 2"
    assert mask.shape == (FRAMES, SIZE, SIZE) and object_masks.shape == (2 * FRAMES, SIZE, SIZE)
    assert torch.equal(mask, torch.maximum(object_masks[:FRAMES], object_masks[FRAMES:]))
    assert preview.shape == (FRAMES, SIZE, SIZE, 3) and mask.max() > 0
    assert _saved(outputs, "10").shape == (FRAMES, SIZE, SIZE, 3)
    assert comfy_env["bars"], "no progress reported"


def test_tracker_node_needs_grounding_dino_for_text_with_sam2(comfy_env):
    prompt = _fast(_api("cococo_tracked_mask_inpaint.json"))
    del prompt["5"]["inputs"]["grounding_dino"]
    with pytest.raises(ValueError, match="does not read text: connect a GroundingDINO model"):
        wx.execute(prompt, CLASSES)


def test_lora_workflow_personalizes_a_copy(comfy_env):
    prompt = _fast(_api("cococo_civitai_lora.json"))
    outputs = wx.execute(prompt, CLASSES)
    loaded, personalized = outputs["4"][0][0], outputs["6"][0][0]
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    before = loaded.pipeline.unet.unet.state_dict()[key]
    after = personalized.pipeline.unet.unet.state_dict()[key]
    assert not torch.equal(before, after)  # the LoRA changed the copy ...
    reloaded = nodes.NODE_CLASS_MAPPINGS["CoCoCoModelLoader"]().load(**_api("cococo_civitai_lora.json")["4"]["inputs"])[0]
    assert torch.equal(reloaded.pipeline.unet.unet.state_dict()[key], before)  # ... never the cached original
    motion = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    shared = dict(personalized.pipeline.unet.unet.named_parameters())[motion]
    assert shared is dict(loaded.pipeline.unet.unet.named_parameters())[motion]  # unchanged, so not copied
    assert outputs["7"][1]["text"] == [outputs["6"][0][1]] and outputs["6"][0][1]
    assert _saved(outputs, "10").shape == (FRAMES, SIZE, SIZE, 3)


def test_sdxl_lora_is_refused_with_a_clear_message(comfy_env):
    prompt = _fast(_api("cococo_civitai_lora.json"))
    prompt["5"]["inputs"]["lora_name"] = "sdxl_lora.safetensors"
    with pytest.raises(ValueError, match="(?i)sdxl"):
        wx.execute(prompt, CLASSES)


def test_dreambooth_workflow_merges_and_saves(comfy_env):
    outputs = wx.execute(_fast(_api("cococo_dreambooth_checkpoint.json")), CLASSES)
    saved = sorted((comfy_env["root"] / "output" / "checkpoints").glob("cococo_dreambooth_inpainting_*.safetensors"))
    assert len(saved) == 1
    from safetensors import safe_open

    with safe_open(str(saved[0]), "pt") as merged:
        assert merged.get_tensor("model.diffusion_model.input_blocks.0.0.weight").shape[1] == 9
        assert "cococo.merge" in merged.metadata()
    assert _saved(outputs, "10").shape == (FRAMES, SIZE, SIZE, 3)


def test_lgvi_referring_removal_workflow(comfy_env):
    outputs = wx.execute(_fast(_api("lgvi_referring_removal.json")), CLASSES)
    frames, mask = outputs["4"][0]
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and mask.shape == (FRAMES, SIZE, SIZE)
    assert _saved(outputs, "8").shape == (FRAMES, SIZE, SIZE, 3)


def test_lgvi_i_chat_removal_workflow(comfy_env):
    prompt = _fast(_api("lgvi_i_chat_removal.json"))
    prompt["4"]["inputs"]["max_new_tokens"] = 6
    outputs = wx.execute(prompt, CLASSES)
    reply, phrase, frames, mask, conversation = outputs["4"][0]
    assert isinstance(reply, str) and isinstance(phrase, str)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and mask.shape == (FRAMES, SIZE, SIZE)
    assert outputs["5"][1]["text"] == [reply]
    assert conversation.conversation.turns[-1][1] == reply


def test_lgvi_i_follow_up_continues_the_conversation_without_changing_the_first(comfy_env):
    prompt = _fast(_api("lgvi_i_chat_removal.json"))
    prompt["4"]["inputs"]["max_new_tokens"] = 6
    follow_up = json.loads(json.dumps(prompt["4"]))
    follow_up["inputs"].update(request="what about the other bird?", conversation=["4", 4])
    prompt["40"] = follow_up
    outputs = wx.execute(prompt, CLASSES)
    first, second = outputs["4"][0][4], outputs["40"][0][4]
    assert len(first.conversation.turns) == 1  # the cached first turn is untouched by the follow-up
    assert len(second.conversation.turns) == 2
    assert second.conversation.turns[0] == first.conversation.turns[0]
    assert "what about the other bird?" in second.conversation.turns[1][0]


def test_converted_motion_weights_load_like_the_official_folder(comfy_env):
    node = nodes.NODE_CLASS_MAPPINGS["CoCoCoConvertMotion"]()
    with pytest.raises(ValueError):  # the tiny modules are not the SD-1.5 layout: the check says so
        node.convert("cococo_official", "fp32", True, "cococo/tiny_motion")
    node.convert("cococo_official", "fp32", False, "cococo/tiny_motion")
    written = comfy_env["root"] / "output" / "cococo" / "tiny_motion_00001_.safetensors"
    shutil.copy(written, comfy_env["root"] / "models" / "cococo" / "tiny_motion.safetensors")
    loader = nodes.NODE_CLASS_MAPPINGS["CoCoCoModelLoader"]()
    base = "diffusers/stable-diffusion-v1-5-inpainting"
    official = loader.load(base, "cococo_official", "fp32", False)[0].pipeline.unet.state_dict()
    converted = loader.load(base, "tiny_motion.safetensors", "fp32", False)[0].pipeline.unet.state_dict()
    assert official.keys() == converted.keys()
    assert all(torch.equal(official[k], converted[k]) for k in official)


def test_nodes_run_as_plain_python_without_comfyui(comfy_root, monkeypatch):
    for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils"):
        monkeypatch.delitem(sys.modules, name)
    comfy_adapter.set_models_dir(comfy_root["root"] / "models")
    try:
        assert not comfy_adapter.in_comfyui()
        model, = nodes.NODE_CLASS_MAPPINGS["CoCoCoModelLoader"]().load(
            "diffusers/stable-diffusion-v1-5-inpainting", "cococo_official", "auto", False)
        images = torch.rand(2, SIZE, SIZE, 3)
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 8:24, 8:24] = 1
        frames, = nodes.NODE_CLASS_MAPPINGS["CoCoCoSampler"]().sample(
            model, images, mask, "a swan", "", 1, 14.0, 0, 0, -1, 0, True, 8, 8, 0, 0)
        assert frames.shape == images.shape and frames.device.type == "cpu"
        torch.testing.assert_close(frames[:, 40:, 40:], images[:, 40:, 40:], rtol=0, atol=0)
    finally:
        comfy_adapter.set_models_dir(None)
