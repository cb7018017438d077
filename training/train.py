"""Entry script: the same as `python -m cococo_core train` (run `python training/train.py --help`).

Under several processes: `accelerate launch [--config_file training/accelerate/....yaml] training/train.py ...`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cococo_core.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
