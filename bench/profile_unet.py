"""Profile one guided denoising step of the CoCoCo video U-Net on CPU: where the time and the memory go.

One DDIM step of :func:`cococo_core.pipeline.denoise` (both CFG halves batched, g = 14: one U-Net call on
B = 2 videos) under ``torch.profiler`` with memory profiling, on the full-size random-weight U-Net
(SD-1.5-inpainting + 21 motion modules) at each requested case (default 256²×8 frames; 512²×16 if memory
allows). Prints, per case:

* the operator table by self CPU time and by self CPU memory (bytes allocated minus freed by the op itself);
* which SDPA kernel ran, and the largest tensor any op produced (a (B·F·heads, 4096, 4096) score matrix at
  512² would show here);
* time per U-Net part: the 21 motion modules vs the rest (the 2-D SD blocks).

Writes ``bench/results/profile_unet.json``. Run alone (full size: ~6 GB of weights plus the working memory):

    flock /tmp/cococo-bench.lock .venv/bin/python bench/profile_unet.py --case 256x8 [--case 512x16] [--threads 1]
    .venv/bin/python bench/profile_unet.py --tiny      # tiny U-Net, seconds: checks the script
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve a busy CPU
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _models  # noqa: E402
from cococo_core.pipeline.sampler import denoise  # noqa: E402

SDPA_KERNELS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
                "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention")
TOP = 20


def _case(text: str) -> tuple[int, int]:
    size, frames = text.lower().split("x")
    return int(size), int(frames)


def _time_motion_modules(unet):
    """Wrap every motion module in a ``record_function`` range so the profile can separate them."""
    handles = []
    for name, module in unet.motion_modules:
        def before(mod, args, _name=name):
            mod._cococo_range = record_function("motion_module")
            mod._cococo_range.__enter__()

        def after(mod, args, output):
            mod._cococo_range.__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    return handles


def _rows(averages, key: str, limit: int) -> list[dict]:
    rows = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:limit]
    return [dict(name=e.key, calls=e.count, self_cpu_ms=e.self_cpu_time_total / 1e3, cpu_total_ms=e.cpu_time_total / 1e3,
                 self_cpu_memory_mib=e.self_cpu_memory_usage / 2**20, cpu_memory_mib=e.cpu_memory_usage / 2**20)
            for e in rows]


def _print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'operator':48s} {'calls':>6} {'self ms':>10} {'total ms':>10} {'self MiB':>10}")
    for r in rows:
        print(f"{r['name'][:48]:48s} {r['calls']:>6} {r['self_cpu_ms']:>10.1f} {r['cpu_total_ms']:>10.1f} "
              f"{r['self_cpu_memory_mib']:>10.1f}")


def _largest_output(events) -> dict:
    """The op whose recorded output-sized input shapes are the biggest (proxy: largest input tensor of any op)."""
    best = dict(name=None, shape=None, elements=0)
    for event in events:
        for shape in event.input_shapes or []:
            if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, int) for s in shape):
                elements = 1
                for s in shape:
                    elements *= s
                if elements > best["elements"]:
                    best = dict(name=event.name, shape=list(shape), elements=elements)
    return best


def profile_case(unet, size: int, frames: int, text_width: int, top: int = TOP) -> dict:
    latent = size // 8
    generator = torch.Generator().manual_seed(0)
    shape = (1, 4, frames, latent, latent)
    noise, masked = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    mask = (torch.rand((1, 1, frames, latent, latent), generator=generator) > 0.5).float()
    prompt, negative = torch.randn(2, 1, 77, text_width, generator=generator)
    handles = _time_motion_modules(unet)
    try:
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
            with record_function("denoise_step"):
                denoise(unet, noise, masked, mask, prompt, negative, 1, 14.0)
        seconds = time.perf_counter() - started
    finally:
        for handle in handles:
            handle.remove()
    events = prof.key_averages()
    by_name = {e.key: e for e in events}
    step_ms = by_name["denoise_step"].cpu_time_total / 1e3
    motion_ms = by_name["motion_module"].cpu_time_total / 1e3 if "motion_module" in by_name else 0.0
    ops = [e for e in events if e.key not in ("denoise_step", "motion_module")]
    sdpa = {e.key: e.count for e in events if e.key.split("::")[-1] in SDPA_KERNELS}
    largest = _largest_output(prof.events())
    return dict(size=size, frames=frames, batch=2, wall_seconds_profiled=seconds, step_ms=step_ms,
                motion_modules_ms=motion_ms, rest_ms=step_ms - motion_ms, sdpa_kernels=sdpa, largest_tensor=largest,
                by_self_time=_rows(ops, "self_cpu_time_total", top),
                by_self_memory=_rows(ops, "self_cpu_memory_usage", top))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", type=_case, metavar="SIZExFRAMES",
                        help="frame size in pixels x frames, repeatable (default 256x8; --tiny: 64x4)")
    parser.add_argument("--tiny", action="store_true", help="the tiny U-Net (checks the script in seconds)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--top", type=int, default=TOP, help=f"rows per table (default {TOP})")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_unet.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.case or [(64, 4) if args.tiny else (256, 8)]
    unet = _models.video_unet(tiny=args.tiny)
    results = dict(torch=torch.__version__, threads=torch.get_num_threads(), tiny=args.tiny,
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), cases=[])
    for size, frames in cases:
        result = profile_case(unet, size, frames, _models.text_width(args.tiny), args.top)
        results["cases"].append(result)
        print(f"\n=== one guided step, B=2 x {frames} frames at {size}x{size} (latent {size // 8}²), "
              f"{torch.get_num_threads()} threads: {result['step_ms'] / 1e3:.2f} s CPU-time in the step; motion modules "
              f"{result['motion_modules_ms'] / 1e3:.2f} s ({result['motion_modules_ms'] / result['step_ms']:.0%}), "
              f"2-D blocks and the rest {result['rest_ms'] / 1e3:.2f} s")
        print(f"SDPA kernels: {result['sdpa_kernels'] or 'none'}; largest tensor: {result['largest_tensor']['shape']} "
              f"({result['largest_tensor']['elements'] * 4 / 2**20:.0f} MiB in fp32) into {result['largest_tensor']['name']}")
        _print_rows("by self CPU time", result["by_self_time"])
        _print_rows("by self CPU memory (allocated minus freed by the op)", result["by_self_memory"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
