"""LGVI GroupNorm over the frames of each video (official ``nn.GroupNorm`` on (b, c, f, h, w) tensors in
``rovi/models/resnet.py``, ``unet.py``, ``mask_decoder.py``), checked against references written from the
definition of GroupNorm: per video and group, mean and biased variance over C/G x F x H x W values."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import test_lgvi_tiny as tiny
import tiny_models
from cococo_core.lgvi.mask_decoder import MaskDecoder
from cococo_core.lgvi.resnet import VideoResnetBlock
from cococo_core.lgvi.unet import LGVIUNet
from cococo_core.lgvi.video_norm import FramePooledGroupNorm


def video_group_norm(video, groups, weight, bias, eps):
    """The definition on a (B, C, F, H, W) video, in float64."""
    video = video.double()
    grouped = video.reshape(video.shape[0], groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + eps)).reshape(video.shape)
    view = (1, -1, 1, 1, 1)
    return normed * weight.double().view(view) + bias.double().view(view)


def to_video(frames, num_frames):
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    return frames.reshape(-1, num_frames, *frames.shape[1:]).transpose(1, 2)


def to_frames(video):
    return video.transpose(1, 2).reshape(-1, video.shape[1], *video.shape[3:])


class PooledReference(torch.nn.Module):
    """Stands in for a per-frame norm of a diffusers module: the definition over each video's frames."""

    def __init__(self, norm, num_frames):
        super().__init__()
        self.norm, self.num_frames = norm, num_frames

    def forward(self, x):
        n = self.norm
        return to_frames(video_group_norm(to_video(x, self.num_frames), n.num_groups, n.weight, n.bias, n.eps)).to(x.dtype)


def _randomise(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return module


def test_group_norm_pools_the_frames_of_each_video():
    norm = _randomise(FramePooledGroupNorm(4, 12, eps=1e-5), 0).double()
    frames = torch.randn(2 * 3, 12, 5, 7, dtype=torch.float64) * torch.linspace(0.2, 3, 6, dtype=torch.float64).view(6, 1, 1, 1)
    expected = to_frames(video_group_norm(to_video(frames, 3), 4, norm.weight, norm.bias, 1e-5))
    torch.testing.assert_close(norm(frames, 3), expected, rtol=1e-12, atol=1e-12)
    per_frame = F.group_norm(frames, 4, norm.weight, norm.bias, 1e-5)
    assert (norm(frames, 3) - per_frame).abs().max() > 0.1  # frames of different scale: per-frame is far off
    torch.testing.assert_close(norm(frames, 1), per_frame, rtol=1e-12, atol=1e-12)  # one frame = plain GroupNorm
    assert set(norm.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_match_the_definition_to_output_rounding(dtype):
    norm = _randomise(FramePooledGroupNorm(2, 8), 1)
    # a large common offset: half-precision accumulation of the mean/variance would lose the signal
    frames = (torch.randn(4, 8, 16, 16) * 0.5 + 40.0).to(dtype)
    out = norm.to(dtype)(frames, 4)
    assert out.dtype == dtype
    expected = to_frames(video_group_norm(to_video(frames, 4), 2, norm.weight, norm.bias, norm.eps))
    resolution = torch.finfo(dtype).eps
    # error of rounding the inputs/parameters/output to `dtype` only (normalised values are O(1-4))
    torch.testing.assert_close(out.double(), expected, rtol=4 * resolution, atol=8 * resolution * 4)


def test_resnet_block_on_a_multi_frame_video_follows_the_official_formula():
    """GN -> SiLU -> conv -> + proj(SiLU(temb)) -> GN -> SiLU -> conv, + 1x1 shortcut (official ResnetBlock3D)."""
    block = _randomise(VideoResnetBlock(16, 24, 40, groups=4, eps=1e-5), 2).double().eval()
    num_frames, batch = 3, 2
    x = torch.randn(batch * num_frames, 16, 6, 5, dtype=torch.float64)
    x = x * torch.linspace(0.5, 2.5, batch * num_frames, dtype=torch.float64).view(-1, 1, 1, 1)
    temb_video = torch.randn(batch, 40, dtype=torch.float64)
    with torch.no_grad():
        out = block(x, temb_video.repeat_interleave(num_frames, 0), num_frames)
        video = to_video(x, num_frames)
        h = F.silu(video_group_norm(video, 4, block.norm1.weight, block.norm1.bias, 1e-5))
        h = to_video(F.conv2d(to_frames(h), block.conv1.weight, block.conv1.bias, padding=1), num_frames)
        h = h + F.linear(F.silu(temb_video), block.time_emb_proj.weight, block.time_emb_proj.bias)[:, :, None, None, None]
        h = F.silu(video_group_norm(h, 4, block.norm2.weight, block.norm2.bias, 1e-5))
        h = F.conv2d(to_frames(h), block.conv2.weight, block.conv2.bias, padding=1)
        expected = F.conv2d(x, block.conv_shortcut.weight, block.conv_shortcut.bias) + h
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert set(block.state_dict()) == {
        f"{name}.{p}" for name in ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut") for p in ("weight", "bias")
    }


def _unet_without_temporal_attention(seed=0):
    model = LGVIUNet(tiny.unet_config(8)).double().eval()
    state = tiny.lgvi_unet_state(8, seed)
    for key in state:
        if ".attn_temp.to_out.0." in key:
            state[key] = torch.zeros_like(state[key])
    model.load_state_dict(state)
    return model.double()


def test_unet_equals_diffusers_with_frame_pooled_resnet_norms():
    """Temporal attention zeroed: the LGVI U-Net is SD's U-Net run per frame except that every ResNet
    norm1/norm2 and conv_norm_out normalise over all frames of the video."""
    from diffusers import UNet2DConditionModel

    model = _unet_without_temporal_attention()
    reference = UNet2DConditionModel(**{**tiny_models.TINY_UNET_CONFIG, "in_channels": 8}).double().eval()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if k in reference.state_dict()})
    num_frames = 3
    for name, module in list(reference.named_modules()):
        if name.endswith(("resnets.0", "resnets.1", "resnets.2")):
            module.norm1 = PooledReference(module.norm1, num_frames)
            module.norm2 = PooledReference(module.norm2, num_frames)
    reference.conv_norm_out = PooledReference(reference.conv_norm_out, num_frames)
    # odd latent sizes exercise the forwarded upsample sizes; frames of different scale make the pooling visible
    z = torch.randn(1, 4, num_frames, 12, 10, dtype=torch.float64) * torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64).view(1, 1, 3, 1, 1)
    c, ctx = torch.randn(1, 4, num_frames, 12, 10, dtype=torch.float64), torch.randn(1, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        eps, _ = model(z, 10, ctx, c)
        frames_in = torch.cat([z, c], 1)[0].transpose(0, 1)
        expected = reference(frames_in, 10, ctx.repeat(num_frames, 1, 1)).sample
    torch.testing.assert_close(eps[0].transpose(0, 1), expected, rtol=1e-9, atol=1e-9)


def test_changing_one_frame_changes_the_others_through_the_norms_and_permutations_commute():
    model = _unet_without_temporal_attention(seed=3)
    z, c, ctx = torch.randn(1, 4, 4, 8, 8).double(), torch.randn(1, 4, 4, 8, 8).double(), torch.randn(1, 5, 32).double()
    with torch.no_grad():
        eps, _ = model(z, 500, ctx, c)
        order = torch.tensor([2, 0, 3, 1])
        permuted, _ = model(z[:, :, order], 500, ctx, c[:, :, order])
        changed = z.clone()
        changed[:, :, 0] = 3.0 * changed[:, :, 0] + 1.0
        other, _ = model(changed, 500, ctx, c)
        alone, _ = model(z[:, :, 1:2], 500, ctx, c[:, :, 1:2])
    torch.testing.assert_close(permuted, eps[:, :, order], rtol=1e-9, atol=1e-10)  # pooled statistics are order-free
    # no temporal attention left: only the frame-pooled GroupNorms couple the frames
    assert (other[:, :, 1:] - eps[:, :, 1:]).abs().max() > 1e-3
    assert (alone[:, :, 0] - eps[:, :, 1]).abs().max() > 1e-3


def test_mask_decoder_follows_the_official_formula():
    """projects: conv -> GN(video) -> ReLU -> conv -> GN(video) -> ReLU -> Conv1d over frames -> GN over (C/G x F)
    per pixel -> ReLU; nearest x2 after the first; final 1x1 conv, sigmoid (official mask_decoder.py)."""
    decoder = _randomise(MaskDecoder([64, 32, 32], reduced_channels=64), 4).double().eval()
    num_frames = 3
    shapes = ((64, 4, 5), (32, 8, 10), (32, 8, 10))
    features = [torch.randn(num_frames, ch, h, w, dtype=torch.float64) * 2 + 0.5 for ch, h, w in shapes]

    def project(p, video):
        h = F.relu(video_group_norm(to_video(F.conv2d(to_frames(video), p.conv1.weight, padding=1), num_frames), 32, p.norm1.weight, p.norm1.bias, 1e-5))
        h = F.relu(video_group_norm(to_video(F.conv2d(to_frames(h), p.conv2.weight, padding=1), num_frames), 32, p.norm2.weight, p.norm2.bias, 1e-5))
        b, ch, f, hh, ww = h.shape
        seq = F.conv1d(h.permute(0, 3, 4, 1, 2).reshape(-1, ch, f), p.conv_temp.weight, padding=1)
        grouped = seq.reshape(seq.shape[0], 32, -1)
        mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
        seq = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape(seq.shape) * p.norm_temp.weight.view(1, -1, 1) + p.norm_temp.bias.view(1, -1, 1)
        return F.relu(seq).reshape(b, hh, ww, ch, f).permute(0, 3, 4, 1, 2)

    with torch.no_grad():
        x = to_video(features[0], num_frames)
        for i, p in enumerate(decoder.projects):
            x = project(p, x)
            if i == 0:
                x = to_video(F.interpolate(to_frames(x), scale_factor=2, mode="nearest"), num_frames)
            if i + 1 < len(features):
                x = torch.cat([x, to_video(features[i + 1], num_frames)], dim=1)
        expected = torch.sigmoid(F.conv2d(to_frames(x), decoder.final_conv.weight, decoder.final_conv.bias))
        out = decoder(features, num_frames)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
