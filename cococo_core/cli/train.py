"""``python -m cococo_core train``: train with the shared loop (one process; or under ``accelerate launch``).

    python -m cococo_core train --config training/configs/tiny_cpu_smoke.yaml
    accelerate launch --multi_gpu --num_processes 8 -m cococo_core train --config training/configs/paper.yaml
    python -m cococo_core train --config my.yaml --set max_steps=200 --set options.data=/data/shards --resume latest
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="a .yaml/.json training config (see training/configs/); options not given keep their defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one option (JSON values: numbers, true/false, lists); recipe options as "
                             "options.KEY=VALUE; repeatable")
    parser.add_argument("--resume", metavar="latest|FOLDER",
                        help="continue from the newest checkpoint of output_dir ('latest') or from a checkpoint folder")
    parser.add_argument("--output-dir", metavar="FOLDER", help="where checkpoints, logs and the final weights go")


def run(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.loop import train

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"resume={json.dumps(args.resume)}")
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    config = load_config(args.config, overrides)
    result = train(config)
    for path in result.saved:
        print(path)
    return 0
