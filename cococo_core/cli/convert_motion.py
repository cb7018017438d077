"""``python -m cococo_core convert-motion``: official CoCoCo ``model_0..3.pth`` -> one ``.safetensors`` file.

The pickles are read with ``torch.load(weights_only=True)``, merged in order, stripped of the DDP ``module.``
prefix and of the stale position-encoding buffers; the result is checked against the SD-1.5 motion-module
layout (840 tensors; ``--no-check`` skips that for other base widths) and written with safetensors.
"""
from __future__ import annotations

import argparse
import logging

import torch

log = logging.getLogger(__name__)

DTYPES = {"keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", required=True, nargs="+", metavar="FOLDER_OR_FILE",
                        help="the official folder holding model_0.pth … model_3.pth, or the files themselves "
                             "(merged in the given order, later files override earlier ones)")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="the .safetensors file to write, e.g. models/cococo/cococo_motion.safetensors")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="keep",
                        help="cast the weights before saving (default: keep the stored dtype; fp16 halves the size)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not check the tensors against the SD-1.5 layout (21 modules, 840 tensors, text width 768)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..models.motion_weights import check_motion_state, read_motion_weights, save_motion_safetensors
    from ..models.sd15 import sd15_motion_shapes
    from ..output_files import check_output

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors, got {output.name}")
    check_output(output, inputs=args.input, overwrite=args.overwrite)
    source = args.input[0] if len(args.input) == 1 else args.input
    state = read_motion_weights(source)
    motion_keys = [k for k in state if ".motion_modules." in k]
    if len(motion_keys) != len(state):
        log.warning("%d keys are not motion-module keys; they are kept (the loader applies them to the base U-Net)",
                    len(state) - len(motion_keys))
    if not args.no_check:
        check_motion_state(sd15_motion_shapes(), state)
    save_motion_safetensors(state, output, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    print(f"wrote {output} ({len(state)} tensors, {len(motion_keys)} motion-module tensors)")
    return 0
