"""``python -m cococo_core mask``: per-frame masks of a video from a text phrase (GroundingDINO + SAM).

Reads and writes with :mod:`cococo_core.video_io`: ``--out`` is a folder of PNG masks (white = masked; lossless, what
``inpaint --mask`` reads best) for a path without suffix, else a mask video (.mp4/.webm/.gif). ``--preview`` writes
the frames with the masks and boxes drawn.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .args import add_device_arguments, add_frame_selection, add_overwrite, device_and_dtype, finite, require_paths

log = logging.getLogger(__name__)
DEFAULT_FPS = 8.0  # for image sequences, which carry no frame rate
# MaskOptions fields -> the options typed, for the validation messages
OPTION_NAMES = {"box_threshold": "--box-threshold", "text_threshold": "--text-threshold",
                "detect_every": "--detect-every", "max_boxes": "--max-boxes", "grow": "--grow",
                "temporal_smooth": "--temporal-smooth", "feather": "--feather", "chunk_size": "--chunk-size",
                "detection_short_side": "--detection-size", "preprocessing": "--preprocessing"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..masks.detect import DEFAULT_BOX_THRESHOLD, DEFAULT_TEXT_THRESHOLD
    from ..masks.text_masks import MaskOptions

    defaults = MaskOptions()
    io = parser.add_argument_group("input and output")
    io.add_argument("--video", required=True, metavar="PATH",
                    help="input video (.mp4, .webm, .gif, ...), a folder of frames (natural order), a glob "
                         "pattern such as 'frames/*.png', or one image")
    io.add_argument("--text", required=True,
                    help='what to mask; several things as "cat . dog" (lower-cased, each phrase ended by " .")')
    io.add_argument("--out", required=True, metavar="PATH",
                    help="output: a folder (no suffix) of PNG masks, white = masked, or a .mp4/.webm/.gif mask video")
    io.add_argument("--preview", metavar="PATH",
                    help="also write the frames with masks and boxes drawn (folder of PNGs or a video file)")
    add_frame_selection(io, default_fps=DEFAULT_FPS)
    add_overwrite(io)
    models = parser.add_argument_group("models")
    models.add_argument("--detector", required=True, metavar="PATH",
                        help="GroundingDINO: a Hugging Face folder (e.g. grounding-dino-tiny) or an original "
                             "checkpoint such as groundingdino_swint_ogc.pth")
    models.add_argument("--bert", metavar="FOLDER",
                        help="BERT tokenizer folder (vocab.txt + config.json of bert-base-uncased) for an original "
                             "GroundingDINO checkpoint (default: a bert-base-uncased folder next to it or one level up)")
    models.add_argument("--detector-config", metavar="FILE",
                        help="the original GroundingDINO_*.py config (read, never executed; default: one next to the "
                             "checkpoint, else GroundingDINO's defaults)")
    models.add_argument("--segmenter", metavar="PATH",
                        help="Segment Anything: a Hugging Face folder (e.g. sam-vit-base) or an original "
                             "sam_vit_{b,l,h}_*.pth checkpoint; not needed with --box-mode")
    add_device_arguments(models, dtype=False)
    masks = parser.add_argument_group("masks")
    masks.add_argument("--box-threshold", type=finite, default=DEFAULT_BOX_THRESHOLD,
                       help=f"keep boxes whose best token probability exceeds this (default {DEFAULT_BOX_THRESHOLD})")
    masks.add_argument("--text-threshold", type=finite, default=DEFAULT_TEXT_THRESHOLD,
                       help=f"label a box with the tokens above this probability (default {DEFAULT_TEXT_THRESHOLD})")
    masks.add_argument("--detect-every", type=int, default=defaults.detect_every, metavar="K",
                       help="detect on every K-th frame only; frames between reuse the last boxes (default 1)")
    masks.add_argument("--max-boxes", type=int, default=defaults.max_boxes,
                       help=f"at most this many boxes per frame, best first (default {defaults.max_boxes})")
    masks.add_argument("--box-mode", action="store_true",
                       help="the mask is the union of the boxes (CoCoCo's box masks); SAM is not used")
    masks.add_argument("--fill-holes", action="store_true", help="fill holes inside each mask")
    masks.add_argument("--grow", type=int, default=0, metavar="PIXELS",
                       help="grow the masks by this many pixels on every side (negative: shrink) (default 0)")
    masks.add_argument("--temporal-smooth", type=int, default=0, metavar="FRAMES",
                       help="majority vote over FRAMES frames before and after each frame, against flicker (default 0)")
    masks.add_argument("--feather", type=int, default=0, metavar="PIXELS",
                       help="soften the mask edges over about this many pixels (default 0 = hard edges)")
    masks.add_argument("--chunk-size", type=int, default=defaults.chunk_size, metavar="FRAMES",
                       help=f"frames per model batch; lower it to save memory (default {defaults.chunk_size})")
    masks.add_argument("--detection-size", type=int, default=defaults.detection_short_side, metavar="PIXELS",
                       help="short side of the frames given to GroundingDINO (default 800 as the original; smaller is "
                            "faster; frames too small for its 900 queries are enlarged)")
    masks.add_argument("--preprocessing", choices=("original", "torch"), default=defaults.preprocessing,
                       help="how frames are resized for the models: 'original' = PIL bilinear on the uint8 frame, as "
                            "the original GroundingDINO and SAM (default); 'torch' = float resize on the device")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..masks.detect import split_phrases
    from ..masks.loading import load_detector, load_segmenter
    from ..masks.preview import draw_preview
    from ..masks.text_masks import MaskOptions, masks_from_text
    from ..output_files import check_distinct
    from ..video_io import check_output, read_frames, write_video

    options = MaskOptions(
        box_threshold=args.box_threshold, text_threshold=args.text_threshold, detect_every=args.detect_every,
        max_boxes=args.max_boxes, box_mode=args.box_mode, fill_holes=args.fill_holes, grow=args.grow,
        temporal_smooth=args.temporal_smooth, feather=args.feather, chunk_size=args.chunk_size,
        detection_short_side=args.detection_size, preprocessing=args.preprocessing,
    )
    options.validate(OPTION_NAMES)
    split_phrases(args.text, "--text")
    if not args.box_mode and not args.segmenter:
        raise ValueError("--segmenter is required (a SAM folder or sam_vit_*.pth) unless --box-mode is given")
    if not Path(args.video).exists() and not any(ch in str(args.video) for ch in "*?["):
        raise FileNotFoundError(f"--video not found: {args.video}")
    # every argument and path is checked before a model loads
    device, _ = device_and_dtype(args.device)
    require_paths(detector=args.detector, bert=args.bert, detector_config=args.detector_config,
                  segmenter=None if args.box_mode else args.segmenter)
    inputs = (args.video, args.detector, args.bert, args.detector_config, args.segmenter)
    check_distinct([args.out, args.preview])
    outputs = dict(overwrite=args.overwrite, inputs=inputs)
    check_output(args.out, args.fps or DEFAULT_FPS, **outputs)
    if args.preview:
        check_output(args.preview, args.fps or DEFAULT_FPS, **outputs)
    clip = read_frames(args.video, start=args.start, stride=args.stride, max_frames=args.max_frames)
    fps = args.fps or clip.fps or DEFAULT_FPS
    frames = torch.from_numpy(clip.frames)
    detector = load_detector(args.detector, bert=args.bert, config=args.detector_config, device=device)
    segmenter = None if args.box_mode else load_segmenter(args.segmenter, device=device)
    log.info("detector %s, segmenter %s, %d frames %dx%d", detector.variant,
             segmenter.variant if segmenter else "none (box mode)", frames.shape[0], frames.shape[2], frames.shape[1])
    started = time.perf_counter()

    def progress(done: int, total: int, _value) -> None:
        log.info("masks: %d/%d frames (%.1f s)", done, total, time.perf_counter() - started)

    result = masks_from_text(frames, args.text, detector, segmenter, options, callback=progress)
    write_video(args.out, result.masks[..., None].expand(-1, -1, -1, 3), fps, **outputs)
    if args.preview:
        write_video(args.preview, draw_preview(frames, result), fps, **outputs)
    empty = sum(1 for boxes in result.boxes if boxes.shape[0] == 0)
    print(f"wrote {args.out}: {frames.shape[0]} masks, {empty} frames without a detection, "
          f"mean coverage {float(result.masks.mean()):.3f}")
    return 0
