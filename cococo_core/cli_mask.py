"""``python -m cococo_core mask``: per-frame masks of a video from a text phrase (GroundingDINO + SAM).

Writes a folder of PNG masks (``00000.png``..., white = masked; lossless, what ``inpaint --mask`` reads best) or,
when ``--out`` ends in .mp4/.gif/.webm, a mask video. ``--preview`` writes the frames with the masks and boxes drawn.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".mkv", ".avi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .masks.detect import DEFAULT_BOX_THRESHOLD, DEFAULT_TEXT_THRESHOLD
    from .masks.text_masks import MaskOptions

    defaults = MaskOptions()
    io = parser.add_argument_group("input and output")
    io.add_argument("--video", required=True, metavar="PATH",
                    help="input video file (.mp4, .gif, ...) or a folder of frames (PNG/JPG, sorted by name)")
    io.add_argument("--text", required=True,
                    help='what to mask; several things as "cat . dog" (lower-cased, each phrase ended by " .")')
    io.add_argument("--out", required=True, metavar="PATH",
                    help="output: a folder of PNG masks (white = masked), or a .mp4/.gif/.webm mask video")
    io.add_argument("--preview", metavar="PATH",
                    help="also write the frames with masks and boxes drawn (folder of PNGs or a video file)")
    io.add_argument("--fps", type=float, default=None,
                    help="frame rate of written videos (default: the input's, or 8 for a folder of frames)")
    io.add_argument("--max-frames", type=int, default=None, metavar="N", help="use only the first N frames")
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
    models.add_argument("--device", default="cpu", help="torch device for both models, e.g. cpu, cuda, cuda:1, mps")
    masks = parser.add_argument_group("masks")
    masks.add_argument("--box-threshold", type=float, default=DEFAULT_BOX_THRESHOLD,
                       help=f"keep boxes whose best token probability exceeds this (default {DEFAULT_BOX_THRESHOLD})")
    masks.add_argument("--text-threshold", type=float, default=DEFAULT_TEXT_THRESHOLD,
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


def _read_frames(path: Path, max_frames: int | None):
    """((F, H, W, 3) float tensor in [0, 1], fps or None) from a video file or a folder of images."""
    import numpy as np
    import torch

    if not path.exists():
        raise FileNotFoundError(f"--video not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
        if not files:
            raise ValueError(f"--video folder {path} holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        from PIL import Image

        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"--video folder {path}: the frames differ in size")
        fps = None
    else:
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(path))
        try:
            fps = reader.get_meta_data().get("fps")
            arrays = []
            for frame in reader:
                arrays.append(np.asarray(frame)[..., :3])
                if max_frames and len(arrays) >= max_frames:
                    break
        finally:
            reader.close()
        if not arrays:
            raise ValueError(f"--video {path} holds no frames")
    return torch.from_numpy(np.stack(arrays)).float() / 255.0, fps


def _write_frames(images, path: Path, fps: float) -> None:
    """Write (F, H, W) or (F, H, W, 3) floats in [0, 1] as a PNG folder or a video file (by suffix)."""
    import numpy as np
    import torch

    data = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if path.suffix.lower() in VIDEO_SUFFIXES:
        import imageio.v2 as imageio

        path.parent.mkdir(parents=True, exist_ok=True)
        if data.ndim == 3:
            data = np.repeat(data[..., None], 3, axis=-1)
        options = {"duration": 1000 / fps} if path.suffix.lower() == ".gif" else {"fps": fps, "macro_block_size": 1}
        imageio.mimwrite(str(path), list(data), **options)
        return
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(data):
        Image.fromarray(frame).save(path / f"{index:05d}.png")


def run(args: argparse.Namespace) -> int:
    from .masks.loading import load_detector, load_segmenter
    from .masks.preview import draw_preview
    from .masks.text_masks import MaskOptions, masks_from_text

    options = MaskOptions(
        box_threshold=args.box_threshold, text_threshold=args.text_threshold, detect_every=args.detect_every,
        max_boxes=args.max_boxes, box_mode=args.box_mode, fill_holes=args.fill_holes, grow=args.grow,
        temporal_smooth=args.temporal_smooth, feather=args.feather, chunk_size=args.chunk_size,
        detection_short_side=args.detection_size,
    )
    options.validate()
    if not args.box_mode and not args.segmenter:
        raise ValueError("--segmenter is required (a SAM folder or sam_vit_*.pth) unless --box-mode is given")
    frames, fps = _read_frames(Path(args.video), args.max_frames)
    fps = args.fps or fps or 8.0
    detector = load_detector(args.detector, bert=args.bert, config=args.detector_config, device=args.device)
    segmenter = None if args.box_mode else load_segmenter(args.segmenter, device=args.device)
    log.info("detector %s, segmenter %s, %d frames %dx%d", detector.variant,
             segmenter.variant if segmenter else "none (box mode)", frames.shape[0], frames.shape[2], frames.shape[1])
    started = time.perf_counter()

    def progress(done: int, total: int, _value) -> None:
        log.info("masks: %d/%d frames (%.1f s)", done, total, time.perf_counter() - started)

    result = masks_from_text(frames, args.text, detector, segmenter, options, callback=progress)
    _write_frames(result.masks, Path(args.out), fps)
    if args.preview:
        _write_frames(draw_preview(frames, result), Path(args.preview), fps)
    empty = sum(1 for boxes in result.boxes if boxes.shape[0] == 0)
    print(f"wrote {args.out}: {frames.shape[0]} masks, {empty} frames without a detection, "
          f"mean coverage {float(result.masks.mean()):.3f}")
    return 0
