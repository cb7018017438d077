"""Benchmark: seconds per denoising step and peak memory vs frame count, full-size CoCoCo video U-Net.

Builds the SD-1.5-inpainting U-Net (859.5 M params) with its 21 CoCoCo motion modules (605.8 M) on random
weights and runs :func:`cococo_core.pipeline.denoise` (DDIM + batched CFG, g = 14) on random latents at a
small resolution, for 16, 32, 64 and 128 frames with temporal context windows (default 16 frames, overlap 4),
and, as the baseline in the same run, the plain path (all frames in one U-Net call) for 32 and 64 frames.
The VAE and text encoder are left out: they run in fixed-size frame chunks, so the U-Net decides the memory.

Memory: on CPU, peak RSS of this process (VmHWM, reset before each case through /proc/self/clear_refs) and
the part above the resident model; on CUDA, ``torch.cuda.max_memory_allocated``. Run it alone:

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_pipeline.py [--size 64] [--steps 1] [--threads 1]

Prints a table and writes ``bench/results/pipeline.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cococo_core.models import VideoUNet  # noqa: E402
from cococo_core.models.sd15 import SD15_INPAINT_UNET_CONFIG  # noqa: E402
from cococo_core.pipeline import denoise, resolve_context  # noqa: E402
from cococo_core.windows import plan_windows  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024


def current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_kib("VmRSS") * 1024


def build_unet(device: torch.device, dtype: torch.dtype) -> VideoUNet:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = VideoUNet(UNet2DConditionModel(**SD15_INPAINT_UNET_CONFIG), motion_init="official")
    with torch.no_grad():  # non-zero proj_out, so the motion modules are not the identity
        for _, module in unet.motion_modules:
            torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.02)
    return unet.to(device, dtype).eval().requires_grad_(False)


def run_case(unet, frames: int, latent: int, steps: int, length: int | None, overlap: int | None, device) -> dict:
    generator = torch.Generator().manual_seed(frames)
    shape = (1, 4, frames, latent, latent)
    noise, masked = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    mask = (torch.rand((1, 1, frames, latent, latent), generator=generator) > 0.5).float()
    cond, uncond = torch.randn(2, 1, 77, 768, generator=generator)
    length, overlap = resolve_context(frames, latent, latent, length, overlap)
    windows = plan_windows(frames, length, overlap)
    reset_peak(device)
    before = current_bytes(device)
    stamps = []
    start = time.perf_counter()
    denoise(unet, noise, masked, mask, cond, uncond, steps, 14.0, context_length=length, context_overlap=overlap,
            callback=lambda step, total, latents: stamps.append(time.perf_counter()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = peak_bytes(device)
    return {"frames": frames, "mode": "plain" if len(windows) == 1 else f"windows {length}/{overlap}",
            "windows": len(windows), "frames_through_unet": sum(map(len, windows)), "s_per_step": seconds,
            "s_per_frame_step": seconds / frames, "peak_gib": peak / 2**30, "peak_above_model_gib": (peak - before) / 2**30}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (latent = size/8; default 64)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per case (default 1)")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128], help="windowed frame counts")
    parser.add_argument("--plain", type=int, nargs="*", default=[32, 64],
                        help="frame counts for the plain path (up to the context length the windowed run is plain too)")
    parser.add_argument("--context-length", type=int, default=16)
    parser.add_argument("--context-overlap", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is far faster on a "
                        "machine whose cores are busy with other work)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    latent = args.size // 8

    started = time.perf_counter()
    unet = build_unet(device, dtype)
    params = sum(p.numel() for p in unet.parameters())
    print(f"built the video U-Net ({params / 1e6:.1f} M params, {args.dtype}, {device}) in "
          f"{time.perf_counter() - started:.0f} s; {args.size}x{args.size} frames, latent {latent}x{latent}, "
          f"{args.steps} step(s), g=14 batched CFG, threads={torch.get_num_threads()}", flush=True)
    cases = [(f, args.context_length, args.context_overlap) for f in args.frames]
    cases += [(f, f, 0) for f in args.plain]
    results = []
    header = f"{'frames':>6} {'mode':>13} {'windows':>7} {'s/step':>8} {'s/frame/step':>12} {'peak GiB':>8} {'above model':>11}"
    print(header, flush=True)
    for frames, length, overlap in cases:
        row = run_case(unet, frames, latent, args.steps, length, overlap, device)
        results.append(row)
        print(f"{row['frames']:>6} {row['mode']:>13} {row['windows']:>7} {row['s_per_step']:>8.2f} "
              f"{row['s_per_frame_step']:>12.3f} {row['peak_gib']:>8.2f} {row['peak_above_model_gib']:>11.2f}",
              flush=True)

    def find(frames, plain):
        return next((r for r in results if r["frames"] == frames and (r["mode"] == "plain") == plain), None)

    ratios = {}
    for frames in args.frames:
        windowed, plain = find(frames, False), find(frames, True)
        if windowed and plain and windowed["mode"] != "plain":
            ratios[frames] = {"time_windowed_over_plain": windowed["s_per_step"] / plain["s_per_step"],
                              "memory_above_model_windowed_over_plain":
                                  windowed["peak_above_model_gib"] / max(plain["peak_above_model_gib"], 1e-9)}
            print(f"{frames} frames, windowed / plain: time x{ratios[frames]['time_windowed_over_plain']:.2f}, "
                  f"memory above model x{ratios[frames]['memory_above_model_windowed_over_plain']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": args.size, "steps": args.steps, "dtype": args.dtype, "device": str(device),
                               "threads": torch.get_num_threads(), "params": params, "machine": platform.machine(),
                               "torch": torch.__version__, "cpu_count": os.cpu_count(), "results": results,
                               "ratios": ratios}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
