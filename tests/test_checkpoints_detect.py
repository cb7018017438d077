"""Checkpoint identification from key names / shapes / metadata."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import tiny_models
from cococo_core.checkpoints.detect import detect_checkpoint, detect_state, require_sd1
from cococo_core.checkpoints.safe_load import CheckpointError


def test_sd1_inpainting_single_file():
    info = detect_checkpoint(tiny_models.ldm_file())
    assert (info.family, info.layout, info.unet_in_channels, info.cross_attention_dim) == ("sd1", "ldm", 9, 32)
    assert info.is_inpainting and info.has_vae and info.has_text_encoder and not info.has_ema
    assert info.prediction == "epsilon" and "assumed" in info.prediction_source
    require_sd1(info)
    assert "9 input channels (inpainting)" in info.describe()


def test_sd1_text_to_image_refused_where_9_needed():
    info = detect_checkpoint(tiny_models.ldm_file(in_channels=4))
    assert info.family == "sd1" and info.unet_in_channels == 4 and not info.is_inpainting
    with pytest.raises(CheckpointError, match="text-to-image.*9-channel.*sd-v1-5-inpainting.*personalization"):
        require_sd1(info)
    require_sd1(info, in_channels=None)
    require_sd1(info, in_channels=(4, 9))


@pytest.mark.parametrize("make,family,found", [
    (tiny_models.sd2_file, "sd2", "OpenCLIP"),
    (tiny_models.sdxl_file, "sdxl", "conditioner.embedders"),
])
def test_sd2_and_sdxl_refused_with_what_was_found(make, family, found):
    info = detect_checkpoint(make())
    assert info.family == family
    with pytest.raises(CheckpointError, match=f"{found}.*SD-1.5 inpainting"):
        require_sd1(info, in_channels=None)


def test_width_alone_identifies_family():
    base = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert detect_state({**base, key: (320, 768)}).family == "sd1"
    assert detect_state({**base, key: (320, 1024)}).family == "sd2"
    assert detect_state({**base, key: (320, 2048)}).family == "sdxl"


def test_not_a_stable_diffusion_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.lora_up.weight": torch.zeros(2, 2)}, str(path))
    info = detect_checkpoint(path)
    assert info.family == "unknown" and not info.has_unet
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint.*lora_unet_down"):
        require_sd1(info, in_channels=None)


def test_v_prediction_markers(tmp_path):
    assert detect_checkpoint(tiny_models.ldm_file(v_pred=True)).prediction == "v_prediction"
    shapes = {"model.diffusion_model.input_blocks.0.0.weight": (32, 9, 3, 3)}
    info = detect_state(shapes, metadata={"modelspec.predict_key": "v"})
    assert info.prediction == "v_prediction" and "modelspec.predict_key" in info.prediction_source
    assert detect_state(shapes, metadata={"modelspec.predict_key": "epsilon"}).prediction == "epsilon"
    assert detect_state({**shapes, "parameterization": (0,)}).prediction == "v_prediction"


def test_ema_detected_and_reported():
    info = detect_checkpoint(tiny_models.ldm_file(ema=True))
    assert info.has_ema and info.ema_complete and "EMA" in info.describe()
    assert any("non-EMA weights are used" in note for note in info.notes)


def test_no_baked_vae():
    state = {k: v for k, v in tiny_models.ldm_state().items() if not k.startswith("first_stage_model.")}
    info = detect_state(state)
    assert info.family == "sd1" and not info.has_vae and "no VAE" in info.describe()


def test_diffusers_folder(tmp_path):
    info = detect_checkpoint(tiny_models.sd_folder())
    assert (info.family, info.layout, info.unet_in_channels) == ("sd1", "diffusers", 9)
    assert info.has_tokenizer and info.prediction_source == "scheduler/scheduler_config.json"
    folder = tmp_path / "copy"
    shutil.copytree(tiny_models.sd_folder(), folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 1024}))
    info = detect_checkpoint(folder)
    assert info.prediction == "v_prediction" and info.family == "sd2"
