"""Issue 23 case 5: a NaN / infinity in any tensor read from a file is refused, naming the file and the tensor,
while the tensors are read (before any inference runs and before a module is built from them)."""
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
from cococo_core.checkpoints import NonFiniteWeightsError, load_state_dict, open_state
from cococo_core.checkpoints.pretrained import load_pretrained
from cococo_core.cli import main
from cococo_core.video_io import write_video


def _rewrite(path, state):
    """Write beside and rename over: the old file may still be memory-mapped by a loader."""
    staged = path.with_name(path.name + ".new")
    save_file(state, str(staged), metadata={"format": "pt"})
    staged.replace(path)


def _poisoned(state, key, value=float("nan")):
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[3] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_one_bad_value_is_refused_naming_file_and_tensor(tmp_path, fmt, value):
    state = {"good": torch.ones(4, 4), "layer.weight": torch.zeros(8, 8, dtype=torch.float16), "ids": torch.arange(3)}
    path = tmp_path / f"model.{fmt}"
    bad = _poisoned(state, "layer.weight", value)
    save_file(bad, str(path)) if fmt == "safetensors" else torch.save(bad, path)
    with pytest.raises(NonFiniteWeightsError, match=r"model\.%s: tensor 'layer\.weight' holds 1 NaN" % fmt):
        load_state_dict(path)
    with open_state(path) as reader:  # streaming: names and shapes are readable, the tensor is refused when read
        assert reader.shape("layer.weight") == (8, 8)
        assert torch.equal(reader.get("good"), state["good"])
        with pytest.raises(NonFiniteWeightsError, match="layer.weight"):
            reader.get("layer.weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                   torch.float8_e4m3fn, torch.complex64])
def test_every_float_dtype_is_checked(dtype):
    from cococo_core.checkpoints import check_tensor

    values = torch.randn(5, 7).to(dtype)
    assert check_tensor(values, "f.safetensors", "t") is values
    values.view(-1)[11] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="'t' holds 1 NaN"):
        check_tensor(values, "f.safetensors", "t")


def test_finite_files_load_unchanged(tmp_path):
    state = {"w": torch.randn(5, 5), "h": torch.full((3,), 65504.0, dtype=torch.float16), "i": torch.arange(4)}
    save_file(state, str(tmp_path / "ok.safetensors"))
    loaded = load_state_dict(tmp_path / "ok.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nan_cli")
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    mask = np.zeros((2, 32, 32, 3), np.uint8)
    mask[:, 8:24, 8:24] = 255
    return folder, write_video(folder / "video", frames), write_video(folder / "mask", mask)


def _inpaint(folder, video, mask, base, motion):
    return main(["inpaint", "--base", str(base), "--motion", str(motion), "--video", str(video), "--mask", str(mask),
                 "--prompt", "x", "--out", str(folder / "out.mp4"), "--steps", "1"])


def test_inpaint_refuses_a_nan_in_the_base_unet(tmp_path, clip_files, capsys):
    folder, video, mask = clip_files
    base = shutil.copytree(tiny_models.sd_folder(), tmp_path / "base")
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = sorted(k for k in state if k.endswith("conv_in.weight"))[0]
    _rewrite(weights, _poisoned(state, key))
    assert _inpaint(folder, video, mask, base, tiny_models.motion_folder()) == 2
    error = capsys.readouterr().err
    assert str(weights) in error and key in error and "NaN" in error
    assert not (folder / "out.mp4").exists()


def test_inpaint_refuses_an_inf_in_the_motion_weights(tmp_path, clip_files, capsys):
    folder, video, mask = clip_files
    motion = shutil.copytree(tiny_models.motion_folder(), tmp_path / "motion")
    part = motion / "model_2.pth"
    state = torch.load(part, weights_only=True)
    key = sorted(k for k in state if k.endswith("to_q.weight"))[0]
    torch.save(_poisoned(state, key, float("inf")), part)
    assert _inpaint(folder, video, mask, tiny_models.sd_folder(), motion) == 2
    error = capsys.readouterr().err
    assert str(part) in error and key in error


def _vae_folder(folder):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**tiny_models.TINY_VAE_CONFIG)
    vae.save_pretrained(folder)
    return folder


def test_from_pretrained_folders_are_checked_once_per_tensor(tmp_path):
    from diffusers import AutoencoderKL

    folder = _vae_folder(tmp_path / "vae")
    assert load_pretrained(AutoencoderKL.from_pretrained, folder) is not None
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    _rewrite(weights, _poisoned(state, "decoder.conv_out.weight"))
    with pytest.raises(NonFiniteWeightsError, match=r"vae: tensor 'decoder\.conv_out\.weight'"):
        load_pretrained(AutoencoderKL.from_pretrained, folder)


def test_a_pickle_named_safetensors_is_named_in_one_line(tmp_path):
    from diffusers import AutoencoderKL

    folder = _vae_folder(tmp_path / "vae")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    torch.save(state, weights.with_name("staged"))
    weights.with_name("staged").replace(weights)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: named \.safetensors but it is a "
                                         r"torch pickle") as raised:
        load_pretrained(AutoencoderKL.from_pretrained, folder)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: named \.safetensors but it is a "
                                         r"torch pickle") as raised:
        load_state_dict(weights)  # torch.load alone would hand it to safetensors by its name: a raw SafetensorError
    assert "\n" not in str(raised.value)


def test_a_safetensors_header_length_starting_with_byte_0x80_is_not_taken_for_a_pickle(tmp_path):
    """The first 8 bytes are the little-endian header length: a length of 128 + 256k starts with 0x80, the pickle
    protocol opcode; the file is still safetensors (format: github.com/huggingface/safetensors README)."""
    for width in range(1, 400):
        path = tmp_path / f"w{width}.safetensors"
        save_file({"w" * width: torch.ones(2)}, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no header length with low byte 0x80 reached")
    assert torch.equal(load_state_dict(path)["w" * width], torch.ones(2))
