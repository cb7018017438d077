"""Random-weight models for the benchmarks: the full-size CoCoCo video U-Net and SD-1.x VAE, or tiny ones.

Weights are random (no checkpoint can be downloaded here); the motion modules get a non-zero ``proj_out`` so
they are not the identity. Everything is built directly on the target device in the target dtype, so a GPU
run never holds the fp32 model in host memory.
"""
from __future__ import annotations

import torch

from cococo_core.models.sd15 import SD15_INPAINT_UNET_CONFIG
from cococo_core.models.video_unet import VideoUNet

# diffusers' AutoencoderKL as SD-1.x ships it (vae/config.json of stable-diffusion-v1-5-inpainting)
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
)
# small enough for a CPU test: every level of the real layouts, 32-channel blocks
TINY_UNET_CONFIG = dict(
    sample_size=8, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
    block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)


def video_unet(*, tiny: bool = False, device="cpu", dtype=torch.float32, seed: int = 0) -> VideoUNet:
    """The SD-1.5-inpainting U-Net + 21 motion modules (1465.4 M parameters), or the tiny layout, in eval mode."""
    from diffusers import UNet2DConditionModel  # noqa: PLC0415 - heavy import

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_UNET_CONFIG if tiny else SD15_INPAINT_UNET_CONFIG))
        video = VideoUNet(unet, motion_init="official")
        with torch.no_grad():  # non-zero proj_out, so the motion modules are not the identity
            for _, module in video.motion_modules:
                torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.02)
    return video.to(device, dtype).eval().requires_grad_(False)


def vae(*, tiny: bool = False, device="cpu", dtype=torch.float32, seed: int = 0):
    """An SD-1.x ``AutoencoderKL`` (83.7 M parameters) or a tiny one, random weights, eval mode."""
    from diffusers import AutoencoderKL  # noqa: PLC0415

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD15_VAE_CONFIG))
    return model.to(device, dtype).eval().requires_grad_(False)


def text_width(tiny: bool) -> int:
    return (TINY_UNET_CONFIG if tiny else SD15_INPAINT_UNET_CONFIG)["cross_attention_dim"]
