"""Command line: ``cococo <command> ...`` (installed by ``pip install .``) or ``python -m cococo_core <command> ...``.

Each command lives in its own module ``cococo_core.cli.<command>`` (``-`` written as ``_``)
exposing ``add_arguments(parser)`` and ``run(args) -> int``; only the chosen one is imported.
The argument types the commands share are in ``cococo_core.cli.args``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = {
    "inpaint": "inpaint a video with CoCoCo (text-guided)",
    "mask": "make per-frame masks from a text phrase (GroundingDINO + SAM)",
    "merge": "personalize: merge a DreamBooth checkpoint / LoRAs into SD-inpainting by task vectors",
    "convert-motion": "convert the official CoCoCo model_0..3.pth files into one .safetensors file",
    "remove": "language-driven object removal with LGVI / LGVI-I",
    "prepare-data": "WebVid-layout videos -> annotated CoCoCo training shards (scene filter, GroundingDINO boxes)",
    "train": "train motion modules (CoCoCo) or another recipe with the shared Accelerate loop",
    "evaluate": "the papers' metrics (CS, BP, TC, PSNR, SSIM, VFID, E_warp) over a dataset, resumable and sharded",
}


def _command_module(command: str):
    return importlib.import_module(f".{command.replace('-', '_')}", __name__)


def _program_name() -> str:
    """``cococo`` when run as the installed command, else ``python -m cococo_core``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "cococo" if name.removesuffix(".exe") == "cococo" else "python -m cococo_core"


def main(argv: list[str] | None = None) -> int:
    program = _program_name()
    top = argparse.ArgumentParser(
        prog=program,
        description="CoCoCo / LGVI video inpainting.",
        epilog="commands:\n" + "\n".join(f"  {name:15s} {text}" for name, text in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    top.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own arguments (COMMAND --help)")
    top_args = top.parse_args(argv)

    module = _command_module(top_args.command)
    parser = argparse.ArgumentParser(prog=f"{program} {top_args.command}", description=COMMANDS[top_args.command])
    module.add_arguments(parser)
    args = parser.parse_args(top_args.arguments)
    logging.basicConfig(level=logging.DEBUG if top_args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError) as error:  # user errors: one clear line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a failed write (disk full, no permission): nothing was written under the name
        print(f"error: {error}", file=sys.stderr)
        return 1
