"""Entry script: the same as `python -m cococo_core prepare-data` (run `python training/prepare_data.py --help`).

Under several processes: `accelerate launch [--config_file training/accelerate/....yaml] training/prepare_data.py ...`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cococo_core.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["prepare-data", *sys.argv[1:]]))
