"""Loading official-layout LGVI U-Net folders: strict key check, clear reports, config quirks."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

import test_lgvi_tiny as tiny
from cococo_core.lgvi.unet_config import LGVIUNetConfig
from cococo_core.lgvi.unet_loading import CheckpointKeyError, load_lgvi_unet


@pytest.mark.parametrize("in_channels", [8, 4])
def test_official_folder_loads_strictly_with_every_tensor(in_channels, caplog):
    folder = tiny.lgvi_folder(in_channels)
    with caplog.at_level(logging.DEBUG, logger="cococo_core.lgvi.unet_config"):
        model = load_lgvi_unet(folder)
    # the published config's st_attn is known: ignored and logged at debug level only
    st_attn = [r for r in caplog.records if "st_attn" in r.getMessage()]
    assert st_attn and all(r.levelno == logging.DEBUG for r in st_attn)
    expected = tiny.lgvi_unet_state(in_channels)
    state = model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert (model.condition_conv_in is None) == (in_channels == 8)


def _copy_with(tmp_path, mutate, config=None):
    folder = tmp_path / "ckpt"
    state = dict(tiny.lgvi_unet_state(8))
    mutate(state)
    tiny.write_unet(folder, state, config or tiny.official_unet_config(8))
    return folder


def test_missing_and_unexpected_keys_are_named(tmp_path):
    def mutate(state):
        del state["down_blocks.1.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"]
        state["down_blocks.0.attentions.0.transformer_blocks.0.cross_frame_attn.to_q.weight"] = torch.zeros(2, 2)

    folder = _copy_with(tmp_path, mutate)
    with pytest.raises(CheckpointKeyError) as error:
        load_lgvi_unet(folder)
    message = str(error.value)
    assert "1 missing (down_blocks.*.attentions.*.transformer_blocks.*.attn_temp.to_q.weight)" in message
    assert "1 unexpected (down_blocks.*.attentions.*.transformer_blocks.*.cross_frame_attn.to_q.weight)" in message
    assert isinstance(error.value, ValueError)  # the CLI prints it as a one-line error


def test_non_strict_loading_keeps_what_matches(tmp_path, caplog):
    key = "mid_block.attentions.0.transformer_blocks.0.attn_temp.to_k.weight"
    folder = _copy_with(tmp_path, lambda state: state.pop(key))
    with caplog.at_level(logging.WARNING):
        model = load_lgvi_unet(folder, strict=False)
    assert "1 missing" in caplog.text
    expected = tiny.lgvi_unet_state(8)
    state = model.state_dict()
    assert torch.equal(state["conv_in.weight"], expected["conv_in.weight"])
    assert not torch.equal(state[key], expected[key])


def test_shape_mismatch_is_reported(tmp_path):
    folder = _copy_with(tmp_path, lambda state: state.update({"conv_out.weight": torch.zeros(4, 32, 1, 1)}))
    with pytest.raises(CheckpointKeyError, match=r"conv_out.weight: file \(4, 32, 1, 1\) vs model \(4, 32, 3, 3\)"):
        load_lgvi_unet(folder)


def test_config_quirks_follow_the_weights(tmp_path, caplog):
    config = tiny.official_unet_config(8)
    del config["cross_attention_dim"]  # code default 1280, weights are 32-d here (768 in the real files)
    config["in_channels"] = 4  # wrong variant in the JSON
    config["mask_decoder_type"] = None
    folder = _copy_with(tmp_path, lambda state: None, config)
    with caplog.at_level(logging.WARNING):
        model = load_lgvi_unet(folder)
    assert model.config.cross_attention_dim == 32 and model.config.in_channels == 8
    assert model.mask_decoder is not None
    assert "in_channels=4 but the weights imply 8" in caplog.text


def test_pickled_bin_weights_load_weights_only(tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(tiny.lgvi_folder(8) / "unet", folder / "unet")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tiny.lgvi_unet_state(8), folder / "unet" / "diffusion_pytorch_model.bin")
    model = load_lgvi_unet(folder / "unet")  # the unet folder itself is accepted too
    assert torch.equal(model.state_dict()["conv_in.weight"], tiny.lgvi_unet_state(8)["conv_in.weight"])


def test_unsupported_features_and_missing_folders_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="lan_cross_attn"):
        LGVIUNetConfig.from_dict({**tiny.official_unet_config(8), "lan_cross_attn": True})
    with pytest.raises(ValueError, match="in_channels must be 8"):
        LGVIUNetConfig.from_dict({**tiny.official_unet_config(8), "in_channels": 9})
    with pytest.raises(FileNotFoundError, match="jianzongwu/lgvi"):
        load_lgvi_unet(tmp_path)
    assert json.loads((tiny.lgvi_folder(8) / "unet" / "config.json").read_text())["st_attn"] is False


def test_loading_and_casting_print_no_warnings(capfd, caplog):
    """No 'accelerate was not found', no diffusers float32-modules warning, no st_attn warning."""
    from cococo_core.lgvi.pipeline import LGVIPipeline

    with caplog.at_level(logging.WARNING):
        pipe = LGVIPipeline.from_pretrained(tiny.lgvi_folder(8), device="cpu", dtype=torch.float32)
        pipe.to("cpu", torch.float32)
    err = capfd.readouterr().err
    assert "float32" not in err and "accelerate" not in err and "st_attn" not in err, err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert pipe.vae.dtype == torch.float32
