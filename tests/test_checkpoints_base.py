"""Loading the SD-1.x base from a diffusers folder and from single files: identical modules and outputs,
inferred configs, clear errors for wrong files."""
import shutil

import pytest
import torch
from safetensors.torch import save_file

import tiny_models
from cococo_core.checkpoints.base import load_sd_components, load_sd_state
from cococo_core.checkpoints.configs import (
    clip_config_from_shapes, clip_heads, unet_config_from_shapes, vae_config_from_shapes,
)
from cococo_core.checkpoints.ldm_keys import diffusers_to_ldm
from cococo_core.checkpoints.safe_load import CheckpointError
from cococo_core.hooks import Cancelled

MODELS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def reference():
    return load_sd_components(tiny_models.sd_folder())


def _outputs(sd):
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 9, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    ids = sd.tokenizer(["the cat and the dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return {
            "unet": sd.unet(sample, torch.tensor([10, 500]), text).sample,
            "vae_encode": sd.vae.encode(image).latent_dist.mean,
            "vae_decode": sd.vae.decode(sample[:1, :4]).sample,
            "text": sd.text_encoder(ids).last_hidden_state,
        }


@pytest.mark.parametrize("source", ["folder-bin", "ldm-safetensors", "ldm-ckpt"])
def test_every_source_gives_identical_modules_and_outputs(reference, source):
    kind, fmt = source.split("-")
    if kind == "folder":
        loaded = load_sd_components(tiny_models.sd_folder(weights=fmt))
    else:
        loaded = load_sd_components(tiny_models.ldm_file(fmt), tokenizer=tiny_models.tokenizer_folder())
    for name in MODELS:
        ours, theirs = getattr(loaded, name).state_dict(), getattr(reference, name).state_dict()
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
        assert not getattr(loaded, name).training
    expected = _outputs(reference)
    for key, value in _outputs(loaded).items():
        assert torch.equal(value, expected[key]), key


def test_loaded_weights_are_the_written_weights(reference):
    for name, state in tiny_models.component_state().items():
        module = getattr(reference, name).state_dict()
        assert all(torch.equal(module[k.removeprefix("text_model.")], v) for k, v in state.items()), name
    assert reference.source.family == "sd1" and reference.source.unet_in_channels == 9
    assert reference.vae.config.scaling_factor == pytest.approx(0.18215)
    assert torch.equal(reference.text_encoder.get_buffer("embeddings.position_ids"), torch.arange(77)[None])


def test_single_file_configs_from_shapes(reference):
    loaded = load_sd_components(tiny_models.ldm_file(), components=MODELS)
    for key, value in tiny_models.TINY_UNET_CONFIG.items():
        if key != "sample_size":
            assert tuple(loaded.unet.config[key]) == value if isinstance(value, tuple) else loaded.unet.config[key] == value, key
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        assert tuple(loaded.vae.config[key]) == tuple(reference.vae.config[key]) if key == "block_out_channels" else (
            loaded.vae.config[key] == reference.vae.config[key]), key
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "hidden_act", "eos_token_id"):
        assert getattr(loaded.text_encoder.config, key) == getattr(reference.text_encoder.config, key), key


def test_configs_for_real_sd15_shapes():
    """Full-size SD-1.5-inpainting shapes (modules built on the meta device, no memory used)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, projection_dim=768))  # CLIP ViT-L/14
    config = unet_config_from_shapes(unet.state_dict())
    assert config["block_out_channels"] == (320, 640, 1280, 1280) and config["in_channels"] == 9
    assert config["cross_attention_dim"] == 768 and config["layers_per_block"] == 2 and not config["use_linear_projection"]
    assert config["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert config["attention_head_dim"] == 8 and config["sample_size"] == 64
    vae_config = vae_config_from_shapes(vae.state_dict())
    assert vae_config["block_out_channels"] == (128, 256, 512, 512) and vae_config["layers_per_block"] == 2
    clip_config = clip_config_from_shapes(clip.state_dict())
    assert (clip_config["hidden_size"], clip_config["num_hidden_layers"], clip_config["num_attention_heads"],
            clip_config["intermediate_size"], clip_config["vocab_size"], clip_config["eos_token_id"]) == (
        768, 12, 12, 3072, 49408, 49407)
    assert [clip_heads(w) for w in (768, 1024, 32, 4)] == [12, 16, 4, 1]


def test_text_to_image_file_refused_where_inpainting_needed():
    with pytest.raises(CheckpointError, match="text-to-image model.*sd-v1-5-inpainting.*personalization\* sources"):
        load_sd_components(tiny_models.ldm_file(in_channels=4), tokenizer=tiny_models.tokenizer_folder())
    with pytest.raises(CheckpointError, match="text-to-image"):
        load_sd_components(tiny_models.sd_folder(in_channels=4))
    loaded = load_sd_components(tiny_models.ldm_file(in_channels=4), components=("unet",), require_in_channels=None)
    assert loaded.unet.config.in_channels == 4 and loaded.vae is None


@pytest.mark.parametrize("make,label", [(tiny_models.sd2_file, "Stable Diffusion 2.x"), (tiny_models.sdxl_file, "SDXL")])
def test_sd2_sdxl_refused(make, label):
    with pytest.raises(CheckpointError, match=f"{label}.*SD-1.5 inpainting"):
        load_sd_components(make(), tokenizer=tiny_models.tokenizer_folder())
    with pytest.raises(CheckpointError, match=label):
        load_sd_state(make())


def test_single_file_needs_a_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.*comfy/sd1_tokenizer"):
        load_sd_components(tiny_models.ldm_file())
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_sd_components(tiny_models.ldm_file(), tokenizer=tmp_path)


def _write(tmp_path, state, name="model.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_wrong_key_sets_are_listed(tmp_path):
    state = dict(tiny_models.ldm_state())
    del state["model.diffusion_model.middle_block.1.proj_out.weight"]
    with pytest.raises(CheckpointError, match=r"missing \(1\): mid_block.attentions.0.proj_out.weight"):
        load_sd_components(_write(tmp_path, state), components=MODELS)
    state = dict(tiny_models.ldm_state())
    state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): down_blocks.0.attentions.0.transformer_blocks.0.attn1.extra"):
        load_sd_components(_write(tmp_path, state, "b.safetensors"), components=MODELS)
    state = dict(tiny_models.ldm_state())
    state["model.diffusion_model.input_blocks.1.7.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="do not fit the SD-1.x layout.*input_blocks.1.7.weight"):
        load_sd_components(_write(tmp_path, state, "c.safetensors"), components=MODELS)
    state = dict(tiny_models.ldm_state())
    state["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"wrong shape.*conv_out.weight \(4, 32, 1, 1\)"):
        load_sd_components(_write(tmp_path, state, "d.safetensors"), components=MODELS)


def test_text_encoder_prefix_variants(tmp_path, reference):
    """HF folders store ``text_model.*``, transformers 5 writes bare names; both load. A wrong prefix is an
    error (transformers would silently load nothing)."""
    folder = tmp_path / "bare"
    tiny_models.write_sd_folder(folder, clip_text_model_prefix=False)
    loaded = load_sd_components(folder, components=("text_encoder",))
    assert all(torch.equal(v, reference.text_encoder.state_dict()[k]) for k, v in loaded.text_encoder.state_dict().items())
    state = {"model." + k: v for k, v in tiny_models.component_state()["text_encoder"].items()}
    save_file(state, str(folder / "text_encoder" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(36\).*unexpected \(36\): model\."):
        load_sd_components(folder, components=("text_encoder",))


def test_old_clip_layout_single_file(tmp_path, reference):
    state = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
             for k, v in tiny_models.ldm_state().items()}
    loaded = load_sd_components(_write(tmp_path, state), components=("text_encoder",))
    expected = reference.text_encoder.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.text_encoder.state_dict().items())


def test_missing_vae_is_a_clear_error_unless_not_asked(tmp_path):
    state = {k: v for k, v in tiny_models.ldm_state().items() if not k.startswith("first_stage_model.")}
    path = _write(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"no VAE \(first_stage_model"):
        load_sd_components(path, components=MODELS)
    assert load_sd_components(path, components=("unet", "text_encoder")).vae is None


def test_truncated_single_file(tmp_path):
    data = tiny_models.ldm_file().read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="cut.safetensors.*truncated"):
        load_sd_components(path, tokenizer=tiny_models.tokenizer_folder())


def test_ema_weights_only_when_asked(reference):
    path = tiny_models.ldm_file(ema=True)
    plain = load_sd_state(path, components=("unet",))
    assert not plain.used_ema and "model_ema.decay" in plain.ignored
    expected = tiny_models.component_state()["unet"]
    assert all(torch.equal(plain["unet"][k], v) for k, v in expected.items())
    ema = load_sd_components(path, components=("unet",), use_ema=True)
    assert ema.used_ema and ema.source.has_ema
    assert all(torch.allclose(v, expected[k] + 0.01) for k, v in ema.unet.state_dict().items())
    with pytest.raises(CheckpointError, match="no model_ema"):
        load_sd_state(tiny_models.ldm_file(), use_ema=True)


def test_load_sd_state_matches_for_folder_and_file():
    folder = load_sd_state(tiny_models.sd_folder())
    single = load_sd_state(tiny_models.ldm_file("ckpt"))
    written = tiny_models.component_state()
    for name in MODELS:
        expected = {k.removeprefix("text_model."): v for k, v in written[name].items()}
        for state in (folder, single):
            assert set(state[name]) == set(expected) and all(torch.equal(state[name][k], v) for k, v in expected.items())
    assert single.configs["unet"]["in_channels"] == folder.configs["unet"]["in_channels"] == 9
    assert load_sd_state(tiny_models.ldm_file(in_channels=4), components=("vae",)).tensors.keys() == {"vae"}


def test_dtype_device_and_hooks():
    steps, polls = [], []
    loaded = load_sd_components(tiny_models.ldm_file(), components=MODELS, dtype=torch.bfloat16, device="cpu",
                                callback=lambda step, total, value: steps.append((step, total)))
    assert all(p.dtype == torch.bfloat16 for name in MODELS for p in getattr(loaded, name).parameters())
    assert loaded.text_encoder.get_buffer("embeddings.position_ids").dtype == torch.int64
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(Cancelled):
        load_sd_components(tiny_models.ldm_file(), components=MODELS, cancel=lambda: polls.append(1) or len(polls) > 1)


def test_unknown_component_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match="unknown component"):
        load_sd_components(tiny_models.sd_folder(), components=("unet", "scheduler"))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_sd_state(tmp_path / "nothing.safetensors")
    folder = tmp_path / "no_unet_weights"
    shutil.copytree(tiny_models.sd_folder(), folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_sd_state(folder, components=("unet",))


def test_round_trip_through_single_file_writer(tmp_path):
    """diffusers state -> LDM single file -> loader gives back the same tensors (writer for other tools)."""
    state = load_sd_state(tiny_models.sd_folder())
    path = _write(tmp_path, diffusers_to_ldm(state.tensors))
    again = load_sd_state(path)
    for name in MODELS:
        assert all(torch.equal(again[name][k], v) for k, v in state[name].items())
