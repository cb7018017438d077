"""``python -m cococo_core merge``: personalize SD-1.5-inpainting by task vectors into one .safetensors file.

θ = θ_SD1.5 (conv_in zero-padded) + α·(θ_inpaint − θ_SD1.5) + β·(θ_personal − θ_SD1.5 + Σ s_j·Δ_LoRA_j)
"""
from __future__ import annotations

import argparse
import sys
import time

from .args import finite, require_paths
from ..personalize import LoraSpec, MergeRecipe, save_merged

_DTYPES = {"same": None, "fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Merge a DreamBooth / fine-tuned SD-1.5 checkpoint and/or LoRAs into the SD-1.5 inpainting model by task "
        "vectors: theta = SD1.5 + alpha*(inpaint - SD1.5) + beta*(personal - SD1.5 + sum of LoRA deltas). "
        "conv_in's extra mask channels take only the inpainting part. Writes one single-file checkpoint (LDM layout) "
        "that ComfyUI's checkpoint loaders and this pack read.")
    parser.add_argument("--base", required=True, metavar="SD15",
                        help="SD-1.5 text-to-image model (4-channel): .safetensors / .ckpt single file or diffusers folder")
    parser.add_argument("--inpaint", required=True, metavar="SD15_INPAINT",
                        help="SD-1.5 inpainting model (9-channel): single file or diffusers folder")
    parser.add_argument("--personal", metavar="CKPT",
                        help="personalized SD-1.5 text-to-image checkpoint (DreamBooth / Civitai fine-tune) giving tau_p")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="LoRA / LoCon / LoHa / LoKr / DoRA / diffusers / PEFT file, optional strength (default 1); repeatable")
    parser.add_argument("--alpha", type=finite, default=1.0,
                        help="weight of the inpainting task vector (default 1.0; paper: 0.5-1.5)")
    parser.add_argument("--beta", type=finite, default=1.0,
                        help="weight of the personalization task vector (default 1.0; paper: 1-2)")
    parser.add_argument("--beta-unet", type=finite, metavar="B", help="beta for the U-Net only (default: --beta)")
    parser.add_argument("--beta-text", type=finite, metavar="B", help="beta for the text encoder only (default: --beta)")
    parser.add_argument("--beta-vae", type=finite, metavar="B",
                        help="beta for the VAE only (default: --beta); used only if the personalized file has a VAE")
    parser.add_argument("--ema", action="store_true", help="use the personalized file's EMA U-Net weights (model_ema.*) if present")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="same",
                        help="output precision (default: same as the inpainting model); math is always fp32")
    parser.add_argument("--out", required=True, metavar="OUT.safetensors", help="output file (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never one of the input files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class _Progress:
    """A bar redrawn in place on a terminal; one line per 10 % otherwise (logs, CI)."""

    def __init__(self, enabled: bool):
        self.enabled, self.start = enabled, time.monotonic()
        self.tty, self.last = sys.stderr.isatty(), -1

    def __call__(self, step: int, total: int, _value) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if self.tty and (step == total or step % 25 == 0):
            done = int(30 * step / max(total, 1))
            print(f"\rmerging [{'#' * done}{'.' * (30 - done)}] {step}/{total} tensors, {elapsed:.0f}s",
                  end="\n" if step == total else "", file=sys.stderr, flush=True)
        elif not self.tty and (tenth := 10 * step // max(total, 1)) != self.last:
            self.last = tenth
            print(f"merging: {step}/{total} tensors, {elapsed:.0f}s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..output_files import check_output

    loras = [LoraSpec.parse(text) for text in args.lora]
    inputs = [args.base, args.inpaint, args.personal, *(spec.source for spec in loras)]
    require_paths(base=args.base, inpaint=args.inpaint, personal=args.personal)
    check_output(args.out, inputs=inputs, overwrite=args.overwrite)
    recipe = MergeRecipe(
        inpaint=args.inpaint, base=args.base, personal=args.personal,
        loras=loras, alpha=args.alpha, beta=args.beta,
        beta_unet=args.beta_unet, beta_text=args.beta_text, beta_vae=args.beta_vae, use_ema=args.ema)
    dtype = _DTYPES[args.dtype]
    report = save_merged(recipe, args.out, dtype=getattr(torch, dtype) if dtype else None,
                         callback=_Progress(not args.quiet), overwrite=args.overwrite)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0
