"""Train LGVI (referring) or LGVI-I (interactive) on the shared Accelerate loop.

    python training/train_lgvi.py --config training/configs/lgvi_tiny.yaml
    python training/train_lgvi.py --config training/configs/lgvi_i_tiny.yaml --set max_steps=10
    accelerate launch --multi_gpu --num_processes 8 training/train_lgvi.py --config training/configs/lgvi_paper.yaml
    python training/train_lgvi.py --config ... --resume latest

The same as ``python -m cococo_core train`` with the recipe defaulting to ``lgvi`` (``--interactive``: ``lgvi-i``)
when the config names none. Recipe options: cococo_core/training/lgvi/recipes.py and docs/lgvi.md ("Training").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from cococo_core.cli import train as cli_train  # noqa: PLC0415
    from cococo_core.training.config import read_config_file  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_train.add_arguments(parser)
    parser.add_argument("--interactive", action="store_true", help="LGVI-I (chat) instead of LGVI when the config names no recipe")
    args = parser.parse_args(argv)
    named = args.config and "recipe" in read_config_file(args.config)
    if not named and not any(item.startswith("recipe=") for item in args.overrides):
        args.overrides.insert(0, "recipe=" + ("lgvi-i" if args.interactive else "lgvi"))
    return cli_train.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
