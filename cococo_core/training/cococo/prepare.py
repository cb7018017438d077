"""CoCoCo data preparation: WebVid-layout videos -> annotated training shards (paper, Implementation Details: Data).

For each video of a WebVid CSV (columns ``videoid``, ``name`` = caption, ``page_dir``; the file is
``<root>/<page_dir>/<videoid>.mp4``):

1. scene cleaning: PySceneDetect's content detector (threshold 20) must find at most one scene (else skipped);
2. the frames at the training sample stride (4) are read, up to ``max_frames``; too short videos are skipped;
3. instance-aware region selection: GroundingDINO with the caption on the FIRST frame (detection at 396x512, box
   and text thresholds 0.2) gives the object phrases; those phrases are detected in every stored frame, with the
   BERT text encoder run once per video (``cococo_core.masks.detect.text_encoded_once``);
4. the frames are resized (short side ``short_side``) and stored as an H.264 clip with a JSON record (caption,
   phrases, per-frame boxes in [0, 1] coordinates) in WebDataset-layout tar shards (:mod:`..shards`).

Resumable: videos already in a finished shard or in a ``skipped-*.jsonl`` log are not redone; an interrupted
shard is discarded and its videos redone. Shardable: process ``rank`` of ``world_size`` takes rows
``rank, rank + world_size, ...`` (``RANK``/``WORLD_SIZE`` from ``accelerate launch``/``torchrun``, or given);
shard names carry the rank. A video that cannot be read is logged, counted and skipped, never fatal. Each rank
records its run in ``run-rNNN.json``; once every rank has finished, rank 0 writes ``summary.json``: the totals
(written, skipped by reason, without objects) recomputed from every rank's shards and logs, and every rank's run.
"""
from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ... import validation
from ...output_files import write_json
from ..shards import ShardReader, ShardWriter, complete_shards, index_path, remove_partial

log = logging.getLogger(__name__)

SKIP_LOG = "skipped-r{rank:03d}.jsonl"
SHARD_PREFIX = "r{rank:03d}-"  # the shards of one rank
SHARD_NAME = SHARD_PREFIX + "{number:06d}.tar"
RUN_RECORD = "run-r{rank:03d}.json"  # one rank's counts of its last run
BARRIER_TIMEOUT = datetime.timedelta(hours=48)


@dataclass
class PrepareOptions:
    csv: str
    video_root: str
    output: str
    detector: str | None = None
    """GroundingDINO (Hugging Face folder or original checkpoint); None stores videos without boxes"""
    bert: str | None = None
    scene_filter: bool = True
    scene_threshold: float = 20.0
    stride: int = 4
    max_frames: int = 64
    min_frames: int = 16
    short_side: int = 256
    detection_size: tuple[int, int] = (396, 512)
    box_threshold: float = 0.2
    text_threshold: float = 0.2
    max_boxes: int = 10
    detection_chunk: int = 8
    samples_per_shard: int = 500
    crf: int = 18
    limit: int | None = None
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    def validate(self, names: dict[str, str] | None = None) -> None:
        """Check the options; ``names`` maps a field to the name the user typed (``--min-frames``), which the
        messages then use."""
        names = names or {}

        def label(field_name: str) -> str:
            return names.get(field_name, field_name)

        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"{label('rank')} {self.rank} is not in [0, {label('world_size')} {self.world_size})")
        for name in ("stride", "max_frames", "min_frames", "short_side", "samples_per_shard", "detection_chunk"):
            validation.whole(getattr(self, name), label(name), 1)
        for name in ("box_threshold", "text_threshold"):
            validation.unit_interval(getattr(self, name), label(name))
        if self.min_frames > self.max_frames:
            raise ValueError(f"{label('min_frames')} {self.min_frames} is more than {label('max_frames')} "
                             f"{self.max_frames}: no video could be kept")


@dataclass
class RunStats:
    seen: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0


class SkipVideo(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# -- the WebVid list ---------------------------------------------------------------------------------------------
def read_webvid_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows with ``videoid``, ``name`` (caption) and ``page_dir`` (other columns kept)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"videoid", "name", "page_dir"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ValueError(f"{path}: a WebVid CSV needs the columns videoid, name, page_dir (missing {sorted(missing)})")
    return rows


def video_path(root: Path, row: dict[str, str]) -> Path:
    path = (root / row["page_dir"] / f"{row['videoid']}.mp4").resolve()
    if root.resolve() not in path.parents:
        raise SkipVideo("bad_path", f"{row['page_dir']}/{row['videoid']} leaves the video root")
    return path


def sample_key(row: dict[str, str]) -> str:
    """A tar-safe key: the video id (WebVid ids are digits), with '.' and '/' replaced."""
    return str(row["videoid"]).replace(".", "_").replace("/", "_")


# -- steps -------------------------------------------------------------------------------------------------------
def count_scenes(path: Path, threshold: float) -> int:
    try:
        from scenedetect import ContentDetector, detect
    except ImportError as error:
        raise RuntimeError("scene filtering needs PySceneDetect: pip install 'cococo-video-inpainting[training]' "
                           "(or scenedetect-headless), or pass --no-scene-filter") from error
    return len(detect(str(path), ContentDetector(threshold=threshold)))


def resize_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    """(F, H, W, 3) uint8 -> short side ``short`` (even sides, aspect kept), antialiased bilinear."""
    height, width = frames.shape[1:3]
    scale = short / min(height, width)
    size = (max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def encode_clip(frames: np.ndarray, fps: float, crf: int) -> bytes:
    from ...video_io import write_video

    with tempfile.TemporaryDirectory(prefix="cococo-prep-") as tmp:
        path = Path(tmp) / "clip.mp4"
        write_video(path, frames, fps, crf=crf)
        return path.read_bytes()


def decode_clip(data: bytes, *, start: int = 0, max_frames: int | None = None) -> np.ndarray:
    """Frames ``start .. start + max_frames`` of a stored clip, (F, H, W, 3) uint8."""
    from ...video_io import read_frames

    with tempfile.TemporaryDirectory(prefix="cococo-clip-") as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(data)
        return read_frames(path, start=start, max_frames=max_frames).frames


class Annotator:
    """GroundingDINO phrases on the first frame, then per-frame boxes of those phrases (BERT once per video)."""

    def __init__(self, detector, options: PrepareOptions):
        self.detector, self.options = detector, options
        self.text_calls = 0
        self._hook = detector.model.model.text_backbone.register_forward_hook(self._count_text)

    def close(self) -> None:
        self._hook.remove()

    def _count_text(self, *args):
        self.text_calls += 1

    def _detect(self, frames: np.ndarray, prompt) -> list:
        from ...masks import detect as dino

        o = self.options
        device, dtype = next(self.detector.model.parameters()).device, next(self.detector.model.parameters()).dtype
        found = []
        for start in range(0, len(frames), o.detection_chunk):
            chunk = torch.from_numpy(frames[start:start + o.detection_chunk]).float().div(255.0)
            pixels = dino.preprocess(chunk.to(device), tuple(o.detection_size)).to(dtype)
            found += dino.detect(self.detector.model, self.detector.tokenizer, pixels, prompt, tuple(frames.shape[1:3]),
                                 box_threshold=o.box_threshold, text_threshold=o.text_threshold, max_boxes=o.max_boxes)
        return found

    def __call__(self, frames: np.ndarray, caption: str) -> tuple[list[str], list[list[list[float]]]]:
        """(phrases, per-frame ``[x0, y0, x1, y1, phrase, score]`` lists in [0, 1] coordinates)."""
        from ...masks import detect as dino

        tokenizer, config = self.detector.tokenizer, self.detector.model.config
        try:
            first_prompt = dino.encode_prompt(tokenizer, caption, config.max_text_len)
        except ValueError:
            return [], [[] for _ in frames]
        first = self._detect(frames[:1], first_prompt)[0]
        phrases = []
        for label in first.labels:  # ordered by score
            label = " ".join(label.replace(".", " ").split())
            if label and label not in phrases:
                phrases.append(label)
        if not phrases:
            return [], [[] for _ in frames]
        prompt = dino.encode_prompt(tokenizer, " . ".join(phrases), config.max_text_len)
        height, width = frames.shape[1:3]
        scale = np.array([width, height, width, height], dtype=np.float64)
        with dino.text_encoded_once(self.detector.model):
            detections = self._detect(frames, prompt)
        boxes = []
        for found in detections:
            rows = []
            for box, phrase, score in zip(found.boxes.numpy(), found.phrase_ids.tolist(), found.scores.tolist()):
                if phrase >= 0:
                    rows.append([*(np.clip(box / scale, 0, 1).round(5).tolist()), int(phrase), round(float(score), 4)])
            boxes.append(rows)
        return list(prompt.phrases), boxes


def prepare_video(row: dict[str, str], options: PrepareOptions, annotator: Annotator | None) -> tuple[dict, bytes]:
    """(record, clip bytes) of one video, or :class:`SkipVideo`."""
    from ...video_io import read_frames

    path = video_path(Path(options.video_root), row)
    if not path.is_file():
        raise SkipVideo("missing", str(path))
    if options.scene_filter:
        try:
            scenes = count_scenes(path, options.scene_threshold)
        except RuntimeError:
            raise
        except Exception as error:  # any decoder failure inside PySceneDetect / OpenCV
            raise SkipVideo("unreadable", f"scene detection: {error}") from error
        if scenes > 1:
            raise SkipVideo("multi_scene", f"{scenes} scenes")
    try:
        clip = read_frames(path, stride=options.stride, max_frames=options.max_frames)
    except Exception as error:  # corrupt or truncated files: imageio/ffmpeg raise various errors
        raise SkipVideo("unreadable", str(error).splitlines()[0] if str(error) else type(error).__name__) from error
    frames = clip.frames
    if len(frames) < options.min_frames:
        raise SkipVideo("too_short", f"{len(frames)} frames at stride {options.stride}")
    caption = " ".join(str(row.get("name", "")).split())
    phrases, boxes = annotator(frames, caption) if annotator is not None else ([], [[] for _ in frames])
    stored = resize_short_side(frames, options.short_side)
    fps = clip.fps or 25.0 / options.stride
    record = {"key": sample_key(row), "videoid": row["videoid"], "caption": caption, "phrases": phrases,
              "frames": int(len(stored)), "height": int(stored.shape[1]), "width": int(stored.shape[2]),
              "fps": float(fps), "stride": options.stride, "boxes": boxes,
              "source_size": [int(frames.shape[1]), int(frames.shape[2])]}
    return record, encode_clip(stored, fps, options.crf)


# -- the run -----------------------------------------------------------------------------------------------------
def done_keys(output: Path) -> set[str]:
    keys = set()
    for shard in complete_shards(output):
        keys.update(ShardReader([shard]).keys())
    for skipped in output.glob("skipped-*.jsonl"):
        for line in skipped.read_text(encoding="utf-8").splitlines():
            if line.strip():
                keys.add(json.loads(line)["key"])
    return keys


def next_shard_number(output: Path, rank: int) -> int:
    prefix = SHARD_PREFIX.format(rank=rank)
    numbers = [int(p.name[len(prefix):-len(".tar")]) for p in output.glob(f"{prefix}*.tar")]
    return max(numbers, default=-1) + 1


def summarize(output: Path) -> dict:
    """Totals over every rank and run, from the finished shards and the skip logs."""
    written = without_objects = 0
    for shard in complete_shards(output):
        for entry in json.loads(index_path(shard).read_text(encoding="utf-8"))["samples"]:
            written += 1
            without_objects += int(entry.get("meta", {}).get("phrases", 0) == 0)
    skipped: Counter = Counter()
    for log_file in output.glob("skipped-*.jsonl"):
        for line in log_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                skipped[json.loads(line)["reason"]] += 1
    return {"written": written, "without_objects": without_objects, "skipped": dict(sorted(skipped.items())),
            "skipped_total": sum(skipped.values()), "shards": len(complete_shards(output))}


def prepare(options: PrepareOptions, detector=None) -> dict:
    """Prepare this rank's share of the videos; returns the summary (also written to ``summary.json``)."""
    options.validate()
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    for leftover in remove_partial(output, SHARD_PREFIX.format(rank=options.rank)):
        log.info("removed the unfinished shard %s (its videos are redone)", leftover.name)
    rows = read_webvid_csv(options.csv)[: options.limit]
    done = done_keys(output)
    todo = [row for i, row in enumerate(rows) if i % options.world_size == options.rank and sample_key(row) not in done]
    log.info("rank %d/%d: %d videos to prepare (%d already done)", options.rank, options.world_size, len(todo),
             len(done))
    annotator = Annotator(detector, options) if detector is not None else None
    stats = RunStats()
    started = time.perf_counter()
    writer: ShardWriter | None = None
    number = next_shard_number(output, options.rank)
    skip_log = output / SKIP_LOG.format(rank=options.rank)
    try:
        for row in todo:
            stats.seen += 1
            key = sample_key(row)
            try:
                record, clip = prepare_video(row, options, annotator)
            except SkipVideo as skip:
                stats.skipped[skip.reason] += 1
                log.warning("skipped video %s (%s) %s", key, skip.reason, skip.detail)
                with open(skip_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "reason": skip.reason, "detail": skip.detail}) + "\n")
                continue
            if writer is None:
                writer = ShardWriter(output / SHARD_NAME.format(rank=options.rank, number=number))
                number += 1
            writer.write(key, {"mp4": clip, "json": json.dumps(record).encode("utf-8")},
                         meta={"phrases": len(record["phrases"]), "frames": record["frames"]})
            stats.written += 1
            if len(writer) >= options.samples_per_shard:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:  # interrupted: drop the half shard, its videos are redone next time
            writer.abort()
        if annotator is not None:
            annotator.close()
    stats.seconds = time.perf_counter() - started
    this_run = {"rank": options.rank, "world_size": options.world_size, "seen": stats.seen,
                "written": stats.written, "skipped": dict(stats.skipped), "seconds": round(stats.seconds, 3),
                "videos_per_minute": round(60 * stats.seen / stats.seconds, 2) if stats.seconds else None,
                "text_encoder_calls": annotator.text_calls if annotator else 0}
    write_json(output / RUN_RECORD.format(rank=options.rank), this_run, overwrite=True, indent=1)
    if _wait_for_every_rank(options) and options.rank != 0:
        return {**summarize(output), "this_run": this_run}  # rank 0 writes the summary of all ranks
    summary = {**summarize(output), "this_run": this_run, "ranks": _run_records(output, options.world_size)}
    write_json(output / "summary.json", summary, overwrite=True, indent=1)
    write_json(output / "prepare_options.json", asdict(options), overwrite=True, indent=1)
    return summary


def _run_records(output: Path, world_size: int) -> dict[str, dict]:
    """The last run record of each rank of this world size (``run-rNNN.json``), by rank."""
    records = {}
    for rank in range(world_size):
        path = output / RUN_RECORD.format(rank=rank)
        if path.is_file():
            records[str(rank)] = json.loads(path.read_text(encoding="utf-8"))
    return records


def _wait_for_every_rank(options: PrepareOptions) -> bool:
    """Block until every rank has finished; True when that could be known (a launcher started the ranks).

    Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE``, ``RANK`` and ``MASTER_ADDR`` set) the ranks meet
    in a gloo barrier (CPU-only: the detector's GPUs are not needed to wait); ranks finish hours apart on
    uneven videos, hence the long timeout. Ranks given by hand (``--rank`` / ``--world-size``) cannot meet:
    then each finishing rank rewrites ``summary.json`` and its ``ranks`` lists the ranks finished so far."""
    if options.world_size == 1:
        return True
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        return True
    launched = (os.environ.get("WORLD_SIZE") == str(options.world_size) and os.environ.get("RANK") == str(options.rank)
                and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ)
    if not (launched and dist.is_available()):
        return False
    dist.init_process_group("gloo", rank=options.rank, world_size=options.world_size, timeout=BARRIER_TIMEOUT)
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return True
