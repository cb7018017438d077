"""``python -m cococo_core evaluate``: the papers' metrics over a dataset, optionally running CoCoCo
inpainting or LGVI removal first; resumable, and sharded over processes / GPUs with ``accelerate launch``.

Examples::

    # CoCoCo on WebVid's validation CSV with the paper's protocol (1000 videos, first 16 frames at stride 4,
    # random masks and prompts from seed 0), CS/TC with CLIP ViT-L/14, VFID with I3D, on 4 GPUs
    accelerate launch --num_processes 4 -m cococo_core evaluate --dataset results_10M_val.csv \\
        --video-root webvid/videos --protocol paper --mode inpaint --base models/sd-v1-5-inpainting \\
        --motion models/cococo --clip models/clip-vit-large-patch14 --i3d models/i3d_rgb_imagenet.pt --out eval/

    # LGVI's removal table (ROVI test set): PSNR, SSIM, VFID, E*_warp with the published code's conventions
    python -m cococo_core evaluate --dataset rovi/test.json --video-root rovi/data --protocol lgvi --mode remove \
        --model models/lgvi --i3d models/i3d_rgb_imagenet.pt --flow raft --raft models/raft_large.pth --out eval-lgvi/

    # metrics only, for results made elsewhere (results/<id>.mp4)
    python -m cococo_core evaluate --dataset my_set/ --results results/ --out eval/

The output folder gets ``rows.csv``/``rows.json`` (per video) and ``summary.csv``/``summary.json``; running
the same command again skips the videos already done.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from ..metrics.conventions import CHOICES, PRESETS
from .args import add_device_arguments, device_and_dtype, non_negative, positive

logger = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from error
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be > 0, got {text!r}")
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("dataset and output")
    data.add_argument("--dataset", required=True, metavar="PATH",
                      help="a CSV file (columns video or WebVid's videoid/page_dir, prompt or WebVid's name, "
                           "optional id, mask, target), a ROVI JSON (LGVI's test.json: one sample per object, its "
                           "expression, inpainted target and mask) or a folder with videos/ [masks/ targets/ "
                           "prompts.json]")
    data.add_argument("--video-root", metavar="FOLDER", help="CSV and ROVI JSON datasets: the folder the video paths "
                      "are relative to (default: the file's folder)")
    data.add_argument("--out", required=True, metavar="FOLDER", help="output folder (created; reused to resume)")
    data.add_argument("--save-results", action="store_true", help="also write every result video to OUT/videos/")

    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--protocol", choices=["paper", "lgvi", "none"], default="none",
                          help="paper = CoCoCo's: 1000 random videos, first 16 frames at stride 4, 384x256, random "
                               "masks and prompts from --seed, no paste-back; lgvi = LGVI's removal table (ROVI test "
                               "set): the first 24 frames, 512x320 bilinear, the dataset's targets and expressions. "
                               "Both use the paper metric conventions (--conventions). Default none: every video, "
                               "all frames, the dataset's masks and prompts, the pack conventions; the options "
                               "below override the preset")
    protocol.add_argument("--start", type=non_negative, metavar="N", help="first frame (default 0)")
    protocol.add_argument("--stride", type=positive(int), metavar="K", help="use every K-th frame (paper: 4)")
    protocol.add_argument("--max-frames", type=positive(int), metavar="N", help="frames per video (paper: 16)")
    protocol.add_argument("--size", type=_size, metavar="WxH", help="resize frames to this size (paper: 384x256)")
    protocol.add_argument("--sample", type=positive(int), metavar="N", help="evaluate N videos drawn at random "
                          "from --seed (paper: 1000)")
    protocol.add_argument("--random-masks", action="store_true", default=None,
                          help="one random rectangle per video instead of the dataset's masks")
    protocol.add_argument("--random-prompts", action="store_true", default=None,
                          help="a random prompt per video (from --prompt-list) instead of the dataset's")
    protocol.add_argument("--prompt-list", metavar="FILE", help="text file, one prompt per line, for --random-prompts")
    protocol.add_argument("--seed", type=int, default=0, help="seed of the random draws and of sampling (default 0)")

    mode = parser.add_argument_group("what is evaluated")
    mode.add_argument("--mode", choices=["results", "inpaint", "remove"], default="results",
                      help="results = existing result videos (--results); inpaint = run CoCoCo (--base, --motion); "
                           "remove = run LGVI (--model)")
    mode.add_argument("--results", metavar="FOLDER", help="mode results: <id>.mp4 (or <id>/ frames) per video")
    mode.add_argument("--base", metavar="PATH", help="inpaint: SD-1.x inpainting folder or single file")
    mode.add_argument("--motion", metavar="PATH", help="inpaint: CoCoCo motion modules")
    mode.add_argument("--tokenizer", metavar="FOLDER", help="inpaint with a single-file --base: CLIP tokenizer folder")
    mode.add_argument("--model", metavar="FOLDER", help="remove: LGVI folder")
    mode.add_argument("--steps", type=positive(int), default=50, help="sampling steps (default 50)")
    mode.add_argument("--guidance", type=float, help="guidance scale (default 14 for inpaint, 3 for remove)")
    mode.add_argument("--image-guidance", type=float, default=1.5, help="remove: video guidance (default 1.5)")
    mode.add_argument("--no-paste-back", action="store_true", default=None,
                      help="inpaint: keep every generated pixel, as upstream (the paper's BP)")
    add_device_arguments(mode)

    metrics = parser.add_argument_group("metric models (a metric whose model is not given is skipped)")
    metrics.add_argument("--clip", metavar="PATH", help="CLIP for CS and TC: a transformers folder (default choice: "
                         "openai/clip-vit-large-patch14) or a ComfyUI clip_vision file (TC only, unless it has a text tower)")
    metrics.add_argument("--clip-tokenizer", metavar="FOLDER", help="CLIP tokenizer for a single-file --clip with text")
    metrics.add_argument("--cs-crop", choices=["frame", "mask"], default="frame",
                         help="CS on the whole frame (default, as the paper) or the mask's bounding box")
    metrics.add_argument("--i3d", metavar="PATH", help="i3d_rgb_imagenet.pt for VFID")
    metrics.add_argument("--flow", choices=["auto", "raft", "dis", "none"], default="auto",
                         help="optical flow for E_warp (default auto: RAFT with --raft weights and torchvision, "
                              "else OpenCV DIS; none skips E_warp)")
    metrics.add_argument("--raft", metavar="PATH", help="torchvision RAFT-large weights (raft_large_C_T_SKHT_V2-*.pth)")
    metrics.add_argument("--warp-flow-from", choices=["result", "reference"], default="result",
                         help="estimate E_warp's flow on the result (default) or the reference video")

    named = parser.add_argument_group("metric conventions (docs/metrics.md; each number in summary.json names its own)")
    named.add_argument("--conventions", choices=list(PRESETS), help="paper = the published evaluation code's "
                       "arithmetic (E2FGVI/ProPainter, Lai et al.); pack = the pack's own. Default: the --protocol "
                       "preset's (paper and lgvi: paper; none: pack); the options below override single ones")
    named.add_argument("--i3d-norm", choices=CHOICES["i3d_norm"], help="VFID: I3D BatchNorm with its running "
                       "statistics (pack) or each video's own (per-video: paper, as E2FGVI never calls .eval())")
    named.add_argument("--warp-occluded", choices=CHOICES["warp_occluded"], help="E_warp of a fully occluded frame "
                       "pair: averaged over all pixels (pack) or 0 (zero: paper, Lai et al.'s evaluate_WarpError.py)")
    named.add_argument("--average", choices=CHOICES["average"], help="PSNR/SSIM over the dataset: mean of per-video "
                       "means (video: pack) or over all frames (frame: paper, E2FGVI's evaluate.py)")
    named.add_argument("--cs-clamp", choices=CHOICES["cs_clamp"], help="CS: clamp each frame's score at 0 (frame: "
                       "both presets, Hessel et al.'s CLIP-S) or the mean (mean: torchmetrics' CLIPScore)")


def _protocol(args):
    from ..evaluation.protocol import PROTOCOLS  # noqa: PLC0415

    base = PROTOCOLS[args.protocol]
    chosen = {k: v for k, v in dict(start=args.start, stride=args.stride, max_frames=args.max_frames, size=args.size,
                                    sample=args.sample, random_masks=args.random_masks,
                                    random_prompts=args.random_prompts).items() if v is not None}
    return replace(base, seed=args.seed, **chosen)


def _conventions(args):
    """The --conventions preset (default: the --protocol's) with the single options given."""
    from ..evaluation.protocol import PROTOCOL_CONVENTIONS  # noqa: PLC0415
    from ..metrics.conventions import conventions_preset  # noqa: PLC0415

    return conventions_preset(args.conventions or PROTOCOL_CONVENTIONS[args.protocol], i3d_norm=args.i3d_norm,
                              warp_occluded=args.warp_occluded, average=args.average, cs_clamp=args.cs_clamp)


def _check(args) -> None:
    if args.mode == "results" and not args.results:
        raise ValueError("--mode results needs --results FOLDER (or run a model with --mode inpaint / remove)")
    if args.mode == "inpaint" and not (args.base and args.motion):
        raise ValueError("--mode inpaint needs --base and --motion")
    if args.mode == "remove" and not args.model:
        raise ValueError("--mode remove needs --model (an LGVI folder)")
    for option in ("results", "base", "motion", "model", "clip", "i3d", "raft", "prompt_list", "tokenizer"):
        value = getattr(args, option)
        if value and not Path(value).exists():
            raise FileNotFoundError(f"--{option.replace('_', '-')} not found: {value}")


def _suite(args, device, conventions):
    from ..metrics import MetricSuite, load_clip, load_flow, load_i3d  # noqa: PLC0415

    clip = load_clip(args.clip, tokenizer=args.clip_tokenizer, device=device) if args.clip else None
    i3d = load_i3d(args.i3d, device=device) if args.i3d else None
    flow = None if args.flow == "none" else load_flow(args.flow, raft_weights=args.raft, device=device)
    return MetricSuite(clip=clip, i3d=i3d, flow=flow, clip_crop=args.cs_crop, warp_flow_from=args.warp_flow_from,
                       conventions=conventions)


def _maker(args, device, dtype, paste_back: bool):
    from ..evaluation import runner  # noqa: PLC0415

    if args.mode == "inpaint":
        from ..pipeline import CoCoCoPipeline  # noqa: PLC0415

        pipe = CoCoCoPipeline.from_pretrained(args.base, args.motion, tokenizer=args.tokenizer, device=device, dtype=dtype)
        guidance = 14.0 if args.guidance is None else args.guidance
        return runner.cococo_result(pipe, args.steps, guidance, args.seed, paste_back=paste_back)
    if args.mode == "remove":
        from ..lgvi.pipeline import LGVIPipeline  # noqa: PLC0415

        pipe = LGVIPipeline.from_pretrained(args.model, device=device, dtype=dtype)
        guidance = 3.0 if args.guidance is None else args.guidance
        return runner.lgvi_result(pipe, args.steps, guidance, args.image_guidance, args.seed)
    return None


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from ..evaluation.dataset import read_dataset  # noqa: PLC0415
    from ..evaluation.protocol import PROMPTS, sample_videos  # noqa: PLC0415
    from ..evaluation.results import ResultStore  # noqa: PLC0415
    from ..evaluation.runner import Evaluator  # noqa: PLC0415

    _check(args)
    protocol = _protocol(args)
    conventions = _conventions(args)
    prompts = PROMPTS
    if args.prompt_list:
        prompts = tuple(line.strip() for line in Path(args.prompt_list).read_text(encoding="utf-8").splitlines()
                        if line.strip())
        if not prompts:
            raise ValueError(f"--prompt-list {args.prompt_list} has no prompts")
    samples = sample_videos(read_dataset(args.dataset, video_root=args.video_root), protocol.sample, protocol.seed)
    paste_back = not (args.no_paste_back if args.no_paste_back is not None else args.protocol == "paper")

    store = ResultStore(args.out)
    settings = _settings(args, protocol, paste_back, conventions)
    store.check_settings(settings, record=False)  # every process, before any of them waits for the others
    state = PartialState(cpu=args.device == "cpu")
    device = state.device if args.device == "auto" else device_and_dtype(args.device)[0]
    _, dtype = device_and_dtype(str(device), args.dtype)
    if state.is_main_process:
        store.prepare()
        store.check_settings(settings)
    state.wait_for_everyone()
    finished = store.finished()
    state.wait_for_everyone()  # every process has read the same finished set before any writes
    pending = [s for s in samples if s.id not in finished]
    mine = pending[state.process_index::state.num_processes]
    logger.info("process %d/%d: %d of %d videos to do (%d already done)", state.process_index + 1,
                state.num_processes, len(mine), len(samples), len(finished))

    save = None
    if args.save_results:
        save = Path(args.out) / "videos"
        save.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(store, protocol, _suite(args, device, conventions), _maker(args, device, dtype, paste_back) if mine else None,
                          Path(args.results) if args.results else None, save, prompts, score_prompt=args.mode != "remove" and args.protocol != "lgvi")
    for sample in tqdm(mine, desc=f"evaluate {state.process_index + 1}/{state.num_processes}", unit="video",
                       position=state.process_index, disable=not mine):
        store.append(state.process_index, evaluator.run_one(sample))
    state.wait_for_everyone()
    if state.is_main_process:
        summary = store.gather([s.id for s in samples], {**settings, "processes": state.num_processes}, conventions)
        _print_summary(summary, args.out)
    state.wait_for_everyone()
    return 0


def _settings(args, protocol, paste_back: bool, conventions) -> dict:
    """What the numbers depend on (recorded with the results; a resumed run must match it)."""
    models = {"inpaint": ("base", "motion", "tokenizer", "steps", "guidance"),
              "remove": ("model", "steps", "guidance", "image_guidance"), "results": ("results",)}[args.mode]
    return {"protocol": args.protocol, **vars(protocol), "mode": args.mode, **{k: getattr(args, k) for k in models},
            "paste_back": paste_back if args.mode == "inpaint" else None, "prompt_list": args.prompt_list,
            "clip": args.clip, "i3d": args.i3d, "flow": args.flow, "raft": args.raft, "cs_crop": args.cs_crop,
            "warp_flow_from": args.warp_flow_from, "dataset": args.dataset, "conventions": conventions.as_dict()}


def _print_summary(summary: dict, out: str) -> None:
    from ..metrics.suite import METRICS  # noqa: PLC0415

    print(f"{summary['videos']} videos evaluated, {summary['failed']} failed; results in {out}")
    for key, entry in summary["metrics"].items():
        label, better, _ = METRICS[key]
        print(f"  {label:<8} {entry['mean']:10.4f}  ({better} is better; {entry['videos']} videos; "
              f"{entry['convention']})")
    if summary.get("flow_backend"):
        print(f"  E_warp flow: {summary['flow_backend']}")
