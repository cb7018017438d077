"""``python -m cococo_core inpaint``: inpaint a video file (or image sequence) with CoCoCo from a text prompt.

Example::

    python -m cococo_core inpaint --base models/sd-v1-5-inpainting --motion models/cococo \\
        --video in.mp4 --mask mask.mp4 --prompt "a swan swimming" --out out.mp4

Paths are only opened as files (never passed to a shell); missing files are one-line errors.
"""
from __future__ import annotations

import argparse
import logging
import time

from .args import (DTYPES, add_device_arguments, add_frame_selection, add_overwrite, device_and_dtype, finite,
                       non_negative, positive, require_paths, seed, steps)

logger = logging.getLogger(__name__)

DEFAULT_FPS = 12.0  # for image sequences, which carry no frame rate (the official demo wrote 12 fps)


def _threshold(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] or 'none', got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("input and output")
    files.add_argument("--video", required=True, metavar="PATH",
                       help="input: a video (.mp4 .webm .mov .mkv .avi .gif), a folder of images (natural order), "
                            "an image pattern such as 'frames/*.png' (quote it), or one image")
    files.add_argument("--mask", required=True, metavar="PATH",
                       help="mask, white = region to fill: same kinds of source as --video, one frame per video frame "
                            "(or a single image for all frames); read with the same --start/--stride/--max-frames")
    files.add_argument("--out", required=True, metavar="PATH",
                       help="output: .mp4 (H.264), .webm (VP9), .gif, or a folder path without a suffix for PNG frames")
    add_frame_selection(files, default_fps=DEFAULT_FPS)
    files.add_argument("--mask-threshold", type=_threshold, default=0.5, metavar="T",
                       help="mask pixels with luminance >= T (in [0, 1]) are filled (default 0.5); 'none' keeps grey "
                            "levels as a soft mask, as the official code does")
    files.add_argument("--mask-dilate", type=non_negative, default=0, metavar="PIXELS",
                       help="grow the mask by this many pixels before inpainting (default 0; the official demo used 12)")
    files.add_argument("--crf", type=non_negative, metavar="Q",
                       help="video quality, lower is better (default 18 for .mp4, 30 for .webm)")
    add_overwrite(files)

    models = parser.add_argument_group("models")
    models.add_argument("--base", required=True, metavar="PATH",
                        help="SD-1.x inpainting model: a diffusers folder (unet/ vae/ text_encoder/ tokenizer/) or a "
                             "single .safetensors/.ckpt file (then also give --tokenizer)")
    models.add_argument("--motion", required=True, metavar="PATH",
                        help="CoCoCo motion modules: the folder of official model_0..3.pth files or a converted "
                             ".safetensors file")
    models.add_argument("--tokenizer", metavar="FOLDER",
                        help="CLIP tokenizer folder (vocab.json + merges.txt); needed with a single-file --base")
    add_device_arguments(models)
    models.add_argument("--vae-dtype", choices=list(DTYPES),
                        help="VAE precision (default: as --dtype; fp32 avoids rare fp16 overflow in the SD VAE)")
    models.add_argument("--offload", action="store_true",
                        help="keep the text encoder and VAE on the CPU except while they run (saves accelerator memory)")
    models.add_argument("--vae-chunk", type=positive(int), default=8, metavar="FRAMES",
                        help="frames per VAE encode/decode call (default 8; lower saves memory)")
    models.add_argument("--vae-tiling", choices=["auto", "on", "off"], default="auto",
                        help="tiled VAE for large frames (default auto: on above 1024x1024 pixels)")
    models.add_argument("--attention", choices=["sdpa", "xformers", "naive"], default="sdpa",
                        help="attention kernel (default sdpa = torch scaled_dot_product_attention)")
    models.add_argument("--compile", action="store_true",
                        help="compile the U-Net with torch.compile (off by default): the first step compiles, which "
                             "takes minutes on a CPU, later steps run faster; needs a C++ compiler on the CPU or "
                             "Triton on a GPU, else a warning says why and it runs uncompiled")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--prompt", required=True, help="what should fill the masked region")
    sampling.add_argument("--negative-prompt", default="", help='what to steer away from (default "")')
    sampling.add_argument("--long-prompt", choices=["truncate", "chunks"], default="truncate",
                          help="prompts over 77 tokens: truncate (default, as the official code; the dropped words "
                               "are printed) or chunks (75-token chunks encoded separately and concatenated, as "
                               "ComfyUI and A1111 do)")
    sampling.add_argument("--steps", type=steps, default=50, help="DDIM steps, 1 to 1000 (default 50)")
    sampling.add_argument("--guidance", type=finite, default=14.0,
                          help="classifier-free guidance scale (default 14 as the official demo; <= 1 disables it)")
    sampling.add_argument("--seed", type=seed, default=0, help="random seed (default 0; same seed, same video)")
    sampling.add_argument("--posterior", choices=["sample", "mean"], default="sample",
                          help="VAE latents of the masked frames: a posterior sample as upstream, or the mean")
    sampling.add_argument("--split-cfg", action="store_true",
                          help="two U-Net calls per step instead of one batched call (less memory, slower)")
    sampling.add_argument("--context-length", type=positive(int), metavar="FRAMES",
                          help="temporal window length (default: all frames when they fit the model's limits of 64 "
                               "frames and 10000 attention tokens, else the longest window that fits)")
    sampling.add_argument("--context-overlap", type=non_negative, metavar="FRAMES",
                          help="frames shared by neighbouring windows (default: a quarter of the window)")

    size = parser.add_argument_group("resolution")
    size.add_argument("--width", type=positive(int), metavar="PIXELS",
                      help="working width (default: the input's); with only one of --width/--height the other keeps "
                           "the aspect ratio. The output always has the input size")
    size.add_argument("--height", type=positive(int), metavar="PIXELS", help="working height (default: the input's)")
    size.add_argument("--size-multiple", type=positive(int), default=64, metavar="PIXELS",
                      help="pad frames (by reflection) to a multiple of this (default 64; 8 is the least)")

    output = parser.add_argument_group("background")
    output.add_argument("--no-paste-back", action="store_true",
                        help="return every pixel from the model, as upstream (default: the original pixels outside "
                             "the grown, feathered mask are kept exactly)")
    output.add_argument("--paste-dilate", type=non_negative, default=8, metavar="PIXELS",
                        help="paste-back keeps generated pixels this far outside the mask (default 8)")
    output.add_argument("--paste-feather", type=non_negative, default=8, metavar="PIXELS",
                        help="width of the blend between generated and original pixels (default 8)")


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from ..attention import attention_backend  # noqa: PLC0415
    from ..checkpoints.base import check_tokenizer_source  # noqa: PLC0415
    from ..checkpoints.detect import check_base_kind  # noqa: PLC0415
    from ..models.motion_weights import motion_files  # noqa: PLC0415
    from ..pipeline import CoCoCoPipeline  # noqa: PLC0415
    from ..pipeline import memory  # noqa: PLC0415
    from ..pipeline.conditioning import tiling_wanted  # noqa: PLC0415
    from ..pipeline.frames import plan_geometry  # noqa: PLC0415
    from ..video_io import check_output, read_frames, read_mask, write_video  # noqa: PLC0415

    # every argument and path is checked before a model loads
    device, dtype = device_and_dtype(args.device, args.dtype)
    require_paths(base=args.base, motion=args.motion, tokenizer=args.tokenizer)
    check_tokenizer_source(args.base, args.tokenizer, "--tokenizer")
    check_base_kind(args.base)
    motion_files(args.motion)
    inputs = (args.video, args.mask, args.base, args.motion, args.tokenizer)
    check_output(args.out, args.fps or DEFAULT_FPS, overwrite=args.overwrite, inputs=inputs)
    if args.context_length is not None and args.context_overlap is not None \
            and args.context_overlap >= args.context_length:
        raise ValueError(f"--context-overlap ({args.context_overlap}) must be smaller than --context-length "
                         f"({args.context_length})")
    selection = dict(start=args.start, stride=args.stride, max_frames=args.max_frames)
    clip = read_frames(args.video, **selection)
    mask = read_mask(args.mask, threshold=args.mask_threshold, **selection)
    if mask.shape[0] not in (1, clip.frames.shape[0]):
        raise ValueError(f"--mask gives {mask.shape[0]} frames but --video gives {clip.frames.shape[0]} "
                         f"(same --start/--stride/--max-frames); give one mask per frame or a single mask image")
    if mask.shape[1:] != clip.frames.shape[1:3]:
        raise ValueError(f"mask frames are {mask.shape[2]}x{mask.shape[1]} but video frames are "
                         f"{clip.frames.shape[2]}x{clip.frames.shape[1]}")
    geometry = plan_geometry(*clip.frames.shape[1:3], work_width=args.width, work_height=args.height,
                             size_multiple=args.size_multiple)
    fps = args.fps or clip.fps or DEFAULT_FPS
    vae_dtype = getattr(torch, DTYPES[args.vae_dtype]) if args.vae_dtype else None
    tiling = {"auto": None, "on": True, "off": False}[args.vae_tiling]
    memory.check(memory.cococo(clip.frames.shape[0], geometry.padded_hw, dtype=dtype, vae_dtype=vae_dtype,
                               vae_chunk=args.vae_chunk, vae_tiled=tiling_wanted(geometry.padded_hw, tiling),
                               context_length=args.context_length, split_cfg=args.split_cfg,
                               guidance_scale=args.guidance), device,
                 options="--width/--height, --max-frames, --vae-chunk or --context-length")
    logger.info("%d frames of %dx%d at %.3g fps; loading models on %s (%s)", clip.frames.shape[0],
                clip.frames.shape[2], clip.frames.shape[1], fps, device, str(dtype).removeprefix("torch."))

    started = time.perf_counter()
    pipe = CoCoCoPipeline.from_pretrained(args.base, args.motion, tokenizer=args.tokenizer, device=device, dtype=dtype,
                                          vae_dtype=vae_dtype, offload=args.offload, vae_chunk=args.vae_chunk,
                                          compile_unet=args.compile)
    loaded = time.perf_counter()
    with tqdm(total=args.steps, desc="inpainting", unit="step") as bar, attention_backend(args.attention):
        frames = pipe(clip.frames, mask, args.prompt, args.negative_prompt, args.steps, args.guidance, args.seed,
                      width=args.width, height=args.height, size_multiple=args.size_multiple,
                      context_length=args.context_length, context_overlap=args.context_overlap,
                      posterior=args.posterior, split_cfg=args.split_cfg, mask_dilate=args.mask_dilate,
                      paste_back=not args.no_paste_back, paste_dilate=args.paste_dilate,
                      paste_feather=args.paste_feather, vae_tiling=tiling, output="uint8",
                      long_prompts=args.long_prompt,
                      callback=lambda step, total, latents: bar.update(step - bar.n))
    done = time.perf_counter()
    write_video(args.out, frames, fps, crf=args.crf, overwrite=args.overwrite, inputs=inputs)
    logger.info("wrote %s (%d frames, %.3g fps); loading %.1f s, inpainting %.1f s", args.out, frames.shape[0], fps,
                loaded - started, done - loaded)
    return 0
