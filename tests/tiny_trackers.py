"""Tiny random-weight trackers in the layouts users have, for the tracker tests, node, CLI and workflows.

``sam2_folder()``: a Hugging Face ``sam2_video`` folder (config.json + model.safetensors) of a SAM 2.1 with the
released tiny Hiera layout (blocks 1, 2, 7, 2) at width 8, 128-wide prompt/memory modules and a 256 px input, so a
frame takes milliseconds. (Original ``sam2.1_hiera_*.pt`` files are built by the official package itself in
tests/sam2_reference.py, where it is installed.)
"""
from __future__ import annotations

from pathlib import Path

import torch

import tiny_models

IMAGE_SIZE = 256


def sam2_video_config():
    from transformers import (Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoMaskDecoderConfig,
                              Sam2VideoPromptEncoderConfig, Sam2VisionConfig)

    hiera = Sam2HieraDetConfig(hidden_size=8, embed_dim_per_stage=[8, 16, 32, 64], image_size=[IMAGE_SIZE] * 2)
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=128,
                              backbone_feature_sizes=[[IMAGE_SIZE // s] * 2 for s in (4, 8, 16)])
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=128, image_size=IMAGE_SIZE),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=128, mlp_dim=256, iou_head_hidden_dim=64),
        image_size=IMAGE_SIZE, memory_attention_hidden_size=128, memory_attention_num_layers=2,
        memory_attention_feed_forward_hidden_size=256, memory_attention_rope_feat_sizes=[IMAGE_SIZE // 16] * 2,
        memory_encoder_hidden_size=128, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=256,
    )


def write_sam2_folder(folder: Path, seed: int = 0) -> Path:
    from transformers import Sam2VideoModel

    torch.manual_seed(seed)
    model = Sam2VideoModel(sam2_video_config()).eval()
    with torch.no_grad():  # PyTorch's default init of the original modules; random values where SAM 2 has zeros
        for name, tensor in model.named_parameters():
            if tensor.dim() >= 2 and "embed" not in name:
                torch.nn.init.kaiming_uniform_(tensor, a=5 ** 0.5)
            if not tensor.any():
                tensor.normal_(0.0, 0.1)
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(2.0)  # objects mostly "present"
    model.save_pretrained(str(folder))
    return folder


def sam2_folder() -> Path:
    return tiny_models._cached(("sam2.1-hiera-tiny-hf",), write_sam2_folder)
