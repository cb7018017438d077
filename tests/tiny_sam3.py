"""Tiny random-weight SAM 3 video models for the tests (transformers layout), biased so that the detector finds
objects: the dot-product score is made a positive constant plus the query's own variation, and the presence
head says "present"."""
from __future__ import annotations

from pathlib import Path

import torch

IMAGE = 112  # 8 x 8 patches of 14
GRID = IMAGE // 14
FEATURE_SIZES = [[GRID * 4] * 2, [GRID * 2] * 2, [GRID] * 2]


def tiny_sam3_config(**video):
    from transformers import Sam3VideoConfig

    vit = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=1, image_size=IMAGE, patch_size=14, window_size=GRID // 2,
               global_attn_indexes=[1], pretrain_image_size=IMAGE // 2, layer_norm_eps=1e-5)
    detector = dict(
        vision_config=dict(model_type="sam3_vision_model", backbone_config=vit, backbone_feature_sizes=FEATURE_SIZES),
        text_config=dict(model_type="clip_text_model", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, projection_dim=64, vocab_size=49408, max_position_embeddings=32),
        geometry_encoder_config=dict(num_layers=1, intermediate_size=256),
        detr_encoder_config=dict(num_layers=1, intermediate_size=256),
        detr_decoder_config=dict(num_layers=1, num_queries=6, intermediate_size=256),
    )
    tracker = dict(image_size=IMAGE, memory_attention_num_layers=1, memory_attention_rope_feat_sizes=[GRID, GRID],
                   memory_attention_feed_forward_hidden_size=256,
                   vision_config=dict(model_type="sam3_vision_model", backbone_config=dict(vit),
                                      backbone_feature_sizes=FEATURE_SIZES))
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker, **video)
    config.image_size = IMAGE
    config.low_res_mask_size = GRID * 4
    return config


def tiny_sam3_model(seed: int = 0, **video):
    from transformers import Sam3VideoModel

    torch.manual_seed(seed)
    return bias_towards_detections(Sam3VideoModel(tiny_sam3_config(**video)).eval())


def bias_towards_detections(model):
    """Make a random-weight ``Sam3VideoModel`` detect: every query scores a positive offset plus its own variation,
    and the presence head says "present" (in place; returns the model)."""
    detector = model.detector_model
    with torch.no_grad():
        detector.dot_product_scoring.text_proj.weight.zero_()
        detector.dot_product_scoring.text_proj.bias.fill_(1.0)
        detector.dot_product_scoring.query_proj.bias.fill_(0.19)
        detector.detr_decoder.presence_head.layer3.bias.fill_(5.0)
    return model


def write_sam3_folder(folder: Path, seed: int = 0, **video) -> Path:
    """A Hugging Face ``Sam3VideoModel`` folder with the tiny CLIP tokenizer of :mod:`tiny_models`."""
    import tiny_models

    tiny_sam3_model(seed, **video).save_pretrained(folder)
    tiny_models.write_tokenizer(folder)
    return folder


def moving_disc_frames(count: int, size: int = IMAGE) -> torch.Tensor:
    """(count, size, size, 3) uint8: a red disc moving right over a smooth background."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    frames = []
    for t in range(count):
        image = torch.stack([0.3 + 0.2 * torch.sin(xx / 17.0 + t * 0.3), 0.4 + 0.2 * torch.cos(yy / 23.0),
                             torch.full((size, size), 0.5)], dim=-1)
        centre_x, centre_y = size * 0.3 + 2 * t, size * 0.45
        image[((xx - centre_x) ** 2 + (yy - centre_y) ** 2) < (size * 0.12) ** 2] = torch.tensor([0.9, 0.2, 0.1])
        frames.append((image * 255).round().to(torch.uint8))
    return torch.stack(frames)
