"""SAM 2 / SAM 2.1 tracking equals the official ``sam2`` package (facebookresearch/sam2 1.1.0).

A tiny random-weight model is built by the official package's own model code (tests/sam2_reference.py), saved as
the ``{"model": state_dict}`` file a user has, loaded by the pack (converted in memory to transformers'
``Sam2VideoModel``) and run on the same JPEG frames and prompts as the official ``SAM2VideoPredictor``
(``add_new_points_or_box``, ``propagate_in_video`` forward then backward). The mask logits at frame resolution
must agree to a relative L2 error of 1e-4 per object (float32 on the CPU; compared in float64).

The official predictor runs on the CPU without changes to its device choice; two CPU-only patches are described
in ``sam2_reference.run_official`` (connected components for hole filling, float32 reading of the bfloat16
memory bank). Needs the ``sam2`` package (``.ci/stage-15-tracker-references.sh`` builds a venv with it); skipped
where it is missing.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sam2", reason="the official sam2 package is not installed (.ci/stage-15-tracker-references.sh)")
pytest.importorskip("hydra", reason="hydra-core (needed by the official sam2 package) is not installed")

import sam2_reference as reference  # noqa: E402

from cococo_core.masks.tracking import load_tracker, track_masks  # noqa: E402

FRAMES, HEIGHT, WIDTH = 6, 48, 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A moving disc and a sliding block with noise, as JPEG files (``00000.jpg``...) and as decoded uint8."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("jpeg")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for frame in range(FRAMES):
        image = np.full((HEIGHT, WIDTH, 3), 40, np.int64)
        image[(xx - 15 - 4 * frame) ** 2 + (yy - 20) ** 2 < 100] = (220, 60, 60)
        image[30:44, 40 - frame:56 - frame] = (40, 200, 90)
        image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{frame:05d}.jpg", quality=95)
    decoded = np.stack([np.asarray(Image.open(folder / f"{f:05d}.jpg").convert("RGB")) for f in range(FRAMES)])
    return folder, decoded


def _rel_l2(ours: torch.Tensor, official: torch.Tensor) -> float:
    ours, official = ours.double(), official.double()
    return float((ours - official).norm() / official.norm())


# (frame, object id, points, labels, box) for the official predictor; the same prompts as pack strings
OFFICIAL_PROMPTS = [
    (0, 2, [[45, 36], [20, 20]], [1, 0], None),
    (2, 1, None, None, [30, 10, 52, 32]),
    (4, 3, [[12, 40]], [0], [2, 28, 30, 47]),
]
BOXES = ["30,10,52,32@2#1", "2,28,30,47@4#3"]
POINTS = ["45,36@0#2", "20,20@0:neg#2", "12,40@4:neg#3"]


@pytest.mark.parametrize("version", ["sam2.1", "sam2"])
def test_tracked_logits_equal_the_official_predictor(version, clip, tmp_path):
    folder, decoded = clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor, state = reference.build_predictor(version)
        official = reference.run_official(predictor, folder, OFFICIAL_PROMPTS)
    path = reference.save_original(state, tmp_path / f"{version}_hiera_tiny.pt")
    tracker = load_tracker(path, image_size=reference.IMAGE_SIZE)
    assert tracker.kind == "sam2" and tracker.variant.startswith(version + " tiny")
    done = []
    result = track_masks(decoded, tracker, boxes=BOXES, points=POINTS, progress=lambda i, n, _: done.append((i, n)))
    assert result.object_ids == [1, 2, 3]
    assert result.logits.shape == (3, FRAMES, HEIGHT, WIDTH) and result.logits.dtype == torch.float32
    for row, object_id in enumerate(result.object_ids):
        expected = torch.stack([official[object_id][f] for f in range(FRAMES)])
        assert _rel_l2(result.logits[row], expected) <= TOLERANCE, (version, object_id)
        # the random model must make masks that are neither empty nor full, so the comparison means something
        assert 0.01 < float((expected > 0).float().mean()) < 0.99
    assert torch.equal(result.masks, (result.logits > 0).any(0))
    assert done[-1][0] == done[-1][1] and len(done) == done[-1][1]


def test_every_tensor_of_the_file_is_used(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, state = reference.build_predictor("sam2.1")
    extra = dict(state, **{"memory_attention.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="1 unexpected"):
        load_tracker(reference.save_original(extra, tmp_path / "extra.pt"), image_size=reference.IMAGE_SIZE)
    missing = {k: v for k, v in state.items() if k != "memory_encoder.out_proj.bias"}
    with pytest.raises(ValueError, match="1 missing"):
        load_tracker(reference.save_original(missing, tmp_path / "missing.pt"), image_size=reference.IMAGE_SIZE)
