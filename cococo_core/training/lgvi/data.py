"""Training data for LGVI / LGVI-I: (original video, removed-object target, removal mask, referring
expression, chat request / response) samples, images as 1-frame videos, video and image batches mixed 3 : 1.

The simple layout (one JSON object per line of a ``.jsonl`` file; paths relative to that file's folder,
or absolute; each a video file, an image folder, a glob or a single image as
:func:`cococo_core.video_io.read_frames` reads them)::

    {"video": "clips/dog.mp4", "target": "clips/dog_removed.mp4", "mask": "clips/dog_mask.mp4",
     "expression": "remove the dog on the left",
     "request": "could you get rid of the dog?", "response": "Sure. {{prompt}} remove the dog on the left {{/prompt}}"}

``target`` is the video with the object removed (the diffusion target), ``mask`` the removal region
(white = object; optional: samples without one add no mask loss), ``expression`` the LGVI referring
expression, ``request`` / ``response`` the LGVI-I chat turn. The removal phrase in a response is marked
``{{prompt}} ... {{/prompt}}`` as the official chat template writes it; the paper's ``<PROMPT> ... </PROMPT>``
is accepted and rewritten to that form. A sample whose video has one frame (an image, e.g. a GQA-Inpaint
pair) is an image sample.

ROVI (``jianzongwu/rovi`` ``train.json``): the schema is not documented upstream. What the published
file shows is one top-level object keyed by video id; :func:`read_rovi` maps each record (or each
entry of a per-video object list) onto the simple layout through a field map that can be overridden
from the config, and names the record's actual keys when a field is missing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ...lgvi.prompting import MARKER_CLOSE, MARKER_OPEN
from ...lgvi.video_tensor import OFFICIAL_SIZE, to_model_input
from ...video_io import _image_files, read_frames, read_mask

OFFICIAL_FRAMES = 24
VIDEO_IMAGE_RATIO = (3, 1)  # paper §5.1: video and image samples 3 : 1


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One training example as listed in a data file (paths resolved, nothing read yet)."""

    video: str
    target: str
    mask: str | None = None
    expression: str | None = None
    request: str | None = None
    response: str | None = None


def normalize_response(response: str | None) -> str | None:
    """``<PROMPT> ... </PROMPT>`` (paper notation, any case) -> ``{{prompt}} ... {{/prompt}}`` (official template)."""
    if response is None:
        return None
    response = re.sub(r"<\s*/\s*prompt\s*>", MARKER_CLOSE, response, flags=re.IGNORECASE)
    return re.sub(r"<\s*prompt\s*>", MARKER_OPEN, response, flags=re.IGNORECASE)


def _resolve(root: Path, value: Any, field: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: '{field}' must be a non-empty path string, got {value!r}")
    path = Path(value)
    return os.fspath(path if path.is_absolute() else root / path)


def _text(value: Any, field: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{field}' must be a string, got {type(value).__name__}")
    return value


def read_jsonl(path: str | os.PathLike) -> list[SampleRecord]:
    """Records of the simple layout (see the module docstring)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from error
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object")
        records.append(_record(item, path.parent, where))
    if not records:
        raise ValueError(f"{path} lists no samples")
    return records


def _record(item: Mapping, root: Path, where: str) -> SampleRecord:
    for field in ("video", "target"):
        if field not in item:
            raise ValueError(f"{where}: missing '{field}' (keys: {', '.join(sorted(item))})")
    return SampleRecord(
        video=_resolve(root, item["video"], "video", where),
        target=_resolve(root, item["target"], "target", where),
        mask=_resolve(root, item["mask"], "mask", where) if item.get("mask") else None,
        expression=_text(item.get("expression"), "expression", where),
        request=_text(item.get("request"), "request", where),
        response=normalize_response(_text(item.get("response"), "response", where)),
    )


_TEXT_FIELDS = ("expression", "request", "response")
# Inferred, not documented upstream: override any entry with the config's ``rovi_fields``.
ROVI_FIELDS = {
    "objects": "objects",  # per-video list/dict of removal examples (absent: the record is one example)
    "video": "video",
    "target": "inpainted",
    "mask": "mask",
    "expression": "expression",
    "request": "request",
    "response": "response",
}


def read_rovi(path: str | os.PathLike, root: str | os.PathLike | None = None,
              fields: Mapping[str, str] | None = None) -> list[SampleRecord]:
    """ROVI ``train.json`` -> records. Top level: ``{video_id: record}`` (or a list of records); a record
    holding an ``objects`` list/dict yields one example per entry, the entry's fields overriding the
    video's. ``video`` may be omitted when the frames sit in ``<root>/<video_id>/``."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    names = {**ROVI_FIELDS, **(fields or {})}
    data = json.loads(path.read_text(encoding="utf-8"))
    items = data.items() if isinstance(data, dict) else enumerate(data)
    records = []
    for video_id, record in items:
        if not isinstance(record, dict):
            raise ValueError(f"{path}: entry {video_id!r} is not an object")
        objects = record.get(names["objects"])
        entries = list(objects.values()) if isinstance(objects, dict) else list(objects or [None])
        for number, entry in enumerate(entries):
            merged = {**record, **(entry or {})}
            where = f"{path} [{video_id}]" + (f" object {number}" if entry is not None else "")
            mapped = {field: merged.get(name) for field, name in names.items() if field != "objects"}
            if mapped["video"] is None:
                mapped["video"] = str(video_id)
            if mapped["target"] is None:
                raise ValueError(f"{where}: no '{names['target']}' field for the removed-object video; this "
                                 f"record has {', '.join(sorted(merged))}: set rovi_fields.target in the config")
            # several expressions for one example: the first (list fields other than texts stay as they are)
            mapped = {key: (value[0] if key in _TEXT_FIELDS and isinstance(value, list) and value else value)
                      for key, value in mapped.items()}
            records.append(_record({k: v for k, v in mapped.items() if v is not None}, root, where))
    if not records:
        raise ValueError(f"{path} lists no samples")
    return records


def read_records(config: Mapping[str, Any]) -> list[SampleRecord]:
    """The records named by the data config: ``samples`` (simple layout ``.jsonl``) and/or ``rovi_json``."""
    records = []
    for path in _as_list(config.get("samples")):
        records += read_jsonl(path)
    for path in _as_list(config.get("rovi_json")):
        records += read_rovi(path, config.get("rovi_root"), config.get("rovi_fields"))
    if not records:
        raise ValueError("no training data: set data.samples (a .jsonl in the simple layout) or data.rovi_json")
    return records


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class RemovalSamples(torch.utils.data.Dataset):
    """Map-style dataset of decoded samples: ``video``/``target`` (3, F, H, W) in [-1, 1], ``mask``
    (1, F, H, W) in [0, 1] (zeros and ``has_mask`` False without one), texts, ``index``.

    A video contributes ``num_frames`` consecutive frames (every ``stride``-th) from a start drawn from
    ``seed`` and the sample index only, so every process and every resumed run reads the same clip."""

    def __init__(self, records: list[SampleRecord], *, num_frames: int = OFFICIAL_FRAMES, size=OFFICIAL_SIZE,
                 stride: int = 1, seed: int = 0):
        self.records, self.num_frames, self.stride, self.seed = records, int(num_frames), int(stride), int(seed)
        self.width, self.height = int(size[0]), int(size[1])

    def __len__(self) -> int:
        return len(self.records)

    def frame_count(self, index: int) -> int:
        return _count_frames(self.records[index].video)

    def is_image(self, index: int) -> bool:
        """A 1-frame sample (an image file or a one-image folder); a video file counts as a video (not decoded)."""
        source = self.records[index].video
        files = _image_files(source)
        return files is not None and len(files) == 1

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        total = _count_frames(record.video)
        span = (self.num_frames - 1) * self.stride + 1
        start = 0
        if total > span:
            start = int(torch.randint(total - span + 1, (1,), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + index)))
        limit = self.num_frames if total > 1 else 1
        select = dict(start=start, stride=self.stride, max_frames=limit)
        video = _pixels(read_frames(record.video, **select).frames, self.height, self.width)
        target = _pixels(read_frames(record.target, **select).frames, self.height, self.width)
        if target.shape != video.shape:
            raise ValueError(f"{record.target}: {target.shape[1]} frames of the target vs {video.shape[1]} of {record.video}")
        if record.mask is not None:
            mask = torch.from_numpy(read_mask(record.mask, **select)).unsqueeze(1)  # (F, 1, H, W)
            mask = F.interpolate(mask, size=(self.height, self.width), mode="area").transpose(0, 1)
            if mask.shape[1] != video.shape[1]:
                raise ValueError(f"{record.mask}: {mask.shape[1]} mask frames vs {video.shape[1]} video frames")
        else:
            mask = torch.zeros(1, *video.shape[1:])
        return {
            "video": video, "target": target, "mask": mask.contiguous(), "has_mask": record.mask is not None,
            "expression": record.expression or "", "request": record.request, "response": record.response,
            "index": index,
        }


def _count_frames(source: str) -> int:
    """Frames of a source: the file count of an image folder / glob / image (no decoding); a video file is
    decoded once (cached)."""
    if source not in _FRAME_COUNTS:
        files = _image_files(source)
        _FRAME_COUNTS[source] = len(files) if files is not None else int(read_frames(source).frames.shape[0])
    return _FRAME_COUNTS[source]


_FRAME_COUNTS: dict[str, int] = {}


def _pixels(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, height, width) float32 in [-1, 1] (the pipeline's own resize)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
    return to_model_input(tensor, height, width).transpose(0, 1).contiguous()


class MixedBatches(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: ``video_batch`` video samples or ``image_batch``
    image samples (1-frame videos cannot share a tensor with 24-frame ones), ``ratio`` (3 video batches to
    1 image batch) per epoch, listed in that repeating pattern (a sampler that shuffles keeps the ratio). The grouping is a fixed function of ``seed``, so
    the loop can shuffle, shard and resume the batches like any samples (see :func:`collate`)."""

    def __init__(self, samples: RemovalSamples, *, video_batch: int = 1, image_batch: int = 1,
                 ratio: tuple[int, int] = VIDEO_IMAGE_RATIO, seed: int = 0):
        self.samples = samples
        generator = torch.Generator().manual_seed(int(seed))
        kinds: dict[str, list[int]] = {"video": [], "image": []}
        for index in range(len(samples)):
            kinds["image" if samples.is_image(index) else "video"].append(index)
        groups = {}
        for kind, size in (("video", video_batch), ("image", image_batch)):
            order = [kinds[kind][i] for i in torch.randperm(len(kinds[kind]), generator=generator).tolist()]
            groups[kind] = [order[i : i + size] for i in range(0, len(order) - size + 1, max(1, size))]
            if kinds[kind] and not groups[kind]:
                raise ValueError(f"{len(kinds[kind])} {kind} samples do not fill one {kind} batch of {size}")
        self.batches = interleave(groups["video"], groups["image"], ratio)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[dict]:
        return [self.samples[i] for i in self.batches[index]]


def interleave(videos: list, images: list, ratio: tuple[int, int]) -> list:
    """``ratio[0]`` video batches then ``ratio[1]`` image batches, repeated; the longer list's rest at the end
    is dropped when the other runs out, so an epoch keeps the ratio (with one kind only: all of it)."""
    if not videos or not images:
        return list(videos or images)
    rounds = min(len(videos) // max(ratio[0], 1), len(images) // max(ratio[1], 1))
    rounds = max(rounds, 1)
    out, v, i = [], 0, 0
    for _ in range(rounds):
        out += videos[v : v + ratio[0]]
        out += images[i : i + ratio[1]]
        v, i = v + ratio[0], i + ratio[1]
    return out


def collate(items: list) -> dict:
    """``{"groups": [batch, ...]}``: each :class:`MixedBatches` item (a list of samples) becomes one stacked
    group; plain samples form one group. Groups are run and averaged separately, so a micro-batch may hold
    video and image groups, and a run split over N processes averages the same groups as one process.

    Each group's ``seed_slot`` / ``seed_offset`` say where a sample's randomness comes from: entry ``slot`` of the
    loop's ``sample_seeds`` (one per dataset item), mixed with ``offset`` (the position inside its item)."""
    if all(isinstance(item, list) for item in items):
        return {"groups": [_stack(item, [slot] * len(item), list(range(len(item)))) for slot, item in enumerate(items)]}
    if any(isinstance(item, list) for item in items):
        raise ValueError("collate got both whole batches and single samples")
    return {"groups": [_stack(items, list(range(len(items))), [0] * len(items))]}


def _stack(samples: list[dict], slots: list[int], offsets: list[int]) -> dict:
    frames = {sample["video"].shape[1] for sample in samples}
    if len(frames) > 1:
        raise ValueError(f"a batch mixes frame counts {sorted(frames)}: batch videos and images separately (MixedBatches)")
    batch = {key: torch.stack([s[key] for s in samples]) for key in ("video", "target", "mask")}
    batch["has_mask"] = torch.tensor([bool(s["has_mask"]) for s in samples])
    batch["index"] = torch.tensor([int(s["index"]) for s in samples])
    batch["seed_slot"], batch["seed_offset"] = torch.tensor(slots), torch.tensor(offsets)
    for key in ("expression", "request", "response"):
        batch[key] = [s[key] for s in samples]
    return batch
