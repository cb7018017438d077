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
from cococo_core.pipeline.conditioning import decode_latents, encode_images  # noqa: E402
from cococo_core.pipeline.sampler import denoise  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = dict(frames=4, size=64, steps=2)


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


def run(*, device="cuda", dtype="fp16", frames=32, size=512, steps=50, guidance=14.0, attention="sdpa",
        vae_chunk=8, tiny=False, seed=0) -> dict:
    device = torch.device(device)
    torch_dtype = DTYPES[dtype]
    latent = size // 8
    built = time.perf_counter()
    unet = _models.video_unet(tiny=tiny, device=device, dtype=torch_dtype, seed=seed)
    vae = _models.vae(tiny=tiny, device=device, dtype=torch_dtype, seed=seed)
    build_seconds = time.perf_counter() - built
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, size, size, generator=generator) * 2 - 1
    holes = torch.zeros(frames, 1, size, size)
    holes[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    noise = torch.randn(1, 4, frames, latent, latent, generator=generator)
    posterior_noise = torch.randn(frames, 4, latent, latent, generator=generator)
    prompt, negative = torch.randn(2, 1, 77, _models.text_width(tiny), generator=generator)
    latent_mask = torch.nn.functional.interpolate(holes, size=(latent, latent), mode="nearest")
    latent_mask = latent_mask.permute(1, 0, 2, 3)[None]

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
        device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        dtype=dtype, attention=attention, frames=frames, size=size, steps=steps, guidance=guidance, tiny=tiny,
        batch_cfg=2, vae_chunk=vae_chunk, torch=torch.__version__, build_seconds=build_seconds,
        stages=stages.seconds, total_seconds=sum(timed.values()), unet_seconds_per_step=stages.seconds["denoise"] / steps,
        it_per_s=steps / stages.seconds["denoise"], step_seconds=step_times, finite=finite,
        peak_vram_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        peak_vram_reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--frames", type=int, help="frames (default 32; --tiny: 4)")
    parser.add_argument("--size", type=int, help="frame side in pixels (default 512; --tiny: 64)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 50; --tiny: 2)")
    parser.add_argument("--guidance", type=float, default=14.0)
    parser.add_argument("--attention", choices=BACKENDS, default="sdpa")
    parser.add_argument("--vae-chunk", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke run that works on CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_paper_case.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    raise SystemExit(main())
