"""The SD-1.5-inpainting U-Net config (diffusers ``UNet2DConditionModel``), for random-weight builds and
for the expected motion-tensor layout when no base model is at hand (converter, benchmark)."""
from __future__ import annotations

import torch

SD15_INPAINT_UNET_CONFIG = dict(
    sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def sd15_motion_shapes(text_dim: int = 768) -> dict[str, torch.Size]:
    """Names and shapes of the 840 motion tensors of the SD-1.5 CoCoCo U-Net (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    from .video_unet import VideoUNet

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**SD15_INPAINT_UNET_CONFIG, "cross_attention_dim": text_dim})
        video = VideoUNet(unet, motion_init="empty")
    return {k: v.shape for k, v in video.motion_state_dict().items()}
