"""A tiny synthetic WebVid-layout dataset for the training tests: moving shapes, captions, a CSV.

``write_webvid(root)`` writes ``<root>/videos/<page_dir>/<videoid>.mp4`` and ``<root>/results.csv`` (columns
``videoid, contentUrl, duration, page_dir, name`` as WebVid's) with: ``good`` one-scene videos of a coloured
square and disc moving over a gradient, one video with a hard cut (two scenes), one corrupt file (random
bytes) and one row whose file is missing.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CAPTIONS = ["a red car on the left", "the dog and a cat", "a man on the right", "a big red dog",
            "the cat on the left", "a person and a car"]


def moving_shapes(frames: int, height: int, width: int, seed: int, palette: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs / width, ys / height, np.full_like(xs, 0.3 + 0.4 * palette, dtype=float)], -1) * 200
    start = rng.uniform([10, 10], [width - 30, height - 30])
    velocity = rng.uniform(-1.5, 1.5, size=2)
    video = []
    for f in range(frames):
        frame = base.copy()
        x, y = start + velocity * f
        frame[int(y):int(y) + 16, int(x):int(x) + 16] = [230, 40, 40] if palette == 0 else [40, 40, 230]
        disc = (xs - (width - x)) ** 2 + (ys - (height - y)) ** 2 < 64
        frame[disc] = [40, 220, 60]
        video.append(frame)
    return np.clip(np.stack(video), 0, 255).astype(np.uint8)


def write_webvid(root: Path, good: int = 4, frames: int = 40, height: int = 64, width: int = 96) -> Path:
    from cococo_core.video_io import write_video

    rows = []
    for i in range(good + 3):
        videoid, page_dir = str(1000 + i), f"{i % 2:03d}_{i % 2:03d}"
        folder = root / "videos" / page_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{videoid}.mp4"
        if i < good:
            write_video(path, moving_shapes(frames, height, width, seed=i), 25.0)
        elif i == good:  # a hard cut in the middle: two scenes
            video = np.concatenate([moving_shapes(frames // 2, height, width, seed=i),
                                    255 - moving_shapes(frames - frames // 2, height, width, seed=i + 1, palette=1)])
            write_video(path, video, 25.0)
        elif i == good + 1:
            path.write_bytes(np.random.default_rng(i).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        # i == good + 2: no file at all
        rows.append({"videoid": videoid, "contentUrl": f"https://example.invalid/{videoid}.mp4",
                     "duration": f"PT00H00M0{frames // 25}S", "page_dir": page_dir, "name": CAPTIONS[i % len(CAPTIONS)]})
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "results.csv"
