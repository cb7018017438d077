"""Metric throughput on CPU: frames per second of each metric at 256x384 (H x W, CoCoCo's working size).

Models are FULL-SIZE with random weights, so the work per frame is the real one: CLIP ViT-L/14 (the image
tower for TC, both towers for CS; 224 px input), the Kinetics I3D of ``i3d_rgb_imagenet.pt`` (features of a
16-frame clip), OpenCV DIS flow for E_warp (forward and backward flow per frame pair). BP, PSNR and SSIM need
no model. Each metric runs ``--repeat`` rounds (default 1) on the same 16-frame clip after a short warm-up
and the fastest is kept; the metrics run one after the other in one process, so a change of the machine's
load during the run affects them unevenly (repeat on a quiet machine for firm numbers).

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_metrics.py [--frames 16] [--repeat 1] [--threads 2]

Prints a table and writes ``bench/results/bench_metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEIGHT, WIDTH = 256, 384


def _clip_vit_l():
    """A random-weight CLIP ViT-L/14 (openai/clip-vit-large-patch14's config) as a metrics ClipModel."""
    from transformers import CLIPConfig, CLIPModel

    from cococo_core.metrics.clip_model import ClipModel

    config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           image_size=224, patch_size=14, projection_dim=768),
        projection_dim=768)
    model = CLIPModel(config).eval()
    tokenizer = _tokenizer()
    return ClipModel(model.vision_model, model.visual_projection, 224, model.text_model, model.text_projection,
                     tokenizer, "random ViT-L/14")


def _tokenizer():
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models  # the tiny BPE vocabulary: tokenization cost is negligible next to the towers

    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tiny_models.tokenizer_folder()))


def _clip_video(frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A panning textured clip, a result with a changed box, and the box mask."""
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8 + frames, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize(((WIDTH // 8 + frames) * 8, HEIGHT), Image.BICUBIC))
    original = np.stack([scene[:, 4 * t:4 * t + WIDTH] for t in range(frames)])
    mask = np.zeros((frames, HEIGHT, WIDTH), np.float32)
    mask[:, 64:192, 96:288] = 1
    result = original.copy()
    result[mask > 0] = rng.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    return original, result, mask


def _best(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cococo_core.metrics import (InceptionI3d, background_preservation, clip_score, i3d_features, load_flow,
                                     psnr, ssim, temporal_consistency, warp_error)

    original, result, mask = _clip_video(args.frames)
    clip = _clip_vit_l()
    i3d = InceptionI3d().eval()
    flow = load_flow("dis")
    jobs = {
        "BP": ("none", lambda: background_preservation(original, result, mask)),
        "PSNR": ("none", lambda: psnr(original, result)),
        "SSIM (65 px window)": ("none", lambda: ssim(original, result)),
        "CS (whole frame)": ("CLIP ViT-L/14", lambda: clip_score(result, "a cat", clip)),
        "TC": ("CLIP ViT-L/14 image tower", lambda: temporal_consistency(result, clip)),
        "VFID features (one video)": ("I3D (12.7 M)", lambda: i3d_features(result, i3d)),
        "E_warp": (f"{flow.name} flow (forward + backward)", lambda: warp_error(result, flow=flow)),
    }
    warm_ups = {  # one frame (two for TC and E_warp) through each model: lazy imports and first allocations
        "CS (whole frame)": lambda: clip_score(result[:1], "a cat", clip),
        "TC": lambda: temporal_consistency(result[:2], clip),
        "E_warp": lambda: warp_error(result[:2], flow=flow),
    }
    rows = []
    for name, (model, job) in jobs.items():
        warm_ups.get(name, job)()
        seconds = _best(job, args.repeat)
        rows.append({"metric": name, "model": model, "seconds": seconds, "frames_per_s": args.frames / seconds})
    print(f"{args.frames} frames at {HEIGHT}x{WIDTH} (H x W), {args.threads} threads, fastest of {args.repeat}")
    print(f"| metric | model | s per {args.frames} frames | frames/s |")
    print("|---|---|---:|---:|")
    for row in rows:
        print(f"| {row['metric']} | {row['model']} | {row['seconds']:.3f} | {row['frames_per_s']:.1f} |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_metrics.json").write_text(json.dumps(
        {"frames": args.frames, "height": HEIGHT, "width": WIDTH, "threads": args.threads, "repeat": args.repeat,
         "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
