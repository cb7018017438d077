"""The tracker interface (cococo_core.masks.tracking) and the SAM 2 backend on a tiny Hugging Face folder.

References from outside the code under test: transformers' own ``Sam2VideoInferenceSession`` +
``propagate_in_video_iterator`` pipeline (the same weights and pixels), scikit-image's 8-connected component
labelling for SAM 2's hole filling (``sam2/utils/misc.py`` ``fill_holes_in_mask_scores``), and hand-written
expectations of the prompt syntax. Numbers equal to the official ``sam2`` package: test_tracking_sam2_parity.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_trackers
from cococo_core.hooks import Cancelled
from cococo_core.masks.tracking import (BoxPrompt, PointPrompt, TrackResult, assign_object_ids, collect_prompts,
                                        load_tracker, parse_box, parse_point, select_objects, track_masks)
from cococo_core.masks.tracking.holes import fill_small_holes, small_background_components
from cococo_core.masks.tracking.sam2 import Sam2Tracker

HEIGHT, WIDTH = 40, 56


@pytest.fixture(scope="module")
def tracker() -> Sam2Tracker:
    return load_tracker(tiny_trackers.sam2_folder())


def _clip(count: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((count, HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


# -- prompts --------------------------------------------------------------------------------------------------

def test_prompt_strings():
    assert parse_box("10,20,30,40") == BoxPrompt(10, 20, 30, 40, 0, None)
    assert parse_box(" 1.5, 2 ,30,40 @ 7 #3") == BoxPrompt(1.5, 2, 30, 40, 7, 3)
    assert parse_point("5,6") == PointPrompt(5, 6, 0, True, None)
    assert parse_point("5,6@2:neg") == PointPrompt(5, 6, 2, False, None)
    assert parse_point("5,6@2:pos#4") == PointPrompt(5, 6, 2, True, 4)
    for bad in ("1,2,3", "1,2,3,4@x", "30,40,10,20", "nan,1,2,3", "1,2,3,4@-1"):
        with pytest.raises(ValueError, match="box"):
            parse_box(bad)
    for bad in ("1", "1,2:maybe", "1,2@"):
        with pytest.raises(ValueError, match="point"):
            parse_point(bad)


def test_object_ids_boxes_start_objects_points_refine_the_frames_single_box():
    prompts = assign_object_ids([BoxPrompt(0, 0, 9, 9, 0), BoxPrompt(5, 5, 20, 20, 3, object_id=1),
                                 PointPrompt(3, 3, 0), PointPrompt(4, 4, 3, False), PointPrompt(1, 1, 5),
                                 PointPrompt(2, 2, 5, False)])
    # the explicit id 1 is taken, so the first box gets 2; the clicks on frame 0 and 3 refine those frames' boxes;
    # the clicks on frame 5 (no box there) form one new object
    assert [p.object_id for p in prompts] == [2, 1, 2, 1, 3, 3]


def test_prompts_are_checked_against_the_clip():
    assert collect_prompts([(1, 2, 10, 12)], [(3, 4, 1, False)], 2, (HEIGHT, WIDTH))[1].positive is False
    with pytest.raises(ValueError, match="frame 5 but the video has 3 frames"):
        collect_prompts(["1,1,5,5@5"], None, 3, (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="outside"):
        collect_prompts(None, ["100,5"], 3, (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="outside"):
        collect_prompts(["60,1,80,5"], None, 3, (HEIGHT, WIDTH))


def test_selection_and_union():
    logits = torch.tensor([-1.0, 2.0, -3.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2).clone()
    logits[2, 1] = 5.0
    result = TrackResult((logits > 0).any(0), logits, [4, 7, 9], [0.2, 0.9, 0.5])
    top = select_objects(result, "top", top_k=2)
    assert top.object_ids == [7, 9] and top.scores == [0.9, 0.5]
    only = select_objects(result, [4, 9])
    assert only.object_ids == [4, 9] and only.masks[0].sum() == 0 and only.masks[1].all()
    with pytest.raises(ValueError, match=r"\[5\] not tracked; the tracked ids are \[4, 7, 9\]"):
        select_objects(result, [5])
    with pytest.raises(ValueError, match="no per-object scores"):
        select_objects(TrackResult(result.masks, logits, [4, 7, 9]), "top")


# -- loading ---------------------------------------------------------------------------------------------------

def test_unknown_files_and_folders_are_refused_with_what_is_supported(tmp_path):
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no tracker recognises.*sam2: SAM 2 / 2.1 original sam2.1_hiera"):
        load_tracker(tmp_path / "other.safetensors")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint.*Supported: sam2"):
        load_tracker(tmp_path / "notes.pt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert' that no tracker recognises"):
        load_tracker(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="tracker model not found"):
        load_tracker(tmp_path / "missing.pt")


# -- SAM 2's hole filling ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("foreground", [0.3, 0.6, 0.85])
def test_small_holes_are_the_8_connected_background_components_of_at_most_8_pixels(foreground):
    from skimage.measure import label

    masks = torch.where(torch.rand(3, 1, 48, 64, generator=torch.Generator().manual_seed(1)) < foreground, 1.0, -1.0)
    expected = np.zeros(masks.shape, dtype=bool)
    for i in range(3):
        components = label((masks[i, 0] <= 0).numpy(), connectivity=2)
        areas = np.bincount(components.ravel())
        expected[i, 0] = (components > 0) & (areas[components] <= 8)
    assert np.array_equal(small_background_components(masks, 8).numpy(), expected)
    filled = fill_small_holes(masks, 8)
    assert torch.equal(filled[torch.from_numpy(expected)], torch.full((int(expected.sum()),), 0.1))
    assert torch.equal(filled[~torch.from_numpy(expected)], masks[~torch.from_numpy(expected)])


# -- SAM 2 tracking ----------------------------------------------------------------------------------------------

def test_one_box_tracked_forward_equals_transformers_own_video_pipeline(tracker):
    """With hole filling off (transformers has none), a box on frame 0 tracked forward gives transformers'
    ``propagate_in_video_iterator`` logits on the same pre-processed frames."""
    import torch.nn.functional as F
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    from cococo_core.masks.tracking.sam2 import _PreprocessedFrames

    frames = torch.from_numpy(_clip(5))
    ours = track_masks(frames, tracker, boxes=["8,6,30,28@0"], fill_hole_area=0)
    model = tracker.model
    pixels = _PreprocessedFrames(frames, model.config.image_size, torch.float32)
    video = torch.stack([pixels[i] for i in range(5)])
    session = Sam2VideoInferenceSession(video=video, video_height=HEIGHT, video_width=WIDTH, dtype=torch.float32)
    size = model.config.image_size
    coords = torch.tensor([[[[8 / WIDTH * size, 6 / HEIGHT * size], [30 / WIDTH * size, 28 / HEIGHT * size]]]])
    obj_idx = session.obj_id_to_idx(1)
    session.add_point_inputs(obj_idx, 0, {"point_coords": coords, "point_labels": torch.tensor([[[2, 3]]],
                                                                                              dtype=torch.int32)})
    session.obj_with_new_inputs = [1]
    with torch.inference_mode():
        model(inference_session=session, frame_idx=0)
        for output in model.propagate_in_video_iterator(session, start_frame_idx=0):
            expected = F.interpolate(output.pred_masks.float(), size=(HEIGHT, WIDTH), mode="bilinear",
                                     align_corners=False)[0, 0]
            torch.testing.assert_close(ours.logits[0, output.frame_idx], expected, rtol=1e-5, atol=1e-5)


def test_prompts_in_the_middle_propagate_both_ways(tracker):
    done = []
    result = track_masks(_clip(7), tracker, boxes=["8,6,30,28@3"], points=["40,30@5", "45,10@5:neg"],
                         progress=lambda i, n, _: done.append((i, n)))
    assert result.object_ids == [1, 2]
    assert result.masks.dtype == torch.bool and result.masks.shape == (7, HEIGHT, WIDTH)
    # every frame tracked (no never-tracked placeholder logits), frames 0-2 by the backward pass
    assert (result.logits > -1000).all()
    assert torch.equal(result.masks, (result.logits > 0).any(0))
    assert done == [(i, 4 + 4) for i in range(1, 9)]  # frames 3..6 forward, then 3..0 backward
    assert select_objects(result, [2]).logits.shape == (1, 7, HEIGHT, WIDTH)


def test_memory_stays_bounded_on_a_long_clip(tracker, monkeypatch):
    """Tracked outputs older than the memory window are dropped, frames are pre-processed when read and the
    vision features of one frame are cached: what the session holds does not grow with the clip."""
    sizes = []
    forget = Sam2Tracker._forget

    def watch(self, session, frame, prompt_frames):
        forget(self, session, frame, prompt_frames)
        sizes.append((len(session.output_dict_per_obj[0]["non_cond_frame_outputs"]),
                      len(session.cache._vision_features)))
        assert not isinstance(session.processed_frames, (dict, torch.Tensor))

    monkeypatch.setattr(Sam2Tracker, "_forget", watch)
    track_masks(_clip(60), tracker, boxes=["8,6,30,28@0"])
    window = max(tracker.model.config.num_maskmem, tracker.model.config.max_object_pointers_in_encoder)
    assert len(sizes) == 60
    assert max(s[0] for s in sizes) <= 2 * window + 1 and max(s[1] for s in sizes) == 1


def test_cancel_stops_within_a_frame(tracker):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        track_masks(_clip(8), tracker, boxes=["8,6,30,28@0"], cancel=cancel)
    assert len(calls) == 3


def test_text_needs_a_detector_or_a_text_tracker(tracker):
    with pytest.raises(ValueError, match="does not read text"):
        track_masks(_clip(2), tracker, text="the dog")
    with pytest.raises(ValueError, match="nothing to track"):
        track_masks(_clip(2), tracker)
    with pytest.raises(ValueError, match="2 boxes on frame 0"):
        track_masks(_clip(2), tracker, boxes=["1,1,9,9#1", "2,2,9,9#1"])


def test_text_through_groundingdino_boxes(tracker, tmp_path):
    from test_masks_tiny import tiny_dino, write_bert_folder
    from transformers import BertTokenizer

    from cococo_core.masks.loading import Detector

    bert = write_bert_folder(tmp_path / "bert")
    detector = Detector(tiny_dino(bert, num_queries=30), BertTokenizer.from_pretrained(str(bert)), "tiny", "test")
    result = track_masks(_clip(4), tracker, text="the dog", detector=detector, box_threshold=0.0, max_objects=2)
    assert result.object_ids == [1, 2]
    assert (result.logits > -1000).all()


def test_redetection_adds_objects_that_enter_and_matches_tracked_ones_by_iou(tracker, monkeypatch):
    """Key frame 1, re-detection every 2 frames: on frame 3 a box covering object 1's mask is the same object, a
    small box in a corner is a new one, tracked from frame 3 on and back to the key frame."""
    from cococo_core.masks.detect import FrameDetections
    from cococo_core.masks.tracking import sam2

    calls = []

    def detections(self, frame):
        calls.append(frame)
        boxes = [[0.0, 0.0, WIDTH, HEIGHT]] + ([[0.0, 0.0, 4.0, 4.0]] if frame == 3 else [])
        return FrameDetections(torch.tensor(boxes), torch.ones(len(boxes)), ["dog"] * len(boxes),
                               torch.zeros(len(boxes), dtype=torch.long))

    monkeypatch.setattr(sam2._BoxFinder, "__init__", lambda self, *a: setattr(self, "max_objects", 5))
    monkeypatch.setattr(sam2._BoxFinder, "detections", detections)
    result = track_masks(_clip(6), tracker, text="the dog", detector=object(), key_frame=1, detect_every=2)
    assert calls == [1, 3, 5]
    assert result.object_ids == [1, 2]
    assert (result.logits[0] > -1000).all()
    assert (result.logits[1, 1:] > -1000).all() and (result.logits[1, 0] == -1024).all()
