"""A tiny random-weight SAM 2.1 built by the official ``sam2`` package (facebookresearch/sam2 1.1.0) and run by its
``SAM2VideoPredictor``: the reference of tests/test_tracking_sam2_parity.py. Only importable where ``sam2`` is.

The model is ``configs/sam2.1/sam2.1_hiera_t.yaml`` (or SAM 2's ``configs/sam2/sam2_hiera_t.yaml``; the released
tiny layout: Hiera blocks (1, 2, 7, 2), its windows and global blocks) with narrower widths and a 256 px input,
built with the package's own hydra ``instantiate`` and the post-processing overrides of
``build_sam2_video_predictor(apply_postprocessing=True)``.
Its state dict is saved as ``{"model": ...}``, the layout of the released ``sam2.1_hiera_*.pt`` files.
"""
from __future__ import annotations

import importlib.resources
import warnings
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 256


def _connected_components_reference(mask: torch.Tensor):
    """Stand-in for ``sam2._C.get_connected_componnets`` (a CUDA kernel; not built for the CPU): labels and areas
    of the 8-connected components of a (N, 1, H, W) binary mask, by scikit-image's ``measure.label``."""
    from skimage.measure import label

    labels = np.zeros(mask.shape, dtype=np.int32)
    areas = np.zeros(mask.shape, dtype=np.int32)
    for index in range(mask.shape[0]):
        found = label(mask[index, 0].cpu().numpy().astype(bool), connectivity=2)
        counts = np.bincount(found.ravel())
        counts[0] = 0
        labels[index, 0] = found
        areas[index, 0] = counts[found]
    return torch.from_numpy(labels), torch.from_numpy(areas)


def apply_postprocessing(model) -> None:
    """The hydra overrides of ``build_sam2_video_predictor(apply_postprocessing=True)`` (``build_sam.py``; the same
    in the EdgeTAM fork) on a model config."""
    model.sam_mask_decoder_extra_args = {"dynamic_multimask_via_stability": True,
                                         "dynamic_multimask_stability_delta": 0.05,
                                         "dynamic_multimask_stability_thresh": 0.98}
    model.binarize_mask_from_pts_for_mem_enc = True
    model.fill_hole_area = 8


CONFIGS = {"sam2.1": "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2": "configs/sam2/sam2_hiera_t.yaml"}


def build_predictor(version: str = "sam2.1", seed: int = 0):
    """(SAM2VideoPredictor on the CPU, its state dict) for a tiny random SAM 2.1 (or SAM 2: ``version="sam2"``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = OmegaConf.load(str(importlib.resources.files("sam2") / CONFIGS[version]))
    model = config.model
    model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    model.image_size = IMAGE_SIZE
    model.image_encoder.trunk.embed_dim = 8
    neck = model.image_encoder.neck
    neck.d_model, neck.backbone_channel_list = 128, [64, 32, 16, 8]
    neck.position_encoding.num_pos_feats = 128
    attention = model.memory_attention
    attention.d_model = attention.layer.d_model = 128
    attention.layer.dim_feedforward, attention.num_layers = 256, 2
    for block in (attention.layer.self_attention, attention.layer.cross_attention):
        block.embedding_dim, block.feat_sizes = 128, [IMAGE_SIZE // 16] * 2
    encoder = model.memory_encoder
    encoder.in_dim = encoder.mask_downsampler.embed_dim = encoder.fuser.layer.dim = 128
    apply_postprocessing(model)
    torch.manual_seed(seed)
    predictor = instantiate(model, _recursive_=True)
    with torch.no_grad():  # the parameters SAM 2 initialises to zero get random values too
        for tensor in predictor.parameters():
            if not tensor.any():
                tensor.normal_(0.0, 0.5)
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)  # objects mostly "present"
    return predictor.eval(), {k: v.clone() for k, v in predictor.state_dict().items()}


def save_original(state: dict, path: Path) -> Path:
    torch.save({"model": state}, path)
    return path


def run_official(predictor, jpeg_folder: Path, prompts) -> dict[int, dict[int, torch.Tensor]]:
    """{object id: {frame: (H, W) logits}} from ``init_state`` / ``add_new_points_or_box`` / ``propagate_in_video``
    forward then backward, the official notebook's order. ``prompts``: (frame, object id, points, labels, box).

    Two CPU-only patches, nothing else: (1) the package finds connected components for hole filling with a CUDA
    kernel (a CPU build skips hole filling with a warning); a scikit-image reference stands in for it. (2) the
    predictor stores the memory bank in bfloat16 (``_run_single_frame_inference``) and reads it under CUDA
    autocast; on the CPU in float32 the memory attention's linear layers refuse bfloat16 input, so the memory is
    cast to float32 where it enters ``memory_attention`` (the stored values keep their bfloat16 rounding)."""
    import sam2.utils.misc as misc

    original = misc.get_connected_components
    misc.get_connected_components = _connected_components_reference
    attention = predictor.memory_attention
    attention_forward = attention.forward

    def float32_memory(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return attention_forward(curr, memory.float(), curr_pos, memory_pos, num_obj_ptr_tokens)

    attention.forward = float32_memory
    try:
        with torch.inference_mode():
            state = predictor.init_state(video_path=str(jpeg_folder))
            for frame, object_id, points, labels, box in prompts:
                predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=object_id, points=points,
                                                labels=labels, box=box)
            out: dict[int, dict[int, torch.Tensor]] = {}
            for reverse in (False, True):
                for frame, ids, masks in predictor.propagate_in_video(state, reverse=reverse):
                    for row, object_id in enumerate(ids):
                        out.setdefault(object_id, {})[frame] = masks[row, 0].float().cpu()
    finally:
        misc.get_connected_components = original
        del attention.forward
    return out
