"""``python -m cococo_core mask``: masks of a video from a text phrase, per frame (GroundingDINO + SAM), or
tracked through the video with ``--tracker`` (SAM 2 / SAM 2.1 from ``--box`` / ``--point`` prompts or GroundingDINO
boxes of ``--text`` on a key frame; SAM 3 from ``--text``), see :mod:`cococo_core.masks.tracking`.

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
    io.add_argument("--text",
                    help='what to mask; several things as "cat . dog" (lower-cased, each phrase ended by " ."); '
                         "needed unless --tracker is given with --box/--point prompts")
    io.add_argument("--out", required=True, metavar="PATH",
                    help="output: a folder (no suffix) of PNG masks, white = masked, or a .mp4/.webm/.gif mask video")
    io.add_argument("--preview", metavar="PATH",
                    help="also write the frames with masks and boxes drawn (folder of PNGs or a video file)")
    add_frame_selection(io, default_fps=DEFAULT_FPS)
    add_overwrite(io)
    models = parser.add_argument_group("models")
    models.add_argument("--detector", metavar="PATH",
                        help="GroundingDINO: a Hugging Face folder (e.g. grounding-dino-tiny) or an original "
                             "checkpoint such as groundingdino_swint_ogc.pth (needed for --text, except with a "
                             "tracker that reads text itself)")
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
    tracking = parser.add_argument_group(
        "tracking", "masks that follow objects through the video, with stable object ids (instead of per-frame "
        "detection); --fill-holes, --grow, --temporal-smooth and --feather apply to the tracked masks too")
    tracking.add_argument("--tracker", metavar="FILE_OR_FOLDER",
                          help="a video tracker: SAM 2 / SAM 2.1 original sam2.1_hiera_{tiny,small,base_plus,large}.pt"
                               " / sam2_hiera_*.pt, EdgeTAM edgetam.pt (fast, small; needs timm), SAM 3 sam3.pt, or a"
                               " Hugging Face folder (sam2_video, edgetam_video, ...)")
    tracking.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1[@FRAME]",
                          help="a box around an object on a frame (pixels; frame 0 when omitted; #ID at the end names "
                               "the object); repeat for more objects")
    tracking.add_argument("--point", action="append", default=[], metavar="X,Y[@FRAME][:neg]",
                          help="a click on an object (':neg': on what is NOT the object); clicks refine the box on "
                               "their frame, else form one object; repeatable")
    tracking.add_argument("--objects", default="all",
                          help="which tracked objects to keep: all (default), top or top:N (by score), or ids "
                               "such as 1,3")
    tracking.add_argument("--key-frame", type=int, default=0, metavar="FRAME",
                          help="the frame --text is detected on for a SAM 2 tracker (default 0)")
    tracking.add_argument("--redetect-every", type=int, default=0, metavar="N",
                          help="run GroundingDINO again every N frames to add objects that enter (default 0: only on "
                               "the key frame)")
    tracking.add_argument("--save-logits", metavar="FILE.safetensors",
                          help="also save each object's mask logits at frame resolution: 'logits' (objects, frames, "
                               "H, W) float32 and 'object_ids'")


def run(args: argparse.Namespace) -> int:
    if args.tracker:
        return run_tracking(args)
    if not args.text:
        raise ValueError("--text is required (what to mask), unless --tracker is given with --box/--point prompts")
    if not args.detector:
        raise ValueError("--detector is required (a GroundingDINO folder or groundingdino_*.pth) to find --text")
    unused = [name for name in ("box", "point", "save_logits") if getattr(args, name)]
    if unused or args.objects != "all" or args.key_frame or args.redetect_every:
        raise ValueError("--box, --point, --objects, --key-frame, --redetect-every and --save-logits need --tracker")
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


def _tracking_options_unused(args: argparse.Namespace, defaults) -> list[str]:
    """Per-frame options that mean nothing with --tracker (refused rather than silently ignored)."""
    checks = {"--box-mode": args.box_mode, "--segmenter": args.segmenter,
              "--detect-every (use --redetect-every)": args.detect_every != defaults.detect_every,
              "--chunk-size": args.chunk_size != defaults.chunk_size,
              "--preprocessing": args.preprocessing != defaults.preprocessing}
    return [name for name, given in checks.items() if given]


def run_tracking(args: argparse.Namespace) -> int:
    """``mask --tracker``: every argument, path and prompt is checked (and the tracker's kind read from its file or
    folder) before a model is built."""
    import torch

    from ..masks.text_masks import MaskOptions, postprocess
    from ..masks.tracking import load_tracker, open_source, reads_text, track_masks, tracker_kind
    from ..masks.tracking.api import collect_prompts
    from ..masks.tracking.preview import draw_track_preview
    from ..masks.tracking.prompts import parse_box, parse_objects, parse_point
    from ..output_files import check_distinct
    from ..output_files import check_output as check_file
    from ..video_io import check_output, read_frames, write_video

    defaults = MaskOptions()
    unused = _tracking_options_unused(args, defaults)
    if unused:
        raise ValueError(f"{', '.join(unused)}: per-frame mask options, not used with --tracker; leave them out")
    options = MaskOptions(fill_holes=args.fill_holes, grow=args.grow, temporal_smooth=args.temporal_smooth,
                          feather=args.feather, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
                          max_boxes=args.max_boxes, detection_short_side=args.detection_size)
    options.validate()
    boxes, points = [parse_box(b) for b in args.box], [parse_point(p) for p in args.point]
    objects, top_k = parse_objects(args.objects)
    text = (args.text or "").strip() or None
    if text is None and not boxes and not points:
        raise ValueError("--tracker needs something to track: --text, --box or --point")
    if args.key_frame < 0 or args.redetect_every < 0:
        raise ValueError("--key-frame and --redetect-every must be >= 0")
    if not Path(args.video).exists() and not any(ch in str(args.video) for ch in "*?["):
        raise FileNotFoundError(f"--video not found: {args.video}")
    device, _ = device_and_dtype(args.device)
    require_paths(tracker=args.tracker, detector=args.detector, bert=args.bert, detector_config=args.detector_config)
    if args.save_logits and Path(args.save_logits).suffix.lower() != ".safetensors":
        raise ValueError(f"--save-logits {args.save_logits}: give a .safetensors file name")
    inputs = (args.video, args.tracker, args.detector, args.bert, args.detector_config)
    check_distinct([args.out, args.preview, args.save_logits])
    outputs = dict(overwrite=args.overwrite, inputs=inputs)
    check_output(args.out, args.fps or DEFAULT_FPS, **outputs)
    if args.preview:
        check_output(args.preview, args.fps or DEFAULT_FPS, **outputs)
    if args.save_logits:
        check_file(args.save_logits, **outputs)
    source = open_source(args.tracker)
    kind = tracker_kind(source)
    uses_detector = text is not None and not reads_text(kind)
    if uses_detector and not args.detector:
        raise ValueError(f"--tracker {args.tracker} is {kind}, which reads no text: give --detector (GroundingDINO; "
                         "its boxes of --text on --key-frame prompt the tracker) or use --box/--point instead of "
                         "--text")
    if args.detector and not uses_detector:
        raise ValueError("--detector is only used to find --text for a tracker that reads no text; leave it out")
    clip = read_frames(args.video, start=args.start, stride=args.stride, max_frames=args.max_frames)
    fps = args.fps or clip.fps or DEFAULT_FPS
    frames = torch.from_numpy(clip.frames)
    collect_prompts(boxes, points, frames.shape[0], tuple(frames.shape[1:3]))  # frame numbers and coordinates
    if args.key_frame >= frames.shape[0]:
        raise ValueError(f"--key-frame {args.key_frame}: the video has {frames.shape[0]} frames")
    tracker = load_tracker(source, device=device)
    tracked = {}
    if uses_detector:
        from ..masks.loading import load_detector

        tracked = dict(detector=load_detector(args.detector, bert=args.bert, config=args.detector_config,
                                              device=device),
                       key_frame=args.key_frame, detect_every=args.redetect_every, box_threshold=args.box_threshold,
                       text_threshold=args.text_threshold, max_objects=args.max_boxes,
                       detection_size=args.detection_size)
    log.info("tracker %s, %d frames %dx%d", tracker.describe(), frames.shape[0], frames.shape[2], frames.shape[1])
    started = time.perf_counter()

    def progress(done: int, total: int, _value) -> None:
        log.info("tracking: %d/%d frames (%.1f s)", done, total, time.perf_counter() - started)

    result = track_masks(frames, tracker, text=text, boxes=boxes, points=points, objects=objects, top_k=top_k,
                         progress=progress, **tracked)
    masks = postprocess(result.masks.float(), options)
    write_video(args.out, masks[..., None].expand(-1, -1, -1, 3), fps, **outputs)
    if args.preview:
        write_video(args.preview, draw_track_preview(frames, result), fps, **outputs)
    if args.save_logits:
        save_logits(args.save_logits, result)
    print(f"wrote {args.out}: {frames.shape[0]} masks of object(s) {result.object_ids or 'none'}, "
          f"mean coverage {float(masks.mean()):.3f}")
    return 0


def save_logits(path, result) -> None:
    """``logits`` (objects, frames, H, W) float32 and ``object_ids`` (objects,) int64, as safetensors."""
    import torch
    from safetensors.torch import save_file

    from ..output_files import staged_file

    tensors = {"logits": result.logits.float().contiguous(),
               "object_ids": torch.tensor(result.object_ids, dtype=torch.int64)}
    with staged_file(path) as temporary:
        save_file(tensors, str(temporary), metadata={"content": "per-object mask logits at frame resolution"})
