"""SAM 3 text tracking through the tracker interface, on tiny random-weight transformers models (no download):
loading a Hugging Face folder, text -> tracked objects with ids and scores, progress / Cancel per frame, bounded
per-frame state, and the local replacements of the mask kernels checked against scikit-image."""
import numpy as np
import pytest
import torch

tiny_sam3 = pytest.importorskip("tiny_sam3")
from cococo_core.hooks import Cancelled  # noqa: E402
from cococo_core.masks.tracking import load_tracker, track_masks  # noqa: E402
from cococo_core.masks.tracking import mask_ops  # noqa: E402


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return tiny_sam3.write_sam3_folder(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="module")
def tracker(sam3_folder):
    return load_tracker(sam3_folder)


def test_folder_loads_as_sam3(tracker):
    assert tracker.kind == "sam3" and tracker.supports_text and not tracker.supports_prompts


def test_text_tracks_objects_with_ids_scores_and_progress(tracker):
    frames = tiny_sam3.moving_disc_frames(3)
    calls = []
    result = track_masks(frames, tracker, text="the cat", progress=lambda done, total, _: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert result.object_ids, "the biased tiny detector finds at least one object"
    assert result.logits.shape == (len(result.object_ids), 3, *frames.shape[1:3])
    assert result.scores is not None and all(0.5 < s <= 1.0 for s in result.scores)
    assert torch.equal(result.masks, (result.logits > 0).any(dim=0))


def test_cancel_stops_within_the_video(tracker):
    frames = tiny_sam3.moving_disc_frames(4)
    polls = []

    def cancel():
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled):
        track_masks(frames, tracker, text="the cat", cancel=cancel)
    assert len(polls) == 3


def test_boxes_are_refused_with_a_hint(tracker):
    with pytest.raises(ValueError, match="text"):
        track_masks(tiny_sam3.moving_disc_frames(1), tracker, boxes=["1,1,20,20"])


def test_per_frame_state_stays_bounded(sam3_folder):
    """Past the memory window, the stored tracker state (frames, per-frame outputs, per-frame scores, the memory
    selection's frame scores) stops growing: the count per object never exceeds the window although the clip is
    longer than it."""
    tracker = load_tracker(sam3_folder)
    tracker.model.hotstart_delay = 0
    tracker.model.config.tracker_config.num_maskmem = 2
    tracker.model.config.tracker_config.max_object_pointers_in_encoder = 2
    tracker.model.tracker_model.max_object_pointers_in_encoder = 2
    window = tracker.memory_window()
    count = window + 4
    sizes = []

    def watch(done, total, _):
        session = tracker.session
        stored = [len(o["non_cond_frame_outputs"]) for o in session.output_dict_per_obj.values()]
        scored = [len(frames) for frames in tracker.selection.scores.values()]
        sizes.append((max(stored, default=0), len(session.processed_frames),
                      len(session.obj_id_to_tracker_score_frame_wise), max(scored, default=0)))

    result = track_masks(tiny_sam3.moving_disc_frames(count), tracker, text="the cat", progress=watch)
    assert result.object_ids
    assert len(sizes) == count
    assert max(s[0] for s in sizes) <= window + 1
    assert max(s[1] for s in sizes) == 1
    assert max(s[2] for s in sizes) <= window + 1
    # the memory selection's frame scores: the window plus at most max_object_pointers - 1 selectable frames
    assert max(s[3] for s in sizes) <= window + 2
    assert sizes[-1] == sizes[-2]


def test_connected_components_match_scikit_image():
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(0)
    masks = rng.random((3, 1, 23, 31)) > 0.55
    labels, areas = mask_ops.connected_components(torch.from_numpy(masks).to(torch.uint8))
    for b in range(3):
        reference, count = measure.label(masks[b, 0], return_num=True)  # default: 8-connectivity in 2-D
        expected = np.zeros_like(reference)
        for label in range(1, count + 1):
            expected[reference == label] = (reference == label).sum()
        assert np.array_equal(areas[b, 0].numpy(), expected)
        ours = labels[b, 0].numpy()
        # same partition: a one-to-one map between our labels and scikit-image's
        pairs = {(int(a), int(r)) for a, r in zip(ours[masks[b, 0]], reference[masks[b, 0]])}
        assert len(pairs) == count == len({a for a, _ in pairs})


def test_greedy_nms_keeps_the_best_of_each_overlapping_group():
    # 0 and 2 overlap (IoU 0.6 > 0.5): the higher-scoring 2 stays; 1 overlaps nobody; 3 overlaps 1 by exactly 0.5
    ious = torch.tensor([[1.0, 0.0, 0.6, 0.0], [0.0, 1.0, 0.0, 0.5], [0.6, 0.0, 1.0, 0.1], [0.0, 0.5, 0.1, 1.0]])
    scores = torch.tensor([0.7, 0.9, 0.8, 0.6])
    assert mask_ops.greedy_nms(ious, scores, 0.5).tolist() == [1, 2, 3]


def test_folder_gets_the_original_vit_layer_norm_eps(tmp_path):
    """sam3/model/vitdet.py builds its LayerNorms with eps=1e-5; a transformers folder written with its default
    1e-6 is run with the original's."""
    import json

    folder = tiny_sam3.write_sam3_folder(tmp_path / "sam3")
    config = json.loads((folder / "config.json").read_text())
    config["detector_config"]["vision_config"]["backbone_config"]["layer_norm_eps"] = 1e-6
    (folder / "config.json").write_text(json.dumps(config))
    backbone = load_tracker(folder).model.detector_model.vision_encoder.backbone
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)


def test_pruning_keeps_the_frames_the_memory_selection_picks(sam3_folder):
    """The memory selection (``sam3_memory_selection``) may read frames far behind the pruning window (the latest
    ones scoring above 0.01): pruned tracking equals tracking with nothing pruned. Frame scores are forced here
    (every 5th frame qualifies; the tiny random model's own scores all fall below the threshold)."""
    frames = tiny_sam3.moving_disc_frames(16)

    def run(window=None):
        tracker = load_tracker(sam3_folder)
        tracker.model.hotstart_delay = 0
        tracker.model.config.tracker_config.num_maskmem = 2
        tracker.model.config.tracker_config.max_object_pointers_in_encoder = 4
        tracker.model.tracker_model.max_object_pointers_in_encoder = 4
        tracker.selection.frame_score = lambda obj_id, frame: 0.5 if frame % 5 == 1 else 0.0
        if window is not None:
            tracker.memory_window = lambda: window
        return tracker, track_masks(frames, tracker, text="the cat")

    pruned_tracker, pruned = run()
    assert pruned_tracker.memory_window() < 10  # frames 1 and 6 are outside the window at frame 15
    _, unpruned = run(window=len(frames))
    assert pruned.object_ids and pruned.object_ids == unpruned.object_ids
    assert torch.equal(pruned.logits, unpruned.logits)
