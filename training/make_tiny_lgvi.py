"""Write tiny random-weight stand-ins and a synthetic dataset for trying the LGVI / LGVI-I training commands on a CPU.

    python training/make_tiny_lgvi.py runs/tiny-lgvi

writes ``magicbrush/`` (a tiny 8-channel InstructPix2Pix-style diffusers folder: unet/ vae/ text_encoder/ tokenizer/
scheduler/), ``llava/`` (a tiny llava-hf chat model with a Llama tokenizer) and ``data/samples.jsonl`` (3 videos of 3
frames with masks and chat turns, 1 image pair) in the simple sample layout. The models are the test suite's tiny
models (tests/tiny_models.py, tests/test_lgvi_tiny.py): random weights, for checking the commands, not for results.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
SIZE = 64
RESPONSE = "Sure, I will remove the bird on the left for you. <PROMPT> remove the bird on the left </PROMPT>"


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:03d}.png")


def write_dataset(root: Path, videos: int = 3, frames: int = 3, size: int = SIZE, seed: int = 0) -> Path:
    """``videos`` random clips whose target greys out a box (the 'object'), its mask, texts; plus one image pair."""
    from PIL import Image  # noqa: PLC0415

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    top, bottom, left, right = size // 4, size * 5 // 8, size // 8, size * 3 // 4
    lines = []
    for i in range(videos):
        video = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
        target, mask = video.copy(), np.zeros_like(video)
        target[:, top:bottom, left:right] = 120
        mask[:, top:bottom, left:right] = 255
        for name, array in (("video", video), ("target", target), ("mask", mask)):
            _write_frames(root / f"{name}{i}", array)
        lines.append({"video": f"video{i}", "target": f"target{i}", "mask": f"mask{i}",
                      "expression": "remove the bird on the left", "request": "could you remove the bird?", "response": RESPONSE})
    Image.fromarray(video[0]).save(root / "image.png")
    Image.fromarray(target[0]).save(root / "image_target.png")
    lines.append({"video": "image.png", "target": "image_target.png", "expression": "remove the bird",
                  "request": "remove the bird", "response": RESPONSE})
    path = root / "samples.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def write_models(root: Path) -> None:
    sys.path.insert(0, str(TESTS))
    import test_lgvi_tiny  # noqa: PLC0415
    import tiny_models  # noqa: PLC0415

    tiny_models.write_sd_folder(root / "magicbrush", in_channels=8)
    test_lgvi_tiny.llava_model().save_pretrained(root / "llava")
    test_lgvi_tiny.write_llama_tokenizer(root / "llava")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.folder.exists() and any(args.folder.iterdir()):
        parser.error(f"{args.folder} is not empty; give a new folder")
    try:
        write_models(args.folder)
        write_dataset(args.folder / "data")
    except BaseException:
        shutil.rmtree(args.folder, ignore_errors=True)
        raise
    print(args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
