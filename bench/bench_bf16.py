"""bf16 vs fp32 on CPU for the CoCoCo video U-Net and the VAE: speed and what it costs in accuracy.

Same random full-size weights in both dtypes (the bf16 models are the fp32 ones cast). In one run:

* time: one guided denoising step (both CFG halves batched, B = 2) at ``--size`` x ``--frames``, fp32 and bf16
  alternated for ``--repeat`` rounds (fastest round kept), and a VAE decode of the same frames;
* accuracy: a ``--steps``-step ``denoise`` (default 4) at ``--quality-size`` from the same noise in both dtypes,
  relative L2 distance ||x_bf16 - x_fp32|| / ||x_fp32|| of the final latents and of their VAE decodes (each
  decoded by the VAE of its own dtype).

Also prints what the CPU offers (``avx512_bf16`` / ``amx_bf16`` flags, oneDNN). Writes
``bench/results/bench_bf16.json``. Run alone (~9.5 GB: the U-Net in both dtypes):

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_bf16.py --threads 1
    .venv/bin/python bench/bench_bf16.py --tiny     # tiny models: checks the script
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _models  # noqa: E402
from cococo_core.pipeline.conditioning import decode_latents  # noqa: E402
from cococo_core.pipeline.sampler import denoise  # noqa: E402


def cpu_bf16_support() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    onednn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return dict(avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags,
                mkldnn=torch.backends.mkldnn.is_available(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                onednn_bf16=bool(onednn_bf16()) if onednn_bf16 else None)


def cast_copy(model: torch.nn.Module, build, dtype: torch.dtype) -> torch.nn.Module:
    """The same weights in ``dtype``: ``build(device="meta")`` filled tensor by tensor (no second fp32 copy)."""
    copy = build(device="meta")
    copy.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()}, assign=True)
    return copy.eval()


def rel_l2(test: torch.Tensor, reference: torch.Tensor) -> float:
    test, reference = test.double(), reference.double()
    return float((test - reference).norm() / reference.norm())


def _inputs(frames: int, latent: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 4, frames, latent, latent)
    noise, masked = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    mask = torch.zeros(1, 1, frames, latent, latent)
    mask[..., latent // 4 : 3 * latent // 4, latent // 4 : 3 * latent // 4] = 1
    prompt, negative = torch.randn(2, 1, 77, width, generator=generator)
    return noise, masked, mask, prompt, negative


def _timed(function):
    started, started_cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - started, time.process_time() - started_cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="frame side for the timing (default 256)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--quality-size", type=int, default=128, help="frame side for the accuracy run (default 128)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the accuracy run (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="alternated timing rounds (default 2)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_bf16.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    support = cpu_bf16_support()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU: {support}", flush=True)
    width = _models.text_width(args.tiny)
    unet32 = _models.video_unet(tiny=args.tiny)
    unet16 = cast_copy(unet32, lambda device: _models.video_unet(tiny=args.tiny, device=device), torch.bfloat16)
    vae32 = _models.vae(tiny=args.tiny)
    vae16 = cast_copy(vae32, lambda device: _models.vae(tiny=args.tiny, device=device), torch.bfloat16)
    models = {"fp32": (unet32, vae32), "bf16": (unet16, vae16)}

    noise, masked, mask, prompt, negative = _inputs(args.frames, args.size // 8, width)
    timing = {name: dict(step_s=float("inf"), step_cpu_s=float("inf"), vae_decode_s=float("inf"),
                         vae_decode_cpu_s=float("inf")) for name in models}
    with torch.no_grad():
        for round_ in range(args.repeat):
            for name, (unet, vae) in models.items():
                _, wall, cpu = _timed(lambda: denoise(unet, noise, masked, mask, prompt, negative, 1, 14.0))
                _, vae_wall, vae_cpu = _timed(lambda: decode_latents(vae, noise[0].permute(1, 0, 2, 3)))
                row = timing[name]
                row.update(step_s=min(row["step_s"], wall), step_cpu_s=min(row["step_cpu_s"], cpu),
                           vae_decode_s=min(row["vae_decode_s"], vae_wall),
                           vae_decode_cpu_s=min(row["vae_decode_cpu_s"], vae_cpu))
                print(f"  round {round_ + 1} {name}: guided step {wall:7.2f} s wall {cpu:7.2f} s CPU; "
                      f"VAE decode of {args.frames} frames {vae_wall:6.2f} s wall {vae_cpu:6.2f} s CPU", flush=True)

        q_noise, q_masked, q_mask, q_prompt, q_negative = _inputs(args.frames, args.quality_size // 8, width, seed=1)
        finals, pixels = {}, {}
        for name, (unet, vae) in models.items():
            finals[name] = denoise(unet, q_noise, q_masked, q_mask, q_prompt, q_negative, args.steps, 14.0)
            pixels[name] = decode_latents(vae, finals[name][0].permute(1, 0, 2, 3))
    quality = dict(steps=args.steps, size=args.quality_size, frames=args.frames,
                   latents_rel_l2=rel_l2(finals["bf16"], finals["fp32"]),
                   pixels_rel_l2=rel_l2(pixels["bf16"], pixels["fp32"]),
                   pixels_max_abs=float((pixels["bf16"] - pixels["fp32"]).abs().max()),
                   finite=bool(torch.isfinite(finals["bf16"]).all() and torch.isfinite(pixels["bf16"]).all()))
    ratios = {key: timing["bf16"][key] / timing["fp32"][key] for key in timing["fp32"]}
    print(f"\n| dtype | guided step wall (s) | CPU (s) | VAE decode wall (s) | CPU (s) |\n|---|---|---|---|---|")
    for name, row in timing.items():
        print(f"| {name} | {row['step_s']:.2f} | {row['step_cpu_s']:.2f} | {row['vae_decode_s']:.2f} | "
              f"{row['vae_decode_cpu_s']:.2f} |")
    print(f"| bf16 / fp32 | {ratios['step_s']:.2f} | {ratios['step_cpu_s']:.2f} | {ratios['vae_decode_s']:.2f} | "
          f"{ratios['vae_decode_cpu_s']:.2f} |")
    print(f"\naccuracy, {args.steps} steps at {args.quality_size}² x {args.frames} frames: rel-L2 latents "
          f"{quality['latents_rel_l2']:.4f}, decoded pixels {quality['pixels_rel_l2']:.4f} "
          f"(max |Δ| {quality['pixels_max_abs']:.3f} on [0, 1]); finite: {quality['finite']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(), tiny=args.tiny,
                                   size=args.size, frames=args.frames, cpu=support, timing=timing, ratios=ratios,
                                   quality=quality), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
