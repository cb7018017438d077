"""Streaming access (one tensor at a time, diffusers names) to folders, sharded folders and single files."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import tiny_models
from cococo_core.checkpoints.base import load_sd_state
from cococo_core.checkpoints.safe_load import CheckpointError
from cococo_core.checkpoints.stream import open_sd

MODELS = ("unet", "vae", "text_encoder")


def _expected():
    return {c: {k.removeprefix("text_model."): v for k, v in s.items()} for c, s in tiny_models.component_state().items()}


@pytest.mark.parametrize("source", ["folder-safetensors", "folder-bin", "ldm-safetensors", "ldm-ckpt"])
def test_stream_gives_diffusers_names_and_tensors(source):
    kind, fmt = source.split("-")
    path = tiny_models.sd_folder(weights=fmt) if kind == "folder" else tiny_models.ldm_file(fmt)
    expected = _expected()
    with open_sd(path) as stream:
        assert stream.components == MODELS and stream.info.family == "sd1"
        for component in MODELS:
            assert sorted(stream.keys(component)) == sorted(expected[component])
            for key in stream.keys(component):
                tensor = stream.get(component, key)
                assert stream.shape(component, key) == tuple(tensor.shape) and stream.dtype(component, key) == tensor.dtype
                assert torch.equal(tensor, expected[component][key]), (component, key)
        if kind == "ldm":
            assert stream.source_key("vae", "decoder.mid_block.attentions.0.to_q.weight") == (
                "first_stage_model.decoder.mid.attn_1.q.weight")
            assert stream.shape("vae", "decoder.mid_block.attentions.0.to_q.weight") == (32, 32)
        with pytest.raises(KeyError, match="no unet tensor named 'nope'"):
            stream.get("unet", "nope")


def test_sharded_folder(tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_models.sd_folder(), folder)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    state = tiny_models.component_state()["unet"]
    keys = sorted(state)
    halves = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: state[k].contiguous() for k in part}, str(unet / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_sd_state(folder, components=("unet",))
    assert set(loaded["unet"]) == set(state) and all(torch.equal(loaded["unet"][k], v) for k, v in state.items())
    with open_sd(folder, components=("unet",)) as stream:
        assert stream.components == ("unet",) and len(stream.keys("unet")) == len(state)
    weight_map[keys[0]] = "../escape.safetensors"
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="plain file names"):
        load_sd_state(folder, components=("unet",))


def test_stream_ema_and_refusals():
    with open_sd(tiny_models.ldm_file(ema=True), use_ema=True, components=("unet",)) as stream:
        assert stream.used_ema and stream.source_key("unet", "conv_in.weight") == "model_ema.diffusion_modelinput_blocks00weight"
        assert torch.allclose(stream.get("unet", "conv_in.weight"), _expected()["unet"]["conv_in.weight"] + 0.01)
    with open_sd(tiny_models.ldm_file(ema=True)) as stream:
        assert not stream.used_ema and stream.source_key("unet", "conv_in.weight") == "model.diffusion_model.input_blocks.0.0.weight"
    with pytest.raises(CheckpointError, match="SDXL"):
        open_sd(tiny_models.sdxl_file())
    with pytest.raises(CheckpointError, match="text-to-image"):
        open_sd(tiny_models.ldm_file(in_channels=4), require_in_channels=9)
    with open_sd(tiny_models.ldm_file(in_channels=4)) as stream:
        assert stream.shape("unet", "conv_in.weight") == (32, 4, 3, 3)


def test_file_without_vae_has_no_vae_component(tmp_path):
    state = {k: v for k, v in tiny_models.ldm_state().items() if not k.startswith("first_stage_model.")}
    path = tmp_path / "novae.safetensors"
    save_file(state, str(path))
    with open_sd(path) as stream:
        assert stream.components == ("unet", "text_encoder") and stream.keys("vae") == []
