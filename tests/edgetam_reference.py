"""A tiny random-weight EdgeTAM built by the OFFICIAL code (facebookresearch/EdgeTAM, a fork of ``sam2``) and run by
its ``SAM2VideoPredictor``: the reference of tests/test_tracking_edgetam.py.

EdgeTAM is not on the package index and its package is also called ``sam2``, so it cannot share a process with the
official SAM 2 package: this script runs in a subprocess with the EdgeTAM checkout first on ``sys.path``
(``EDGETAM_REPO``). Usage::

    python tests/edgetam_reference.py EDGETAM_REPO OUT.pt [SEED]

writes ``{"model": state_dict}`` (the layout of the released ``edgetam.pt``) to OUT.pt and, next to it,
OUT.pt.logits.pt: the predictor's mask logits at frame resolution for the prompts of :data:`PROMPTS` on
:func:`frames`.

The model is the repository's ``sam2/configs/edgetam.yaml`` (RepViT-M1 trunk through timm, 2-layer memory attention
with RoPE cross-attention to the 2-D perceiver latents, 2-layer perceiver) with narrower widths, fewer blocks and a
256 px input, plus the post-processing overrides of ``build_sam2_video_predictor(apply_postprocessing=True)``.
Patched: timm's ``create_model`` gets ``pretrained=False`` and the tiny RepViT widths (the official backbone asks
for the ImageNet weights, which cannot be downloaded here), and ``sam2._C`` (a CUDA kernel for hole filling) gets a
scikit-image stand-in.
"""
from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 256
REPVIT_WIDTHS = (8, 16, 24, 32)
REPVIT_DEPTHS = (1, 1, 2, 1)
FRAMES, HEIGHT, WIDTH = 5, 48, 64
# (frame, object id, box, points [(x, y, positive)]): a box on frame 2 (forward and backward), clicks on frame 2.
# Each object runs in its own predictor state: the official 2-D perceiver (``PerceiverResampler.forward_2d``,
# ``expand(B, ...).view(...)``) fails for a batch of more than one object, and the predictor batches the objects.
PROMPTS = ((2, 1, (10.0, 8.0, 40.0, 36.0), ()), (2, 2, None, ((50.0, 20.0, True), (30.0, 30.0, False))))


def frames() -> np.ndarray:
    """A small deterministic clip: a bright square drifting right over a gradient, uint8 (F, H, W, 3)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    clip = []
    for index in range(FRAMES):
        frame = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
        frame[10:34, 12 + 3 * index:36 + 3 * index] = (240, 200, 40)
        clip.append(frame)
    return np.stack(clip)


def build_predictor(repo: str, seed: int = 0):
    sys.path.insert(0, repo)
    import timm.models

    import sam2  # the EdgeTAM fork
    import sam2.modeling.backbones.timm as official_timm

    real_create = timm.models.create_model

    def tiny_create(name, pretrained=False, **kwargs):
        return real_create(name.split(".")[0], pretrained=False, embed_dim=REPVIT_WIDTHS, depth=REPVIT_DEPTHS,
                           **kwargs)

    official_timm.create_model = tiny_create
    from sam2_reference import _connected_components_reference, apply_postprocessing  # tests/: sys.path[0]

    sys.modules["sam2._C"] = types.SimpleNamespace(get_connected_componnets=_connected_components_reference)
    sam2._C = sys.modules["sam2._C"]

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = OmegaConf.load(str(Path(repo) / "sam2" / "configs" / "edgetam.yaml"))
    model = config.model
    model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    model.image_size = IMAGE_SIZE
    neck = model.image_encoder.neck
    neck.d_model, neck.backbone_channel_list = 128, list(REPVIT_WIDTHS[::-1])
    neck.position_encoding.num_pos_feats = 128
    grid = IMAGE_SIZE // 16
    attention = model.memory_attention
    attention.d_model = attention.layer.d_model = 128
    attention.layer.dim_feedforward = 128
    attention.layer.self_attention.embedding_dim = 128
    attention.layer.self_attention.feat_sizes = [grid, grid]
    cross = attention.layer.cross_attention
    cross.embedding_dim, cross.kv_in_dim = 128, 64  # transformers fixes the memory width at 64
    cross.q_sizes, cross.k_sizes = [grid, grid], [4, 4]
    encoder = model.memory_encoder
    encoder.out_dim, encoder.in_dim = 64, 128
    encoder.mask_downsampler.embed_dim = 128
    encoder.position_encoding.num_pos_feats = 64
    encoder.fuser.layer.dim = 128
    perceiver = model.spatial_perceiver
    perceiver.dim, perceiver.dim_head, perceiver.ff_mult = 64, 64, 2
    perceiver.num_latents, perceiver.num_latents_2d = 8, 16
    perceiver.position_encoding.num_pos_feats = 64
    apply_postprocessing(model)
    torch.manual_seed(seed)
    predictor = instantiate(model, _recursive_=True).eval()
    with torch.no_grad():  # constant-initialised tensors (zeros, norm scales of one) get random values too, so a
        # swapped or dropped tensor changes the result
        for parameter in predictor.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.5)
            elif parameter.numel() > 1 and bool((parameter == parameter.flatten()[0]).all()):
                parameter.add_(torch.randn_like(parameter) * 0.2)
        for name, buffer in predictor.named_buffers():  # RepViT's batch-norm statistics
            if name.endswith("running_var"):
                buffer.copy_(torch.rand_like(buffer) + 0.5)
            elif name.endswith("running_mean"):
                buffer.copy_(torch.randn_like(buffer) * 0.1)
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)  # objects mostly "present"
        for hypernetwork in predictor.sam_mask_decoder.output_hypernetworks_mlps:  # mask logits of order 1, far
            hypernetwork.layers[-1].weight.mul_(20.0)  # from the ties at 0 that hole filling would amplify
    return predictor


def run(predictor, clip: np.ndarray) -> torch.Tensor:
    """Mask logits (objects, F, H, W) at frame resolution, the official way: frames resized by PIL to the model's
    size and ImageNet-normalised (``load_video_frames``), prompts added, forward then backward propagation."""
    from PIL import Image

    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    images = torch.stack([
        (torch.from_numpy(np.asarray(Image.fromarray(f).resize((IMAGE_SIZE, IMAGE_SIZE))) / 255.0)
         .permute(2, 0, 1).float() - mean) / std for f in clip])
    logits = torch.full((len(PROMPTS), clip.shape[0], clip.shape[1], clip.shape[2]), -1024.0)
    for index, (frame, object_id, box, points) in enumerate(PROMPTS):
        state = _init_state(predictor, images, clip.shape[1], clip.shape[2])
        kwargs = {}
        if box is not None:
            kwargs["box"] = np.array(box, dtype=np.float32)
        if points:
            kwargs["points"] = np.array([p[:2] for p in points], dtype=np.float32)
            kwargs["labels"] = np.array([1 if p[2] else 0 for p in points], dtype=np.int32)
        predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=object_id, **kwargs)
        for reverse in (False, True):
            for tracked, _, masks in predictor.propagate_in_video(state, reverse=reverse):
                logits[index, tracked] = masks[0, 0].float()
    return logits


def _init_state(predictor, images: torch.Tensor, height: int, width: int) -> dict:
    """``SAM2VideoPredictor.init_state`` with the frames given as a tensor (it only reads them from a folder or a
    video file); the state fields are the ones ``init_state`` fills."""
    import sam2.sam2_video_predictor as official

    original = official.load_video_frames
    official.load_video_frames = lambda **kwargs: (images, height, width)
    try:
        return predictor.init_state(video_path="<tensor>", offload_video_to_cpu=True, offload_state_to_cpu=False)
    finally:
        official.load_video_frames = original


def main(repo: str, out: str, seed: int = 0) -> None:
    with torch.no_grad():
        predictor = build_predictor(repo, seed)
        torch.save({"model": predictor.state_dict()}, out)
        logits = run(predictor, frames())
    torch.save(logits, out + ".logits.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:4]))
