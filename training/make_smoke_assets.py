"""Write the tiny assets of the CPU smoke run into FOLDER (default runs/smoke): a random-weight tiny
SD-inpainting diffusers folder, a tiny random GroundingDINO (Hugging Face layout) and a synthetic WebVid-layout
dataset (moving shapes, captions, one two-scene video, one corrupt file, one missing file).

    python training/make_smoke_assets.py runs/smoke

The models come from the test-suite's builders (tests/tiny_models.py, tests/test_masks_tiny.py), so this script
runs from a clone of the repository. Nothing is downloaded.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(folder: str = "runs/smoke") -> int:
    import tiny_models
    from test_masks_tiny import write_dino_both
    from training_data import write_webvid

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sd = out / "sd-inpainting-tiny"
    if not sd.exists():
        tiny_models.write_sd_folder(sd)
    dino = out / "grounding-dino-tiny"
    if not dino.exists():
        hf_folder, _, _ = write_dino_both(out / "dino-build")
        shutil.move(str(hf_folder), dino)
        shutil.rmtree(out / "dino-build", ignore_errors=True)
    if not (out / "webvid" / "results.csv").exists():
        write_webvid(out / "webvid", good=4)
    print(f"tiny SD-inpainting: {sd}\ntiny GroundingDINO: {dino}\nWebVid-layout data: {out / 'webvid'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
