"""The CoCoCo video U-Net on the tiny SD-inpainting model: placement of the 21 motion modules, loading of the
official motion files and the converted file, both base formats, errors."""
import copy
import logging
import re
import shutil

import pytest
import torch

import tiny_models
from cococo_core.checkpoints.safe_load import CheckpointError
from cococo_core.models import (
    MotionWeightsError,
    VideoUNet,
    load_video_unet,
    read_motion_weights,
    video_unet_from_unet2d,
)

FRAMES = 3


def fresh_unet(in_channels=9):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{**tiny_models.TINY_UNET_CONFIG, "in_channels": in_channels})
    unet.load_state_dict(tiny_models.component_state(in_channels)["unet"])
    return unet.eval()


def inputs(batch=2, frames=FRAMES, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 9, frames, size, size, generator=generator)
    text = torch.randn(batch, 77, 32, generator=generator)
    return sample, text


def per_frame_2d(unet, sample, timestep, text):
    batch, channels, frames, h, w = sample.shape
    frames_in = sample.transpose(1, 2).reshape(batch * frames, channels, h, w)
    out = unet(frames_in, timestep, text.repeat_interleave(frames, 0)).sample
    return out.view(batch, frames, 4, h, w).transpose(1, 2)


@pytest.fixture(scope="module")
def loaded():
    return video_unet_from_unet2d(fresh_unet(), tiny_models.motion_folder())



# ---------------------------------------------------------------- structure and placement
def test_structure_and_official_keys(loaded):
    assert loaded.num_motion_modules == 21 and loaded.in_channels == 9 and loaded.cross_attention_dim == 32
    motion = loaded.motion_state_dict()
    expected = tiny_models.motion_state()
    assert len(motion) == 840 and set(motion) == set(expected)
    assert all(motion[k].shape == expected[k].shape for k in expected)
    assert [name for name, _ in loaded.motion_modules][8] == "mid_block.motion_modules.0"


def test_motion_modules_sit_after_each_layer_before_samplers(loaded):
    calls = []
    unet = loaded.unet
    handles = []
    for name, module in unet.named_modules():
        if re.fullmatch(r"(down_blocks\.\d|up_blocks\.\d|mid_block)\.(resnets|attentions|motion_modules|"
                        r"downsamplers|upsamplers)\.\d", name):
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: calls.append(name)))
    try:
        with torch.no_grad():
            loaded(*inputs(batch=1, size=8)[:1], 10, inputs(batch=1, size=8)[1])
    finally:
        for handle in handles:
            handle.remove()
    expected = []
    for b in range(4):
        for j in range(2):
            expected += [f"down_blocks.{b}.resnets.{j}"] + ([f"down_blocks.{b}.attentions.{j}"] if b < 3 else [])
            expected += [f"down_blocks.{b}.motion_modules.{j}"]
        expected += [f"down_blocks.{b}.downsamplers.0"] if b < 3 else []
    expected += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.motion_modules.0", "mid_block.resnets.1"]
    for b in range(4):
        for j in range(3):
            expected += [f"up_blocks.{b}.resnets.{j}"] + ([f"up_blocks.{b}.attentions.{j}"] if b > 0 else [])
            expected += [f"up_blocks.{b}.motion_modules.{j}"]
        expected += [f"up_blocks.{b}.upsamplers.0"] if b < 3 else []
    assert calls == expected


def test_motion_output_is_what_feeds_the_skips(loaded):
    seen = {}
    unet = loaded.unet
    first = unet.down_blocks[0].motion_modules[0].register_forward_hook(lambda m, a, o: seen.update(motion=o))
    skip = unet.up_blocks[3].resnets[1].register_forward_pre_hook(lambda m, a: seen.update(resnet_in=a[0]))
    try:
        with torch.no_grad():
            sample, text = inputs(batch=1, size=8)
            loaded(sample, 10, text)
    finally:
        first.remove()
        skip.remove()
    # up_blocks.3.resnets.1 gets [hidden | skip of down_blocks.0 layer 0]
    assert torch.equal(seen["resnet_in"][:, -32:], seen["motion"])


# ---------------------------------------------------------------- numerics
def test_identity_motion_modules_give_the_per_frame_2d_unet():
    """Freshly built modules (zero proj_out, as in the official constructor) are the identity: the video U-Net is
    then exactly SD-inpainting run on B·F frames with the text repeated per frame (spec §1.1)."""
    video = VideoUNet(fresh_unet())
    sample, text = inputs(size=16)
    with torch.no_grad():
        got = video(sample, 500, text)
        want = per_frame_2d(fresh_unet(), sample, 500, text)
    assert got.shape == (2, 4, FRAMES, 16, 16)
    assert torch.allclose(got, want, atol=1e-5)


def test_loaded_motion_modules_change_the_output_and_mix_frames(loaded):
    sample, text = inputs(batch=1, size=8)
    with torch.no_grad():
        video = loaded(sample, 500, text)
        plain = per_frame_2d(fresh_unet(), sample, 500, text)
        changed = sample.clone()
        changed[:, :, 2] += 1.0  # only the last frame
        video2 = loaded(changed, 500, text)
    assert (video - plain).abs().max() > 1e-3
    assert (video2[:, :, 0] - video[:, :, 0]).abs().max() > 1e-5  # frame 0 sees frame 2 through the motion modules


def test_videos_of_a_batch_are_independent_and_timesteps_per_video(loaded):
    # batch-2 and batch-1 calls round differently in float32 (by CPU): compared in float64
    unet = copy.deepcopy(loaded).double()
    sample, text = (x.double() for x in inputs(size=8))
    with torch.no_grad():
        both = unet(sample, torch.tensor([100, 700]), text)
        first = unet(sample[:1], 100, text[:1])
        second = unet(sample[1:], torch.tensor(700), text[1:])
    torch.testing.assert_close(both[:1], first, rtol=0, atol=1e-10)  # |out| ~ 3
    torch.testing.assert_close(both[1:], second, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_video_unet_has_no_nan(dtype):
    video = video_unet_from_unet2d(fresh_unet(), tiny_models.motion_state(), dtype=dtype)
    assert video.dtype == dtype and all(p.dtype == dtype for p in video.parameters())
    sample, text = inputs(batch=1, size=8)
    with torch.no_grad():
        out = video(sample, 999, text)
    assert out.dtype == dtype and torch.isfinite(out).all()


# ---------------------------------------------------------------- weights: official folder, converter, bases
def test_official_folder_is_read_like_the_official_loader():
    folder = tiny_models.motion_folder()
    raw = torch.load(folder / "model_0.pth", weights_only=True)
    assert all(k.startswith("module.") for k in raw) and any(v.shape[1] in (24, 4800) for k, v in raw.items()
                                                             if k.endswith("pos_encoder.pe"))
    state = read_motion_weights(folder)
    expected = tiny_models.motion_state()
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)


def test_later_official_files_override_earlier_ones(tmp_path):
    folder = tmp_path / "motion"
    shutil.copytree(tiny_models.motion_folder(), folder)
    key = "module.mid_block.motion_modules.0.temporal_transformer.proj_out.bias"
    extra = {key: torch.full((64,), 7.0)}
    torch.save(extra, folder / "model_4.pth")
    assert torch.equal(read_motion_weights(folder)[key.removeprefix("module.")], extra[key])


def test_diffusers_folder_and_single_file_bases_agree():
    sample, text = inputs(batch=1, size=8)
    with torch.no_grad():
        outs = [load_video_unet(base, tiny_models.motion_folder())(sample, 250, text)
                for base in (tiny_models.sd_folder(), tiny_models.ldm_file("safetensors"))]
    assert torch.equal(outs[0], outs[1])


def test_converter_round_trip(tmp_path, capsys):
    from cococo_core.cli import main

    out = tmp_path / "cococo_motion.safetensors"
    folder = str(tiny_models.motion_folder())
    assert main(["convert-motion", "--input", folder, "--output", str(out), "--no-check"]) == 0
    from safetensors.torch import load_file

    stored = load_file(str(out))
    assert set(stored) == set(tiny_models.motion_state())  # no "module.", no pe buffers
    sample, text = inputs(batch=1, size=8)
    with torch.no_grad():
        a = load_video_unet(fresh_unet(), out)(sample, 250, text)
        b = load_video_unet(fresh_unet(), folder)(sample, 250, text)
    assert torch.equal(a, b)
    # the default check is against SD-1.5 widths: the tiny weights fail it with a listing, exit code 2
    assert main(["convert-motion", "-i", folder, "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "wrong shape" in capsys.readouterr().err
    assert main(["convert-motion", "-i", folder, "-o", str(out), "--no-check"]) == 2  # exists, no --overwrite
    assert main(["convert-motion", "-i", folder, "-o", str(out), "--no-check", "--overwrite", "--dtype", "fp16"]) == 0
    assert all(t.dtype == torch.float16 for t in load_file(str(out)).values())


def test_converter_help_documents_every_option(capsys):
    from cococo_core.cli import main

    with pytest.raises(SystemExit):
        main(["convert-motion", "--help"])
    text = capsys.readouterr().out
    for option in ("--input", "--output", "--dtype", "--no-check", "--overwrite"):
        assert option in text


# ---------------------------------------------------------------- errors
def test_four_channel_base_is_refused():
    with pytest.raises(ValueError, match="9 input channels"):
        VideoUNet(fresh_unet(in_channels=4))
    with pytest.raises(ValueError):
        load_video_unet(tiny_models.sd_folder(in_channels=4), tiny_models.motion_folder())


def test_missing_motion_tensors_are_listed_and_the_unet_is_left_intact(tmp_path):
    folder = tmp_path / "motion"
    shutil.copytree(tiny_models.motion_folder(), folder)
    (folder / "model_3.pth").unlink()
    unet = fresh_unet()
    with pytest.raises(MotionWeightsError, match=r"motion tensors are missing: .*motion_modules") as refused:
        video_unet_from_unet2d(unet, folder)
    first, *details = str(refused.value).splitlines()
    assert first.startswith("These are not CoCoCo motion weights for this model: pick the official CoCoCo folder")
    assert "motion_modules" not in first and len(str(refused.value)) < 1200  # what to do first, a few names after
    assert not any("motion_modules" in k for k in unet.state_dict())
    VideoUNet(unet)  # still a plain U-Net that can be wrapped


def test_mis_shaped_motion_tensors_are_listed():
    state = dict(tiny_models.motion_state())
    key = "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.3.to_k.weight"
    state[key] = torch.zeros(32, 768)  # SD-1.5 text width on the tiny model
    with pytest.raises(MotionWeightsError, match=r"1 motion tensors have the wrong shape: .*attention_blocks\.3\.to_k"):
        video_unet_from_unet2d(fresh_unet(), state)


def test_truncated_or_missing_files_give_clear_errors(tmp_path):
    folder = tmp_path / "motion"
    shutil.copytree(tiny_models.motion_folder(), folder)
    data = (folder / "model_1.pth").read_bytes()
    (folder / "model_1.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model_1.pth"):
        read_motion_weights(folder)
    with pytest.raises(FileNotFoundError, match="model_0.pth"):
        read_motion_weights(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_motion_weights(tmp_path / "nothing.safetensors")


def test_extra_keys_are_applied_or_listed(caplog):
    state = dict(tiny_models.motion_state())
    state["conv_out.bias"] = torch.full((4,), 3.0)  # a base U-Net key: applied, as the official loader does
    state["something.else"] = torch.zeros(1)
    with caplog.at_level(logging.WARNING):
        video = video_unet_from_unet2d(fresh_unet(), state)
    assert torch.equal(video.unet.conv_out.bias, torch.full((4,), 3.0))
    assert "conv_out.bias" in caplog.text and "something.else" in caplog.text


def test_inner_unet_cannot_be_called_without_the_video_wrapper(loaded):
    sample, text = inputs(batch=1, size=8)
    with pytest.raises(RuntimeError, match="VideoUNet"):
        loaded.unet(sample[:, :, 0], 10, text)


def test_bad_call_shapes_are_refused(loaded):
    sample, text = inputs(batch=2, size=8)
    with pytest.raises(ValueError, match="sample"):
        loaded(sample[:, :4], 10, text)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        loaded(sample, 10, text[:1])
    with pytest.raises(ValueError, match="timestep"):
        loaded(sample, torch.tensor([1, 2, 3]), text)


def test_a_unet_cannot_be_wrapped_twice(loaded):
    with pytest.raises(ValueError, match="already carry motion modules"):
        VideoUNet(loaded.unet)
    assert loaded.num_motion_modules == 21


def test_latent_sizes_that_are_not_multiples_of_8(loaded):
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 9, 2, 13, 10, generator=generator)  # level 0 has H > 12: DGA resizes to 12 x 9
    with torch.no_grad():
        out = loaded(sample, 100, torch.randn(1, 77, 32, generator=generator))
    assert out.shape == (1, 4, 2, 13, 10) and torch.isfinite(out).all()


def test_full_size_sd15_layout_matches_the_spec():
    """Spec §1.2/§1.6: 21 modules, 840 tensors, 605,816,640 parameters; widths 320/640/1280 per level."""
    from cococo_core.models.sd15 import sd15_motion_shapes

    shapes = sd15_motion_shapes()
    assert len(shapes) == 840 and sum(s.numel() for s in shapes.values()) == 605_816_640
    width = {k.split(".temporal_transformer")[0]: s[0] for k, s in shapes.items() if k.endswith("proj_in.weight")}
    assert width == {
        **{f"down_blocks.{b}.motion_modules.{i}": (320, 640, 1280, 1280)[b] for b in range(4) for i in range(2)},
        "mid_block.motion_modules.0": 1280,
        **{f"up_blocks.{b}.motion_modules.{i}": (1280, 1280, 640, 320)[b] for b in range(4) for i in range(3)},
    }
    key = "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.3.to_k.weight"
    assert shapes[key] == (320, 768)
