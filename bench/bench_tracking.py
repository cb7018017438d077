"""SAM 2.1, EdgeTAM and SAM 3 video tracking on CPU: time per frame and peak memory for 50 / 200 / 1,000 frames at 480p.

Models (random weights, built in memory; the work per frame is the real one):

* ``tiny``: the test suite's tiny-width SAM 2.1 (tests/tiny_trackers.py: released tiny Hiera layout at width 8,
  256 px input);
* ``full``: the released SAM 2.1 hiera-tiny size (transformers' default ``Sam2VideoConfig``: 1024 px input,
  Hiera-T, 256-wide memory attention over 7 memory frames and 16 object pointers);
* ``edgetam-full``: the released EdgeTAM size (``sam2/configs/edgetam.yaml`` of facebookresearch/EdgeTAM: RepViT-M1
  through timm, 1024 px, 256 + 256 perceiver latents per memory frame; needs timm).

One box on frame 0, tracked forward through every frame, through :func:`cococo_core.masks.tracking.track_masks`.
Each (model, length) runs in its own process so its peak is its own. Memory columns: ``peak RSS`` (the process's
maximum resident set), ``clip + result`` (the uint8 input frames plus the float32 logits and bool masks the call
returns: these grow with the length by necessity; the logits are allocated, and their pages written, before the
first frame) and ``growth after frame 5``: how much the resident set grew from the 5th tracked frame to the last,
sampled after every frame, i.e. what the model's per-frame state adds with length (flat memory: about 0).

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_tracking.py [--models tiny full] [--frames 50 200 1000]

Prints a table and writes ``bench/results/bench_tracking.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sam3_model(name: str, device: str = "cpu"):
    """SAM 3 (text -> instances): ``sam3-tiny`` is the test suite's tiny model (112 px), ``sam3-full`` the released
    size (transformers' default ``Sam3VideoConfig``: ViT-L/14 at 1008 px, CLIP-L text, 200 queries), both with random
    weights biased so that the detector finds objects (tests/tiny_sam3.py: bias_towards_detections)."""
    from transformers import Sam3VideoConfig, Sam3VideoModel

    import tiny_models
    import tiny_sam3
    from cococo_core.masks.tracking.clip_bpe import load_tokenizer
    from cococo_core.masks.tracking.sam3 import Sam3Tracker

    torch.manual_seed(0)
    config = tiny_sam3.tiny_sam3_config() if name == "sam3-tiny" else Sam3VideoConfig()
    model = tiny_sam3.bias_towards_detections(Sam3VideoModel(config).eval()).to(device)
    if name == "sam3-full":
        # with every one of the 200 random queries above 0.5, transformers' (and the original's) all-pairs mask
        # IoU before NMS needs 200 x 200 x 288 x 288 bytes; keep only the most confident random detections
        model.score_threshold_detection = model.new_det_thresh = 0.98
    return Sam3Tracker(model, load_tokenizer(tiny_models.tokenizer_folder()), "random weights", name)


def _edgetam_model(device: str = "cpu"):
    """EdgeTAM at the released size, random weights (the config of transformers' EdgeTAM conversion script)."""
    from transformers import EdgeTamVideoConfig, EdgeTamVideoModel, EdgeTamVisionConfig, TimmWrapperConfig

    from cococo_core.masks.tracking.edgetam import EdgeTamTracker

    backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
        "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
    config = EdgeTamVideoConfig(vision_config=EdgeTamVisionConfig(backbone_config=backbone),
                                enable_occlusion_spatial_embedding=False,
                                enable_temporal_pos_encoding_for_object_pointers=False)
    torch.manual_seed(0)
    return EdgeTamTracker(EdgeTamVideoModel(config).eval().to(device), "random weights", "edgetam-full")


def _model(name: str, device: str = "cpu"):
    from transformers import Sam2VideoConfig, Sam2VideoModel

    if name.startswith("sam3"):
        return _sam3_model(name, device)
    if name == "edgetam-full":
        return _edgetam_model(device)

    from cococo_core.masks.tracking.sam2 import Sam2Tracker

    if name == "tiny":
        import tiny_trackers

        config = tiny_trackers.sam2_video_config()
    else:
        config = Sam2VideoConfig()
    torch.manual_seed(0)
    return Sam2Tracker(Sam2VideoModel(config).eval().to(device), "random weights", name)


def _clip(frames: int, height: int, width: int) -> np.ndarray:
    """A disc moving across a noisy background (uint8)."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 60, (frames, height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for f in range(frames):
        cx = width * (0.2 + 0.6 * f / max(1, frames - 1))
        clip[f][(xx - cx) ** 2 + (yy - height / 2) ** 2 < (height / 6) ** 2] = (220, 80, 60)
    return clip


WARMUP_FRAMES = 5  # resident size after this many frames is the reference of the growth column


def child(model_name: str, frames: int, height: int, width: int, device: str = "cpu") -> dict:
    from cococo_core.masks.tracking import track_masks

    tracker = _model(model_name, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    clip = _clip(frames, height, width)
    box = f"{width * 0.2 - height / 6:.0f},{height / 3:.0f},{width * 0.2 + height / 6:.0f},{height * 2 / 3:.0f}@0"
    prompt = dict(text="the cat") if model_name.startswith("sam3") else dict(boxes=[box])
    resident = []

    def progress(done, total, _):
        resident.append(_rss_bytes())

    started = time.perf_counter()
    result = track_masks(clip, tracker, progress=progress, **prompt)
    seconds = time.perf_counter() - started
    warm = min(WARMUP_FRAMES, len(resident) - 1)
    result_bytes = frames * height * width * (4 * len(result.object_ids) + 1)
    gpu = {}
    if device.startswith("cuda"):
        gpu = {"gpu": torch.cuda.get_device_name(), "gpu_tracking_gib":
               (torch.cuda.max_memory_allocated() - gpu_before) / 2 ** 30}
    return {
        "model": model_name, "frames": frames, "size": f"{width}x{height}", "device": device, **gpu,
        "seconds_per_frame": seconds / frames, "peak_rss_gib": _peak_rss_bytes() / 2 ** 30,
        "clip_and_result_gib": (clip.nbytes + result_bytes) / 2 ** 30,
        "growth_after_warmup_gib": (max(resident[warm:]) - resident[warm]) / 2 ** 30,
        "coverage": float(result.masks.float().mean()), "objects": len(result.object_ids),
    }


def gpu_note(row: dict) -> str:
    return f", GPU {row['gpu_tracking_gib']:.3f} GiB beyond the weights" if "gpu_tracking_gib" in row else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "full"], choices=["tiny", "full", "edgetam-full", "sam3-tiny", "sam3-full"])
    parser.add_argument("--frames", nargs="+", type=int, default=[50, 200, 1000])
    parser.add_argument("--full-frames", nargs="+", type=int, default=None,
                        help="lengths for the full-size model (default: --frames)")
    parser.add_argument("--size", default="854x480", help="frame size WxH (default 854x480)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: then the peak GPU memory beyond the "
                        "weights is reported too")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), height, width, args.device)))
        return 0
    rows = []
    for model in args.models:
        for frames in (args.full_frames or args.frames) if model.endswith("full") else args.frames:
            command = [sys.executable, __file__, "--child", model, str(frames), "--size", args.size,
                       "--threads", str(args.threads), "--device", args.device]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{row['model']:>9} {row['frames']:>5} frames {row['size']}: {row['seconds_per_frame']:.3f} s/frame, "
                  f"peak RSS {row['peak_rss_gib']:.2f} GiB (clip + result {row['clip_and_result_gib']:.2f} GiB, "
                  f"growth after frame {WARMUP_FRAMES} {row['growth_after_warmup_gib']:.3f} GiB"
                  f"{gpu_note(row)})", flush=True)
    print(f"\n{args.device}: | model | frames | s / frame | peak RSS GiB | clip + result GiB | growth after frame "
          f"{WARMUP_FRAMES} GiB | GPU tracking GiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['frames']} | {row['seconds_per_frame']:.3f} | {row['peak_rss_gib']:.2f} | "
              f"{row['clip_and_result_gib']:.2f} | {row['growth_after_warmup_gib']:.3f} | "
              f"{row.get('gpu_tracking_gib', float('nan')):.3f} |")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "rows": rows}
    suffix = "" if args.device == "cpu" else "_" + args.device.split(":")[0]
    (results / f"bench_tracking{suffix}.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
