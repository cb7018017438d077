"""LDM single-file <-> diffusers/transformers key mapping for the SD-1.x U-Net, VAE and CLIP text encoder."""
import pytest
import torch

import tiny_models
from cococo_core.checkpoints.ldm_keys import (
    CLIP_POSITION_IDS, SDKeyMap, UNetKeyMap, UnknownKeyError, VAEKeyMap, diffusers_to_ldm, ema_key,
    ldm_to_diffusers, normalize_vae_key,
)


def _same(a, b):
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:10]
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


def test_round_trip_all_components_no_key_left_over():
    components = tiny_models.component_state()
    ldm = diffusers_to_ldm(components)
    counts = {p: sum(k.startswith(p) for k in ldm) for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")}
    assert counts == {"model.diffusion_model.": 684, "first_stage_model.": 176, "cond_stage_model.": 37}
    assert len(ldm) == sum(counts.values())
    assert ldm[CLIP_POSITION_IDS].dtype == torch.int64 and ldm[CLIP_POSITION_IDS].tolist() == [list(range(77))]
    # the VAE attention weights are LDM 1x1 convs
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    back = ldm_to_diffusers(ldm)
    assert back.unknown == [] and back.ignored == [CLIP_POSITION_IDS]
    for name, state in components.items():
        _same(state, back.components[name])


def test_key_names_follow_the_ldm_layout():
    ldm = diffusers_to_ldm(tiny_models.component_state())
    for key in ("model.diffusion_model.time_embed.0.weight", "model.diffusion_model.input_blocks.0.0.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.input_blocks.9.0.op.bias",
                "model.diffusion_model.input_blocks.7.0.skip_connection.weight",
                "model.diffusion_model.input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.middle_block.2.emb_layers.1.bias",
                "model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.output_blocks.8.2.conv.bias", "model.diffusion_model.output_blocks.11.1.proj_out.weight",
                "model.diffusion_model.out.0.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.encoder.down.0.downsample.conv.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.decoder.up.0.block.1.conv2.weight", "first_stage_model.encoder.mid.attn_1.proj_out.weight",
                "first_stage_model.decoder.norm_out.bias", "first_stage_model.post_quant_conv.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in ldm, key
    assert not any("output_blocks.2.2" in k or "decoder.up.0.upsample" in k for k in ldm)
    # the LDM decoder is stored in reverse order: its up.3 is diffusers up_blocks.0
    mapping = SDKeyMap()
    assert mapping.to_diffusers("first_stage_model.decoder.up.3.upsample.conv.weight").key == "decoder.up_blocks.0.upsamplers.0.conv.weight"


def test_cross_check_with_diffusers_converter():
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    ldm = tiny_models.ldm_state()
    ours = ldm_to_diffusers(ldm).components
    _same(single_file_utils.convert_ldm_unet_checkpoint(dict(ldm), dict(tiny_models.TINY_UNET_CONFIG)), ours["unet"])
    _same(single_file_utils.convert_ldm_vae_checkpoint(dict(ldm), dict(tiny_models.TINY_VAE_CONFIG)), ours["vae"])
    theirs = single_file_utils.convert_ldm_clip_checkpoint(dict(ldm))
    theirs = {k.removeprefix("text_model."): v for k, v in theirs.items() if not k.endswith("position_ids")}
    _same(theirs, ours["text_encoder"])


def test_clip_names_match_installed_transformers():
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**tiny_models.TINY_CLIP_CONFIG))
    converted = ldm_to_diffusers(tiny_models.ldm_state()).components["text_encoder"]
    module_keys = {k.removeprefix("text_model.") for k in model.state_dict()}
    assert set(converted) == module_keys


def test_per_key_maps_are_inverse_in_both_directions():
    ldm = tiny_models.ldm_state()
    mapping = SDKeyMap.from_ldm_keys(ldm)
    assert mapping == SDKeyMap(UNetKeyMap(2, frozenset({1, 2, 3})), VAEKeyMap(4))
    for key, tensor in ldm.items():
        target = mapping.to_diffusers(key)
        if target is None:
            assert key == CLIP_POSITION_IDS
            continue
        moved = target.transform(tensor) if target.transform else tensor
        back = mapping.to_ldm(target.component, target.key)
        assert back.key == key
        assert torch.equal(back.transform(moved) if back.transform else moved, tensor)


def test_layout_follows_the_config():
    """layers_per_block=1 and a model whose every up level has attention: index arithmetic, not a table."""
    from diffusers import UNet2DConditionModel

    config = dict(tiny_models.TINY_UNET_CONFIG, layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",) * 2,
                  up_block_types=("CrossAttnUpBlock2D",) * 2, block_out_channels=(32, 64))
    state = UNet2DConditionModel(**config).state_dict()
    mapping = UNetKeyMap.from_config(config)
    assert mapping == UNetKeyMap.from_diffusers_keys(state) == UNetKeyMap(1, frozenset({0, 1}))
    ldm = {mapping.to_ldm(k): v for k, v in state.items()}
    assert "input_blocks.2.0.op.weight" in ldm and "output_blocks.1.2.conv.weight" in ldm
    assert "input_blocks.3.1.proj_in.weight" in ldm and "output_blocks.3.1.proj_in.weight" in ldm
    assert UNetKeyMap.from_ldm_keys(ldm) == mapping
    assert {mapping.to_diffusers(k) for k in ldm} == set(state)


def test_old_clip_layout_and_legacy_vae_names():
    mapping = SDKeyMap()
    old = mapping.to_diffusers("cond_stage_model.transformer.embeddings.token_embedding.weight")
    assert old == ("text_encoder", "embeddings.token_embedding.weight", None)
    assert mapping.to_diffusers("cond_stage_model.transformer.embeddings.position_ids") is None
    assert normalize_vae_key("decoder.mid_block.attentions.0.proj_attn.weight") == "decoder.mid_block.attentions.0.to_out.0.weight"
    assert mapping.to_ldm("vae", "encoder.mid_block.attentions.0.query.bias").key == "first_stage_model.encoder.mid.attn_1.q.bias"
    assert mapping.to_ldm("text_encoder", "text_model.final_layer_norm.bias").key == (
        "cond_stage_model.transformer.text_model.final_layer_norm.bias")


def test_unknown_and_ignored_keys_are_reported():
    ldm = dict(tiny_models.ldm_state())
    ldm["model.diffusion_model.input_blocks.1.7.weird"] = torch.zeros(1)
    ldm["first_stage_model.encoder.down.0.attn.0.q.weight"] = torch.zeros(1)
    ldm["cond_stage_model.transformer.text_projection.weight"] = torch.zeros(1)
    ldm["alphas_cumprod"] = torch.zeros(3)
    result = ldm_to_diffusers(ldm)
    assert sorted(result.unknown) == sorted(["model.diffusion_model.input_blocks.1.7.weird",
                                             "first_stage_model.encoder.down.0.attn.0.q.weight",
                                             "cond_stage_model.transformer.text_projection.weight"])
    assert "alphas_cumprod" in result.ignored
    with pytest.raises(UnknownKeyError, match="unet:bogus"):
        diffusers_to_ldm({"unet": {"bogus": torch.zeros(1)}}, SDKeyMap())


def test_ema_key_flattening():
    assert ema_key("model.diffusion_model.input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"


def test_full_size_sd15_layout_on_meta_device():
    """Real SD-1.5-inpainting shapes (meta tensors, no memory): 686 / 248 / 197 single-file tensors as in real
    files, and diffusers' converter maps our single-file names back to the same modules."""
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae_config = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(**vae_config)
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, projection_dim=768))
    components = {"unet": unet.state_dict(), "vae": vae.state_dict(),
                  "text_encoder": {k.removeprefix("text_model."): v for k, v in clip.state_dict().items()}}
    ldm = diffusers_to_ldm(components)
    counts = [sum(k.startswith(p) for k in ldm) for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")]
    assert counts == [686, 248, 197] and len(ldm) == 1131
    assert ldm["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    assert "model.diffusion_model.input_blocks.4.0.skip_connection.weight" in ldm
    theirs_unet = single_file_utils.convert_ldm_unet_checkpoint(dict(ldm), dict(unet.config))
    theirs_vae = single_file_utils.convert_ldm_vae_checkpoint(dict(ldm), dict(vae.config))
    ours = ldm_to_diffusers(ldm).components
    for theirs, name in ((theirs_unet, "unet"), (theirs_vae, "vae")):
        assert set(theirs) == set(ours[name]) == set(components[name])
        assert all(theirs[k].shape == ours[name][k].shape == components[name][k].shape for k in theirs)
