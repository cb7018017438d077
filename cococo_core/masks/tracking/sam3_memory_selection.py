"""SAM 3's memory-frame selection ("temporal disambiguation") on transformers' tracker.

The official video model (``build_sam3_video_model(apply_temporal_disambiguation=True)``, facebookresearch/sam3,
``sam3/model/sam3_tracker_base.py``: ``use_memory_selection``, ``cal_mem_score``, ``frame_filter``,
``_prepare_memory_conditioned_features``) does not read the last ``num_maskmem - 1`` frames as memory. Per tracker
state (the objects that entered on one frame, tracked as one batch) it scores every tracked frame

    score = mean_i(s_i) * mean_i(max IoU_i),   s_i = 2 * sigmoid(object_score_i) - 1 if object_score_i > 0 else 0

(``cal_mem_score``: a (B, 1) x (B,) broadcast, averaged) and, walking back from the previous frame (frame 0
excluded), keeps the frames scoring above ``mf_threshold`` (0.01), at most ``min(video frames, max_obj_ptrs) - 1``
of them, the previous frame always last. The memory bank reads the last ``num_maskmem - 1`` kept frames (temporal
encoding by their rank, not their distance); the object pointers read all kept frames but the oldest (temporal
position = rank, normalised by ``min(video frames, max_obj_ptrs) - 1``, the whole video's length).
transformers (``Sam3TrackerVideoModel``) reads the last frames, and normalises the pointer positions by the
frames in its session.
"""
from __future__ import annotations

from collections import defaultdict

import torch

MEMORY_SCORE_THRESHOLD = 0.01  # mf_threshold of the official tracker


def score_terms(object_score_logits: torch.Tensor, iou_scores: torch.Tensor) -> tuple[float, float]:
    """One object's share of ``cal_mem_score``: (its rescaled object score s, its best predicted IoU)."""
    logit = object_score_logits.float().reshape(())
    iou = iou_scores.float().reshape(-1).max()
    rescaled = logit.sigmoid() * 2 - 1 if logit > 0 else torch.zeros(())
    return float(rescaled), float(iou)


class MemorySelection:
    """Per-object scores of every tracked frame and the official frame choice, installed on a tracker model."""

    def __init__(self, tracker_model, video_frames):
        self.tracker_model = tracker_model
        self.video_frames = video_frames  # callable: the length of the video being tracked
        self.group_of: dict[int, list[int]] = {}  # obj_id -> the objects that entered with it (one tracker state)
        self.scores: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)  # obj_id -> frame -> (s, iou)
        self._last_heads = None

    def reset(self) -> None:
        self.group_of.clear()
        self.scores.clear()

    def new_group(self, obj_ids) -> None:
        members = [int(obj_id) for obj_id in obj_ids]
        for obj_id in members:
            self.group_of[obj_id] = members

    def max_pointers(self) -> int:
        return min(self.video_frames(), self.tracker_model.config.max_object_pointers_in_encoder)

    def frame_score(self, obj_id: int, frame_idx: int) -> float | None:
        members = self.group_of.get(obj_id, [obj_id])
        terms = [self.scores[o][frame_idx] for o in members if frame_idx in self.scores.get(o, {})]
        if not terms:
            return None
        return (sum(s for s, _ in terms) / len(terms)) * (sum(iou for _, iou in terms) / len(terms))

    def kept_frames(self, session, obj_idx: int, frame_idx: int, reverse: bool) -> list[int]:
        """``frame_filter``: the kept frames, oldest first."""
        count = self.video_frames()
        if (frame_idx == 0 and not reverse) or (frame_idx == count - 1 and reverse):
            return []
        obj_id = session.obj_idx_to_id(obj_idx)
        outputs = session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"]
        limit = self.max_pointers()
        if not reverse:
            candidates, must_include = range(frame_idx - 1, 0, -1), frame_idx - 1
        else:
            candidates, must_include = range(frame_idx + 1, count), frame_idx + 1
        oldest = min(outputs, default=frame_idx)
        kept = []
        for i in candidates:
            if not reverse and i < oldest:
                break  # nothing older is stored (pruned or never tracked)
            score = self.frame_score(obj_id, i) if i in outputs else None
            if score is None:
                continue
            if score > MEMORY_SCORE_THRESHOLD:
                kept.insert(0, i)
            if len(kept) >= limit - 1:
                break
        if must_include not in kept:
            kept.append(must_include)
        return kept

    def frames_to_keep(self, obj_id: int, frame_idx: int) -> set[int]:
        """The frames before ``frame_idx`` a later frame may still select: the latest ``max_pointers - 1`` that
        scored above the threshold (pruning keeps these besides its recent window)."""
        keep = []
        for i in sorted(self.scores.get(obj_id, {}), reverse=True):
            if i < frame_idx and (self.frame_score(obj_id, i) or 0.0) > MEMORY_SCORE_THRESHOLD:
                keep.append(i)
                if len(keep) >= self.max_pointers() - 1:
                    break
        return set(keep)

    def install(self) -> None:
        model = self.tracker_model
        single_frame_forward = model._single_frame_forward
        run_single_frame = model._run_single_frame_inference

        def recording_forward(*args, **kwargs):
            out = single_frame_forward(*args, **kwargs)
            self._last_heads = (out.object_score_logits, out.iou_scores)
            return out

        def scored_run(inference_session, frame_idx, obj_idx, *args, **kwargs):
            self._last_heads = None
            out = run_single_frame(inference_session, frame_idx, obj_idx, *args, **kwargs)
            if self._last_heads is not None:  # transformers runs the tracker one object at a time
                self.scores[inference_session.obj_idx_to_id(obj_idx)][frame_idx] = score_terms(*self._last_heads)
            return out

        def gather_memory_frames(inference_session, obj_idx, frame_idx, track_in_reverse_time=False):
            outputs = inference_session.output_dict_per_obj[obj_idx]
            selected, unselected = model._select_closest_cond_frames(
                frame_idx, outputs["cond_frame_outputs"], max_cond_frame_num=model.config.max_cond_frame_num)
            chosen = [(0, out) for out in selected.values()]
            kept = self.kept_frames(inference_session, obj_idx, frame_idx, track_in_reverse_time)
            for offset in range(model.num_maskmem - 1, 0, -1):
                if offset > len(kept):
                    continue
                previous = kept[-offset]
                chosen.append((offset, outputs["non_cond_frame_outputs"].get(previous,
                                                                              unselected.get(previous))))
            return chosen

        def object_pointers(inference_session, obj_idx, frame_idx, num_total_frames, device,
                            track_in_reverse_time=False, streaming=False):
            outputs = inference_session.output_dict_per_obj[obj_idx]
            sign = -1 if track_in_reverse_time else 1
            limit = self.max_pointers()
            selected, unselected = model._select_closest_cond_frames(
                frame_idx, outputs["cond_frame_outputs"], max_cond_frame_num=model.config.max_cond_frame_num)
            offsets, pointers = [], []
            for t, out in selected.items():
                if (t >= frame_idx) if track_in_reverse_time else (t <= frame_idx):
                    offsets.append((frame_idx - t) * sign)
                    pointers.append(out["object_pointer"].to(device))
            kept = self.kept_frames(inference_session, obj_idx, frame_idx, track_in_reverse_time)
            for rank in range(1, limit):
                if rank >= len(kept):
                    break
                out = outputs["non_cond_frame_outputs"].get(kept[-rank], unselected.get(kept[-rank]))
                if out is not None:
                    offsets.append(rank)
                    pointers.append(out["object_pointer"].to(device))
            return offsets, pointers, limit

        model._single_frame_forward = recording_forward
        model._run_single_frame_inference = scored_run
        model._gather_memory_frame_outputs = gather_memory_frames
        model._get_object_pointers = object_pointers
