"""The paper's case on one GPU: 512x512 video, 32 frames, 50 DDIM steps, CFG 14, fp16, SDPA, random weights.

Runs what ``CoCoCoPipeline`` runs after the text encoder, with the full-size SD-1.5-inpainting video U-Net
(+ 21 motion modules, 1465.4 M parameters) and the SD-1.x VAE on random weights:

1. VAE encode of the 32 masked frames (posterior sample, ``vae_chunk`` frames per call);
2. ``denoise``: 50 DDIM steps, both CFG halves batched (B = 2 videos x 32 frames at a 64x64 latent);
3. VAE decode.

The text encoder (two 77-token CLIP passes, well under a second) is replaced by random embeddings. One
untimed warm-up step runs first (kernel selection, allocator). Prints the time of each stage, the U-Net's
it/s (denoising steps per second) and the peak GPU memory, and writes JSON (default
``bench/results/gpu_paper_case.json``). The paper reports under 1 minute on an RTX 4090.

    python bench/gpu_paper_case.py                      # on a CUDA machine
    python bench/gpu_paper_case.py --tiny --device cpu  # tiny models, a few seconds: checks the script runs

``--budget`` runs the consumer-GPU case instead: 512x512 x 16 frames under 8 / 12 / 24 GB limits
(``torch.cuda.set_per_process_memory_fraction``; ``--limits`` to change them). Under each limit the U-Net's
``frame_chunk`` and split CFG are what the nodes' "auto" picks (``cococo_core.pipeline.memory_plan``) for the
memory left beside the weights; it reports the plan, its estimate and the measured peak of each stage
(``--steps``, default 2: the peak is reached in the first step). Written to
``bench/results/gpu_budget.json``. On a CPU (``--tiny --device cpu``) only the plans are computed and
the stages run; limits and peaks need CUDA and are reported as null.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve a busy CPU
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _models  # noqa: E402
from cococo_core.attention import BACKENDS, attention_backend  # noqa: E402
from cococo_core.pipeline import memory_plan  # noqa: E402
from cococo_core.pipeline.conditioning import decode_latents, encode_images  # noqa: E402
from cococo_core.pipeline.sampler import denoise  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = dict(frames=4, size=64, steps=2)
BUDGET = dict(frames=16, size=512, steps=2)
LIMITS_GB = (8.0, 12.0, 24.0)
GB = 10**9  # consumer cards are sold in GB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stages:
    """Wall seconds per named stage, synchronised with the device."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    def __call__(self, name, function, *args, **kwargs):
        _sync(self.device)
        started = time.perf_counter()
        result = function(*args, **kwargs)
        _sync(self.device)
        self.seconds[name] = time.perf_counter() - started
        return result


def _case(frames: int, size: int, tiny: bool, seed: int) -> dict:
    """The inputs: video in [-1, 1], a centred square hole, noises and random prompt embeddings."""
    latent = size // 8
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, size, size, generator=generator) * 2 - 1
    holes = torch.zeros(frames, 1, size, size)
    holes[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    noise = torch.randn(1, 4, frames, latent, latent, generator=generator)
    posterior_noise = torch.randn(frames, 4, latent, latent, generator=generator)
    prompt, negative = torch.randn(2, 1, 77, _models.text_width(tiny), generator=generator)
    latent_mask = torch.nn.functional.interpolate(holes, size=(latent, latent), mode="nearest")
    return dict(video=video, holes=holes, noise=noise, posterior_noise=posterior_noise, prompt=prompt,
                negative=negative, latent_mask=latent_mask.permute(1, 0, 2, 3)[None])


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def run(*, device="cuda", dtype="fp16", frames=32, size=512, steps=50, guidance=14.0, attention="sdpa",
        vae_chunk=8, tiny=False, seed=0) -> dict:
    device = torch.device(device)
    torch_dtype = DTYPES[dtype]
    built = time.perf_counter()
    unet = _models.video_unet(tiny=tiny, device=device, dtype=torch_dtype, seed=seed)
    vae = _models.vae(tiny=tiny, device=device, dtype=torch_dtype, seed=seed)
    build_seconds = time.perf_counter() - built
    case = _case(frames, size, tiny, seed)
    video, holes, noise, posterior_noise = case["video"], case["holes"], case["noise"], case["posterior_noise"]
    prompt, negative, latent_mask = case["prompt"], case["negative"], case["latent_mask"]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stages = _Stages(device)
    with torch.no_grad(), attention_backend(attention):
        masked = stages("vae encode", encode_images, vae, video * (1 - holes), noise=posterior_noise, chunk=vae_chunk)
        masked = masked.permute(1, 0, 2, 3)[None]
        stages("warm-up (1 step, not counted)", denoise, unet, noise, masked, latent_mask, prompt, negative, 1, guidance)
        step_times = []
        stamp = [0.0]

        def on_step(step, total, latents):
            _sync(device)
            now = time.perf_counter()
            step_times.append(now - stamp[0])
            stamp[0] = now

        def sample():
            stamp[0] = time.perf_counter()
            return denoise(unet, noise, masked, latent_mask, prompt, negative, steps, guidance, callback=on_step)

        latents = stages("denoise", sample)
        decoded = stages("vae decode", decode_latents, vae, latents[0].permute(1, 0, 2, 3).cpu(), chunk=vae_chunk)
    finite = bool(torch.isfinite(decoded).all())
    timed = {name: s for name, s in stages.seconds.items() if not name.startswith("warm-up")}
    result = dict(
        device=str(device), device_name=_device_name(device),
        dtype=dtype, attention=attention, frames=frames, size=size, steps=steps, guidance=guidance, tiny=tiny,
        batch_cfg=2, vae_chunk=vae_chunk, torch=torch.__version__, build_seconds=build_seconds,
        stages=stages.seconds, total_seconds=sum(timed.values()), unet_seconds_per_step=stages.seconds["denoise"] / steps,
        it_per_s=steps / stages.seconds["denoise"], step_seconds=step_times, finite=finite,
        peak_vram_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        peak_vram_reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
    )
    return result


def _weight_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _budget_case(unet, vae, case, device, torch_dtype, limit_bytes, weights, *, frames, size, steps, guidance,
                 vae_chunk) -> dict:
    """One limit: the auto plan for what the weights leave, then encode / denoise / decode with it."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if limit_bytes > total:
            return dict(limit_gb=limit_bytes / GB, skipped=f"larger than this GPU ({total / GB:.1f} GB)")
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(limit_bytes / total, device)
    plan = memory_plan.plan_unet_memory(max(limit_bytes - weights, 0), size, size, frames, torch_dtype,
                                        guided=guidance > 1)
    result = dict(limit_gb=limit_bytes / GB, weights_gib=weights / 2**30, frame_chunk=plan.frame_chunk,
                  split_cfg=plan.split_cfg, estimate_gib=plan.working_bytes / 2**30, plan_fits=plan.fits,
                  plan=plan.describe(), peaks_gib={}, seconds={}, out_of_memory=None)
    previous = unet.frame_chunk
    unet.frame_chunk = plan.frame_chunk
    stages = [
        ("vae encode", lambda: encode_images(vae, case["video"] * (1 - case["holes"]), noise=case["posterior_noise"],
                                             chunk=vae_chunk).permute(1, 0, 2, 3)[None]),
        ("denoise", lambda masked: denoise(unet, case["noise"], masked, case["latent_mask"], case["prompt"],
                                           case["negative"], steps, guidance, split_cfg=plan.split_cfg)),
        ("vae decode", lambda latents: decode_latents(vae, latents[0].permute(1, 0, 2, 3), chunk=vae_chunk)),
    ]
    value = None
    try:
        with torch.no_grad():
            for name, stage in stages:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                started = time.perf_counter()
                try:
                    value = stage() if value is None else stage(value)
                except torch.OutOfMemoryError:
                    result["out_of_memory"] = name
                    break
                _sync(device)
                result["seconds"][name] = time.perf_counter() - started
                result["peaks_gib"][name] = _peak(device)
        if result["out_of_memory"] is None:
            result["finite"] = bool(torch.isfinite(value).all())
            denoise_peak = result["peaks_gib"]["denoise"]
            result["denoise_above_weights_gib"] = None if denoise_peak is None else denoise_peak - weights / 2**30
    finally:
        unet.frame_chunk = previous
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    return result


def run_budget(*, device="cuda", dtype="fp16", limits_gb=LIMITS_GB, frames=16, size=512, steps=2, guidance=14.0,
               attention="sdpa", vae_chunk=8, tiny=False, seed=0) -> dict:
    """Peak memory of the 512x512 x 16 case under each GPU memory limit, with the auto memory plan."""
    device = torch.device(device)
    torch_dtype = DTYPES[dtype]
    unet = _models.video_unet(tiny=tiny, device=device, dtype=torch_dtype, seed=seed)
    vae = _models.vae(tiny=tiny, device=device, dtype=torch_dtype, seed=seed)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else _weight_bytes(unet, vae)
    case = _case(frames, size, tiny, seed)
    with attention_backend(attention):
        cases = [_budget_case(unet, vae, case, device, torch_dtype, int(limit * GB), weights, frames=frames, size=size,
                              steps=steps, guidance=guidance, vae_chunk=vae_chunk) for limit in limits_gb]
    return dict(mode="budget", device=str(device), device_name=_device_name(device), dtype=dtype, attention=attention,
                frames=frames, size=size, steps=steps, guidance=guidance, vae_chunk=vae_chunk, tiny=tiny,
                torch=torch.__version__, measured=device.type == "cuda", cases=cases)


def _print_budget(result: dict) -> None:
    print(f"{result['device_name']} ({result['device']}), {result['dtype']}, {result['frames']} frames "
          f"{result['size']}x{result['size']}, {result['steps']} steps, budget mode"
          f"{' (tiny models)' if result['tiny'] else ''}")
    for case in result["cases"]:
        if "skipped" in case:
            print(f"  {case['limit_gb']:5.1f} GB: skipped, {case['skipped']}")
            continue
        peaks = ", ".join(f"{name} {'n/a' if peak is None else f'{peak:.2f} GiB'}" for name, peak in case["peaks_gib"].items())
        failed = f"; OUT OF MEMORY in {case['out_of_memory']}" if case["out_of_memory"] else ""
        print(f"  {case['limit_gb']:5.1f} GB: {case['plan']}; peak {peaks}{failed}")
    if not result["measured"]:
        print("  (limits and peaks need CUDA: on this device only the plans were computed and the stages run)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--frames", type=int, help="frames (default 32; --budget: 16; --tiny: 4)")
    parser.add_argument("--size", type=int, help="frame side in pixels (default 512; --tiny: 64)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 50; --tiny and --budget: 2)")
    parser.add_argument("--guidance", type=float, default=14.0)
    parser.add_argument("--attention", choices=BACKENDS, default="sdpa")
    parser.add_argument("--vae-chunk", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke run that works on CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--budget", action="store_true", help="the 512x512 x 16 case under GPU memory limits with the "
                        "auto frame_chunk / split CFG (default --steps 2)")
    parser.add_argument("--limits", type=float, nargs="+", default=list(LIMITS_GB), metavar="GB",
                        help="--budget: memory limits in GB (default 8 12 24)")
    parser.add_argument("--out", help="JSON file (default bench/results/gpu_paper_case.json, --budget: gpu_budget.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budget:
        return _main_budget(args)
    args.out = args.out or str(ROOT / "bench" / "results" / "gpu_paper_case.json")
    sizes = TINY if args.tiny else dict(frames=32, size=512, steps=50)
    frames, size, steps = (getattr(args, key) or sizes[key] for key in ("frames", "size", "steps"))
    result = run(device=args.device, dtype=args.dtype, frames=frames, size=size, steps=steps, guidance=args.guidance,
                 attention=args.attention, vae_chunk=args.vae_chunk, tiny=args.tiny)
    print(f"{result['device_name']} ({result['device']}), {args.dtype}, {args.attention}, {frames} frames "
          f"{size}x{size}, {steps} steps, CFG {args.guidance:g} batched{' (tiny models)' if args.tiny else ''}")
    for name, seconds in result["stages"].items():
        print(f"  {name:32s} {seconds:8.2f} s")
    print(f"  {'total (encode + denoise + decode)':32s} {result['total_seconds']:8.2f} s")
    print(f"  U-Net: {result['it_per_s']:.2f} it/s ({result['unet_seconds_per_step']:.3f} s/step)")
    if result["peak_vram_gib"] is not None:
        print(f"  peak VRAM: {result['peak_vram_gib']:.2f} GiB allocated, {result['peak_vram_reserved_gib']:.2f} GiB reserved")
    if not result["finite"]:
        print("  WARNING: the decoded frames contain NaN/inf")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if result["finite"] else 1


def _main_budget(args) -> int:
    sizes = TINY if args.tiny else BUDGET
    frames, size, steps = (getattr(args, key) or sizes[key] for key in ("frames", "size", "steps"))
    result = run_budget(device=args.device, dtype=args.dtype, limits_gb=args.limits, frames=frames, size=size,
                        steps=steps, guidance=args.guidance, attention=args.attention, vae_chunk=args.vae_chunk,
                        tiny=args.tiny)
    _print_budget(result)
    out = Path(args.out or ROOT / "bench" / "results" / "gpu_budget.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if all(case.get("finite", True) for case in result["cases"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
