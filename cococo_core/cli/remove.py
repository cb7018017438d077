"""``python -m cococo_core remove``: language-driven object removal with LGVI (referring expression) or
LGVI-I (a chat request answered by LLaVA-1.5; follow-up requests continue the conversation).

Examples::

    python -m cococo_core remove --model models/lgvi --video in.mp4 \\
        --text "remove the man in the white outfit" --out out.mp4 --mask-out mask.mp4

    python -m cococo_core remove --model models/lgvi-i --chat models/llava-1.5-7b-hf --video in.mp4 \\
        --text "could you make the highway look less crowded?" --follow-up "and remove the truck too" --out out.mp4

With LGVI-I the chat model is loaded, answers, and is freed before diffusion (staged memory).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from .args import (add_device_arguments, add_frame_selection, add_overwrite, device_and_dtype, finite, non_negative,
                       positive, require_paths, seed, steps)

logger = logging.getLogger(__name__)

DEFAULT_FPS = 8.0  # the official GIFs: 125 ms per frame


def add_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("input and output")
    files.add_argument("--video", required=True, metavar="PATH",
                       help="input: a video (.mp4 .webm .mov .mkv .avi .gif), a folder of images (natural order), "
                            "an image pattern such as 'frames/*.png' (quote it), or one image")
    files.add_argument("--out", required=True, metavar="PATH",
                       help="output video: .mp4, .webm, .gif, or a folder path without a suffix for PNG frames; with "
                            "--follow-up, turn k is written to NAME_turnK.SUFFIX")
    files.add_argument("--mask-out", metavar="PATH",
                       help="also write the predicted removal mask (white = removed) as a video / PNG folder")
    files.add_argument("--reply-out", metavar="PATH", help="LGVI-I: also write the chat replies to this text file")
    add_overwrite(files)
    add_frame_selection(files, default_fps=DEFAULT_FPS,
                        max_frames_help="use at most N frames (default: all; the official scripts took the first 24)")

    models = parser.add_argument_group("models")
    models.add_argument("--model", required=True, metavar="FOLDER",
                        help="LGVI or LGVI-I checkpoint folder (Hugging Face jianzongwu/lgvi or jianzongwu/lgvi-i: "
                             "unet/ vae/ scheduler/ text_encoder/ tokenizer/ [llava/])")
    models.add_argument("--chat", metavar="FOLDER",
                        help="LGVI-I: LLaVA-1.5-7B, a llava-hf folder (llava-hf/llava-1.5-7b-hf) or the original "
                             "layout (liuhaotian/llava-v1.5-7b, then also --clip-vision); without it LGVI is used")
    models.add_argument("--clip-vision", metavar="FOLDER",
                        help="LGVI-I with an original-layout --chat: the CLIP vision tower folder "
                             "(openai/clip-vit-large-patch14-336)")
    models.add_argument("--llava-weights", metavar="PATH",
                        help="LGVI-I's embed/projector/transfer-head weights (default MODEL/llava/llava_weights.pth)")
    models.add_argument("--quantize", choices=["4bit", "8bit"],
                        help="load the chat model in 4 or 8 bits (needs bitsandbytes and a CUDA GPU; llava-hf folders)")
    add_device_arguments(models)
    models.add_argument("--attention", choices=["sdpa", "xformers", "naive"], default="sdpa",
                        help="attention kernel (default sdpa = torch scaled_dot_product_attention)")
    models.add_argument("--vae-chunk", type=positive(int), default=8, metavar="FRAMES",
                        help="frames per VAE encode/decode call (default 8; lower saves memory)")

    sampling = parser.add_argument_group("request and sampling")
    sampling.add_argument("--text", required=True,
                          help='LGVI: the referring expression ("remove the bird on the left"); LGVI-I: the chat '
                               'request ("could you make the highway look less crowded?")')
    sampling.add_argument("--follow-up", action="append", default=[], metavar="TEXT",
                          help="LGVI-I: a follow-up request in the same conversation (repeatable); each turn "
                               "gives its own video")
    sampling.add_argument("--steps", type=steps, default=50, help="scheduler steps, 1 to 1000 (default 50)")
    sampling.add_argument("--guidance", type=finite, default=3.0, help="text guidance scale (default 3.0)")
    sampling.add_argument("--image-guidance", type=finite, default=1.5,
                          help="video guidance scale (default 1.5; guidance is off unless text > 1 and video >= 1)")
    sampling.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    sampling.add_argument("--negative-text", default=None,
                          help='LGVI: text for the unconditional side of guidance (default "", as upstream)')
    sampling.add_argument("--eta", type=finite, default=0.0,
                          help="DDIM eta, used when the checkpoint's scheduler is DDIM (default 0 = deterministic)")
    sampling.add_argument("--temperature", type=finite, default=0.2, help="LGVI-I chat sampling temperature (default 0.2)")
    sampling.add_argument("--max-new-tokens", type=positive(int), default=1024,
                          help="LGVI-I: longest chat reply in tokens (default 1024)")
    sampling.add_argument("--window", type=positive(int), default=24, metavar="FRAMES",
                          help="temporal window length for long videos (default 24, the trained length)")
    sampling.add_argument("--overlap", type=non_negative, default=4, metavar="FRAMES",
                          help="frames shared by neighbouring windows (default 4)")

    size = parser.add_argument_group("resolution")
    size.add_argument("--width", type=positive(int), default=512, metavar="PIXELS",
                      help="working width, a multiple of 8 (default 512, the official size)")
    size.add_argument("--height", type=positive(int), default=320, metavar="PIXELS",
                      help="working height, a multiple of 8 (default 320, the official size)")
    size.add_argument("--native-size", action="store_true",
                      help="work at the input size rounded to multiples of 8 instead of --width x --height")
    size.add_argument("--keep-work-size", action="store_true",
                      help="write the output at the working size (default: resized back to the input size)")


def _turn_path(path: str, turn: int, turns: int) -> str:
    if turns == 1:
        return path
    base = Path(path)
    return str(base.with_name(f"{base.stem}_turn{turn}{base.suffix}"))


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from ..attention import attention_backend  # noqa: PLC0415
    from ..lgvi.guidance import guidance_enabled  # noqa: PLC0415
    from ..lgvi.video_tensor import work_size  # noqa: PLC0415
    from ..output_files import check_distinct, write_text  # noqa: PLC0415
    from ..output_files import check_output as check_file  # noqa: PLC0415
    from ..pipeline import memory  # noqa: PLC0415
    from ..video_io import check_output, read_frames, write_video  # noqa: PLC0415

    # every argument and path is checked before a model loads
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model folder not found: {args.model}")
    if args.negative_text is not None and args.chat:
        raise ValueError("--negative-text is for LGVI's CLIP text; LGVI-I's negative is zeros, as upstream")
    if args.follow_up and not args.chat:
        raise ValueError("--follow-up needs the chat model (--chat); LGVI takes one referring expression")
    require_paths(chat=args.chat, clip_vision=args.clip_vision, llava_weights=args.llava_weights)
    if args.overlap >= args.window:
        raise ValueError(f"--overlap ({args.overlap}) must be smaller than --window ({args.window})")
    if not args.native_size:
        work_size(8, 8, (args.width, args.height))  # multiples of 8
    device, dtype = device_and_dtype(args.device, args.dtype)
    if not args.chat and os.path.isdir(os.path.join(args.model, "llava")):
        logger.warning("%s looks like LGVI-I (it has llava/); without --chat its U-Net gets CLIP text conditioning, "
                       "which it was not trained with. Give --chat LLAVA_FOLDER for LGVI-I", args.model)
    requests = [args.text, *args.follow_up]
    inputs = (args.video, args.model, args.chat, args.clip_vision, args.llava_weights)
    outputs = dict(overwrite=args.overwrite, inputs=inputs)
    turns = len(requests)
    videos = [_turn_path(args.out, turn, turns) for turn in range(1, turns + 1)]
    masks = [_turn_path(args.mask_out, turn, turns) for turn in range(1, turns + 1)] if args.mask_out else []
    check_distinct([*videos, *masks, args.reply_out])
    for path in videos + masks:
        check_output(path, args.fps or DEFAULT_FPS, **outputs)
    if args.reply_out:
        check_file(args.reply_out, what="--reply-out", **outputs)
    clip = read_frames(args.video, start=args.start, stride=args.stride, max_frames=args.max_frames)
    fps = args.fps or clip.fps or DEFAULT_FPS
    frames = torch.from_numpy(clip.frames)
    work_hw = work_size(*clip.frames.shape[1:3], None if args.native_size else (args.width, args.height))
    memory.check(memory.lgvi(frames.shape[0], work_hw, dtype=dtype, vae_chunk=args.vae_chunk, window=args.window,
                             guided=guidance_enabled(args.guidance, args.image_guidance)), device,
                 options="--width/--height, --max-frames, --window or --vae-chunk")
    options = dict(
        num_inference_steps=args.steps, guidance_scale=args.guidance, image_guidance_scale=args.image_guidance,
        seed=args.seed, size=None if args.native_size else (args.width, args.height),
        resize_back=not args.keep_work_size, window_length=args.window, window_overlap=args.overlap,
        vae_batch_size=args.vae_chunk, eta=args.eta,
    )
    logger.info("%d frames of %dx%d at %.3g fps on %s (%s)", frames.shape[0], frames.shape[2], frames.shape[1], fps,
                device, str(dtype).removeprefix("torch."))
    replies = []
    with attention_backend(args.attention):
        if args.chat:
            results = _run_chat(args, frames, requests, device, dtype, options, replies, tqdm)
        else:
            results = [_run_referring(args, frames, device, dtype, options, tqdm)]
    for turn, (video, mask) in enumerate(results, start=1):
        out = write_video(_turn_path(args.out, turn, len(results)), video, fps, **outputs)
        logger.info("wrote %s", out)
        if args.mask_out and mask is not None:
            write_video(_turn_path(args.mask_out, turn, len(results)), mask[..., None].expand(*mask.shape, 3), fps,
                        **outputs)
    if args.reply_out and replies:
        text = "\n\n".join(replies) + "\n"
        check_file(args.reply_out, what="--reply-out", **outputs)
        write_text(args.reply_out, text, overwrite=args.overwrite)
    return 0


def _progress(tqdm, steps, desc):
    bar = tqdm(total=steps, desc=desc, unit="step")
    return bar, (lambda step, total, latents: (setattr(bar, "total", total), bar.update(step - bar.n)))


def _run_referring(args, frames, device, dtype, options, tqdm):
    from ..lgvi.pipeline import LGVIPipeline  # noqa: PLC0415

    started = time.perf_counter()
    pipe = LGVIPipeline.from_pretrained(args.model, device=device, dtype=dtype)
    logger.info("LGVI loaded in %.1f s", time.perf_counter() - started)
    bar, callback = _progress(tqdm, args.steps, "removing")
    with bar:
        result = pipe(frames, args.text, negative_prompt=args.negative_text, callback=callback, **options)
    return result.frames, result.mask


def _run_chat(args, frames, requests, device, dtype, options, replies, tqdm):
    from ..lgvi.interactive import remove_with_chat  # noqa: PLC0415

    session, results = None, []
    for turn, request in enumerate(requests, start=1):
        bar, callback = _progress(tqdm, args.steps, f"turn {turn}")
        with bar:
            result = remove_with_chat(
                frames, request, lgvi_path=args.model, llava_path=args.chat, llava_weights=args.llava_weights,
                clip_path=args.clip_vision, session=session, device=device, dtype=dtype, quantization=args.quantize,
                temperature=args.temperature, max_new_tokens=args.max_new_tokens, callback=callback, **options,
            )
        session = result.session
        print(f"[turn {turn}] User: {request}\n[turn {turn}] Assistant: {result.reply}")
        if result.phrase:
            print(f"[turn {turn}] removal phrase: {result.phrase}")
        replies.append(f"User: {request}\nAssistant: {result.reply}")
        results.append((result.frames, result.mask))
    return results
