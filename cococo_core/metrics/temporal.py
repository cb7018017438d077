"""TC, temporal consistency (CoCoCo, AAAI 2025, Table 1: "cosine similarity in feature space (extracted by
CLIP) ... between consecutive frames", 97.2 for CoCoCo):

    TC = 100 / (F - 1) * sum_{f=1}^{F-1} cos(E_I(O_f), E_I(O_{f+1}))

with E_I the projected CLIP image embedding of a whole output frame. A ComfyUI ``clip_vision`` ViT-L/14
file is enough (no text tower needed). NaN for a single frame.
"""
from __future__ import annotations

import math

import torch


def temporal_consistency(frames, clip, *, image_embeddings=None) -> float:
    """TC of ``frames`` (module docstring); ``image_embeddings``: the frames' ``clip.image_embeddings`` when
    already computed."""
    if image_embeddings is None:
        image_embeddings = clip.image_embeddings(frames)
    embeddings = torch.nn.functional.normalize(image_embeddings.double(), dim=-1)
    if embeddings.shape[0] < 2:
        return math.nan
    return float(100 * (embeddings[:-1] * embeddings[1:]).sum(-1).mean())
