"""``python -m cococo_core prepare-data``: WebVid-layout videos -> annotated CoCoCo training shards.

    python -m cococo_core prepare-data --csv results_2M_train.csv --videos webvid/videos --output shards/ \\
        --detector models/grounding-dino/groundingdino_swint_ogc.pth
    accelerate launch --num_processes 8 -m cococo_core prepare-data ...   # 8 processes, rows split by rank

Re-running the same command resumes: finished shards and skipped videos are not redone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from .args import positive

logger = logging.getLogger(__name__)
# PrepareOptions fields -> the options typed, for the validation messages
OPTION_FIELDS = ("stride", "max_frames", "min_frames", "short_side", "samples_per_shard", "box_threshold",
                 "text_threshold", "rank", "world_size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, help="the WebVid CSV (columns videoid, name, page_dir)")
    parser.add_argument("--videos", required=True, metavar="FOLDER", help="the video root: <FOLDER>/<page_dir>/<videoid>.mp4")
    parser.add_argument("--output", "-o", required=True, metavar="FOLDER", help="where the shards and logs go")
    parser.add_argument("--detector", metavar="PATH", help="GroundingDINO (HF folder or groundingdino_*.pth); "
                        "without it the videos are stored without boxes (random masks only)")
    parser.add_argument("--bert", metavar="FOLDER", help="BERT tokenizer folder for an original GroundingDINO checkpoint")
    parser.add_argument("--no-scene-filter", action="store_true", help="keep multi-scene videos (no PySceneDetect)")
    parser.add_argument("--scene-threshold", type=positive(float), default=20.0, help="content-detector threshold (paper: 20)")
    parser.add_argument("--stride", type=positive(int), default=4, help="frame sample stride (paper: 4)")
    parser.add_argument("--max-frames", type=positive(int), default=64, help="frames stored per video (after the stride)")
    parser.add_argument("--min-frames", type=positive(int), default=16, help="skip videos with fewer frames (clip length)")
    parser.add_argument("--short-side", type=positive(int), default=256, help="stored short side in pixels")
    parser.add_argument("--detection-size", type=positive(int), nargs=2, default=(396, 512), metavar=("H", "W"),
                        help="GroundingDINO input size (paper: 396 512)")
    parser.add_argument("--box-threshold", type=float, default=0.2, help="paper: 0.2")
    parser.add_argument("--text-threshold", type=float, default=0.2, help="paper: 0.2")
    parser.add_argument("--samples-per-shard", type=positive(int), default=500)
    parser.add_argument("--limit", type=positive(int), help="only the first N rows of the CSV")
    parser.add_argument("--rank", type=int, help="this process's rank (default: $RANK, else 0)")
    parser.add_argument("--world-size", type=positive(int), help="number of processes (default: $WORLD_SIZE, else 1)")
    parser.add_argument("--device", default="cpu", help="detector device, e.g. cuda (default cpu; cuda:<LOCAL_RANK> "
                        "is used when launched on GPUs)")


def run(args: argparse.Namespace) -> int:
    from ..training.cococo.prepare import PrepareOptions, prepare
    from ..training.launch import launch_mismatch

    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", 0))
    world = args.world_size or int(os.environ.get("WORLD_SIZE", 1))
    mismatch = None if args.world_size else launch_mismatch(world)
    if mismatch:  # the rows are all prepared by this one process: right, but not in parallel
        logger.warning("%s. This process prepares every row", mismatch)
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    options = PrepareOptions(
        csv=args.csv, video_root=args.videos, output=args.output, detector=args.detector, bert=args.bert,
        scene_filter=not args.no_scene_filter, scene_threshold=args.scene_threshold, stride=args.stride,
        max_frames=args.max_frames, min_frames=args.min_frames, short_side=args.short_side,
        detection_size=tuple(args.detection_size), box_threshold=args.box_threshold,
        text_threshold=args.text_threshold, samples_per_shard=args.samples_per_shard, limit=args.limit,
        rank=rank, world_size=world, device=device,
    )
    options.validate({name: "--" + name.replace("_", "-") for name in OPTION_FIELDS})
    detector = None
    if args.detector:
        from ..masks import load_detector

        detector = load_detector(args.detector, bert=args.bert, device=device)
    summary = prepare(options, detector)
    print(json.dumps(summary, indent=1))
    return 0
