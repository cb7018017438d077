"""Both native workflows (workflows/api/cococo_native_*.json) run in the real ComfyUI server: ComfyUI's own
Load Checkpoint, LoRA Loader, CLIP Text Encode, KSampler and VAE Decode around the pack's native nodes.

ComfyUI's loader recognises an SD-1.5 checkpoint by its U-Net (320 base channels, 768-wide cross-attention) and
builds CLIP-L and the VAE from fixed full-size configs, so the test checkpoints are a shallow 320-channel U-Net
(one resnet per level) with a full-size random CLIP-L and VAE (~0.4 GB each in fp16, written once per session).
"""
import json

import comfyui_server

comfyui_server.require()

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = comfyui_server.ROOT
FRAMES, SIZE = 3, 64
NAMES = {"sd-v1-5-inpainting.safetensors": "native-sd15-inpainting.safetensors",
         "v1-5-pruned-emaonly.safetensors": "native-sd15.safetensors",
         "civitai_style_lora.safetensors": "native_lora.safetensors",
         "cococo_official": "native_motion.safetensors",
         "cococo_input.mp4": "native_input.mp4", "cococo_mask.png": "native_mask.png"}
UNET = dict(sample_size=8, out_channels=4, layers_per_block=1, block_out_channels=(320,) * 4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")


def write_checkpoint(path, in_channels: int, seed: int) -> None:
    """A single-file LDM checkpoint ComfyUI's Load Checkpoint detects as SD-1.5 (inpainting with 9 channels)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm

    torch.manual_seed(seed)
    parts = {"unet": UNet2DConditionModel(in_channels=in_channels, **UNET), "vae": AutoencoderKL(**VAE),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L))}
    state = diffusers_to_ldm({name: module.state_dict() for name, module in parts.items()})
    del parts
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(path))


def write_motion(path) -> None:
    """Motion weights for that U-Net's layout (13 modules of width 320, text width 768), non-identity."""
    from cococo_core.models import MotionModuleSet, ldm_motion_layout, save_motion_safetensors

    torch.manual_seed(1)
    motion = MotionModuleSet(ldm_motion_layout(320, (1, 1, 1, 1), 1), 768)
    with torch.no_grad():
        for name, param in motion.named_parameters():
            if "proj_out" in name:
                param.normal_(0, 0.02)
    save_motion_safetensors(motion.state_dict(), path, dtype=torch.float16)


def write_lora(path) -> None:
    """A kohya LoRA with a U-Net and a text-encoder layer."""
    g = torch.Generator().manual_seed(3)
    lora = {}
    for name, width in (("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320),
                        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768)):
        lora[f"{name}.lora_down.weight"] = 0.1 * torch.randn(4, width, generator=g)
        lora[f"{name}.lora_up.weight"] = 0.1 * torch.randn(width, 4, generator=g)
        lora[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(lora, str(path))


@pytest.fixture(scope="module")
def server(comfyui):
    models = comfyui.base / "models"
    for folder in ("checkpoints", "loras", "cococo"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    write_checkpoint(models / "checkpoints" / NAMES["sd-v1-5-inpainting.safetensors"], 9, 0)
    write_checkpoint(models / "checkpoints" / NAMES["v1-5-pruned-emaonly.safetensors"], 4, 1)
    write_motion(models / "cococo" / NAMES["cococo_official"])
    write_lora(models / "loras" / NAMES["civitai_style_lora.safetensors"])
    inputs = comfyui.base / "input"
    inputs.mkdir(exist_ok=True)
    video = (np.random.default_rng(0).random((FRAMES, SIZE, SIZE, 3)) * 255).astype(np.uint8)
    iio.imwrite(inputs / NAMES["cococo_input.mp4"], video, fps=8)
    rgba = np.full((SIZE, SIZE, 4), 255, np.uint8)
    rgba[16:40, 20:44, 3] = 0
    Image.fromarray(rgba).save(inputs / NAMES["cococo_mask.png"])
    return comfyui


def native_prompt(name: str, steps: int) -> dict:
    """The shipped API workflow with the test's file names and ``steps``."""
    prompt = json.loads((ROOT / "workflows" / "api" / name).read_text())
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if isinstance(value, str) and value in NAMES:
                node["inputs"][key] = NAMES[value]
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
    return prompt


def saved_video(server, entry):
    for output in entry["outputs"].values():
        for item in output.get("images", []):
            if item["filename"].endswith(".mp4"):
                return iio.imread(server.base / item["type"] / item["subfolder"] / item["filename"], index=None)
    raise AssertionError(f"no video in {entry['outputs']}")


@pytest.mark.parametrize("workflow", ["cococo_native_inpaint.json", "cococo_native_civitai_lora.json"])
def test_native_workflow_runs_in_the_real_server(server, workflow):
    entry = server.run(native_prompt(workflow, steps=2))
    assert saved_video(server, entry).shape == (FRAMES, SIZE, SIZE, 3)
    sampler = next(k for k, v in native_prompt(workflow, 2).items() if v["class_type"] == "KSampler")
    progress = [m["data"]["value"] for m in server.messages(entry["prompt_id"], "progress") if m["data"]["node"] == sampler]
    assert progress and progress[-1] == 2


def test_euler_sampler_and_a_four_channel_model_is_refused(server):
    prompt = native_prompt("cococo_native_inpaint.json", steps=2)
    prompt["9"]["inputs"].update(sampler_name="euler", scheduler="normal")
    assert saved_video(server, server.run(prompt)).shape == (FRAMES, SIZE, SIZE, 3)
    prompt["4"]["inputs"]["ckpt_name"] = NAMES["v1-5-pruned-emaonly.safetensors"]
    with pytest.raises(comfyui_server.PromptFailed, match="inpainting"):
        server.run(prompt)
