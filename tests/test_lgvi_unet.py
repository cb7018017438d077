"""LGVI video U-Net: official key layout, SD-1.x numerics, temporal attention, conditioning variants, mask."""
from __future__ import annotations

import pytest
import torch

import test_lgvi_tiny as tiny
import tiny_models
from cococo_core.attention import attention_backend
from cococo_core.lgvi.unet import LGVIUNet


def _diffusers_unet(in_channels):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**tiny_models.TINY_UNET_CONFIG, "in_channels": in_channels}).eval()


def _lgvi_only(key: str) -> bool:
    return ".attn_temp." in key or ".norm_temp." in key or key.startswith(("mask_decoder.", "condition_conv_in."))


@pytest.mark.parametrize("in_channels", [8, 4])
def test_key_layout_is_diffusers_sd_plus_the_official_lgvi_extras(in_channels):
    ours = LGVIUNet(tiny.unet_config(in_channels)).state_dict()
    reference = _diffusers_unet(in_channels).state_dict()
    sd_keys = {k for k in ours if not _lgvi_only(k)}
    assert sd_keys == set(reference)
    assert all(ours[k].shape == reference[k].shape for k in reference)
    extras = {k for k in ours if _lgvi_only(k)}
    temporal = {k for k in extras if not k.startswith("mask_decoder.") and (".attn_temp." in k or ".norm_temp." in k)}
    # 16 transformer blocks (down 2+2+2, mid 1, up 3+3+3), each attn_temp (q,k,v,out w+b) + norm_temp (w,b)
    assert len(temporal) == 16 * 7
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_out.0.bias" in temporal
    assert "mid_block.attentions.0.transformer_blocks.0.norm_temp.weight" in temporal
    decoder = {k for k in extras if k.startswith("mask_decoder.")}
    assert decoder == {f"mask_decoder.projects.{i}.{n}.{p}" for i in range(3)
                       for n, ps in (("conv1", ["weight"]), ("conv2", ["weight"]), ("conv_temp", ["weight"]),
                                     ("norm1", ["weight", "bias"]), ("norm2", ["weight", "bias"]), ("norm_temp", ["weight", "bias"]))
                       for p in ps} | {"mask_decoder.final_conv.weight", "mask_decoder.final_conv.bias"}
    assert ("condition_conv_in.weight" in extras) == (in_channels == 4)


def test_a_single_frame_with_zeroed_temporal_layers_is_the_diffusers_sd_unet():
    """One frame: frame-pooled GroupNorm is plain GroupNorm, so the U-Net is SD's (multi-frame inputs:
    test_lgvi_video_norm)."""
    reference = _diffusers_unet(8).double()
    model = LGVIUNet(tiny.unet_config(8)).double().eval()
    state = model.state_dict()
    state.update(reference.state_dict())
    for key in state:
        if ".attn_temp.to_out.0." in key:
            state[key] = torch.zeros_like(state[key])
    model.load_state_dict(state)
    # odd latent sizes exercise the forwarded upsample sizes; two videos of one frame each
    z, c, ctx = torch.randn(2, 4, 1, 12, 10).double(), torch.randn(2, 4, 1, 12, 10).double(), torch.randn(2, 5, 32).double()
    with torch.no_grad():
        eps, _ = model(z, 10, ctx, c)
        expected = reference(torch.cat([z, c], 1)[:, :, 0], 10, ctx).sample
    torch.testing.assert_close(eps[:, :, 0], expected, rtol=1e-9, atol=1e-9)


def _live_model(in_channels=8):
    model = LGVIUNet(tiny.unet_config(in_channels)).eval()
    model.load_state_dict(tiny.lgvi_unet_state(in_channels))
    return model


def test_temporal_attention_mixes_frames_without_positional_encoding():
    model = _live_model().double()
    z, c, ctx = (torch.randn(*shape, dtype=torch.float64) for shape in ((1, 4, 4, 8, 8), (1, 4, 4, 8, 8), (1, 5, 32)))
    with torch.no_grad():
        eps, _ = model(z, 500, ctx, c)
        order = torch.tensor([2, 0, 3, 1])
        permuted, _ = model(z[:, :, order], 500, ctx, c[:, :, order])
        torch.testing.assert_close(permuted, eps[:, :, order], rtol=1e-9, atol=1e-10)  # permutation-equivariant
        changed = z.clone()
        changed[:, :, 0] += 1.0
        other, _ = model(changed, 500, ctx, c)
    assert (other[:, :, 1:] - eps[:, :, 1:]).abs().max() > 1e-4  # frame 0 influences the other frames


def test_condition_conv_in_variant_adds_a_separate_convolution():
    model = LGVIUNet(tiny.unet_config(4)).eval()
    assert torch.count_nonzero(model.condition_conv_in.weight) == 0  # zero-initialised as upstream
    assert model.conv_in.in_channels == 4
    model.load_state_dict(tiny.lgvi_unet_state(4))
    z, c, ctx = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 32)
    with torch.no_grad():
        with_c, _ = model(z, 10, ctx, c)
        zero_c, _ = model(z, 10, ctx, torch.zeros_like(c))
        torch.nn.init.zeros_(model.condition_conv_in.weight)
        no_weight, _ = model(z, 10, ctx, c)
    assert (with_c - zero_c).abs().max() > 1e-4
    torch.testing.assert_close(no_weight, zero_c)  # only the bias remains with zero weights


def test_mask_decoder_returns_latent_resolution_probabilities():
    model = _live_model()
    z = torch.randn(1, 4, 3, 8, 12)
    with torch.no_grad():
        eps, mask = model(z, 10, torch.randn(1, 4, 32), torch.randn_like(z), return_mask=True)
        _, no_mask = model(z, 10, torch.randn(1, 4, 32), torch.randn_like(z))
    assert eps.shape == z.shape and no_mask is None
    assert mask.shape == (1, 1, 3, 8, 12)
    assert 0 <= float(mask.min()) and float(mask.max()) <= 1


def test_naive_and_sdpa_attention_agree():
    # two attention algorithms round differently in float32 (by CPU): compared in float64
    model = _live_model().double()
    z, c, ctx = (torch.randn(*shape, dtype=torch.float64) for shape in ((1, 4, 3, 8, 8), (1, 4, 3, 8, 8), (1, 5, 32)))
    with torch.no_grad():
        with attention_backend("naive"):
            naive, _ = model(z, 10, ctx, c)
        with attention_backend("sdpa"):
            sdpa, _ = model(z, 10, ctx, c)
    torch.testing.assert_close(naive, sdpa, rtol=0, atol=1e-10)


def test_full_size_parameter_count_matches_the_published_lgvi_i_file():
    """lgvi-i's unet safetensors is 3.73 GB of fp32: SD-1.5 (859.52 M) + temporal attention (49.60 M)
    + mask decoder (24.49 M) = 933.6 M parameters; the 4-channel variant differs by 320."""
    from cococo_core.lgvi.unet_config import LGVIUNetConfig

    with torch.device("meta"):
        concat, separate = LGVIUNet(LGVIUNetConfig(in_channels=8)), LGVIUNet(LGVIUNetConfig(in_channels=4))
    counts = {name: 0 for name in ("total", "temporal", "decoder")}
    for key, param in concat.named_parameters():
        counts["total"] += param.numel()
        if key.startswith("mask_decoder."):
            counts["decoder"] += param.numel()
        elif ".attn_temp." in key or ".norm_temp." in key:
            counts["temporal"] += param.numel()
    assert round(counts["total"] / 1e6, 1) == 933.6 and round(counts["total"] * 4 / 1e9, 2) == 3.73
    assert round(counts["temporal"] / 1e6, 2) == 49.60 and round(counts["decoder"] / 1e6, 2) == 24.49
    assert sum(p.numel() for p in separate.parameters()) - counts["total"] == 320


def test_frame_chunks_give_the_same_result_and_mask():
    """Chunking the per-frame attention/feed-forward layers changes no number: float64, 1e-12, over two videos
    (chunks straddling them) with the mask decoder; the resnets (GroupNorm pooled over frames) stay whole."""
    model = _live_model().double()
    generator = torch.Generator().manual_seed(5)
    z, c = (torch.randn(2, 4, 5, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    ctx = torch.randn(2, 5, 32, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        whole, whole_mask = model(z, 500, ctx, c, return_mask=True)
        for chunk in (1, 3, 4):
            model.frame_chunk = chunk
            eps, mask = model(z, 500, ctx, c, return_mask=True)
            torch.testing.assert_close(eps, whole, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mask, whole_mask, rtol=1e-12, atol=1e-12)
        seen = []
        handle = model.down_blocks[0].attentions[0].transformer_blocks[0].ff.net[0].register_forward_pre_hook(
            lambda module, args: seen.append(args[0].shape[0]))
        model(z, 500, ctx, c)
        handle.remove()
        model.frame_chunk = None
        assert torch.equal(model(z, 500, ctx, c)[0], whole)
    assert seen == [4, 4, 2]  # B·F = 10 frames, 4 at a time
    assert not any("forward" in layer.__dict__ for layer in model.per_frame_layers())
    with pytest.raises(ValueError, match="frame_chunk"):
        model.frame_chunk = 0
