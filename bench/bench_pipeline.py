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

``--stages`` instead runs one whole ``CoCoCoPipeline`` call (random full-size U-Net, SD-1.x VAE and CLIP ViT-L
text encoder; a small BPE vocabulary, which changes no cost) and prints where its time goes: text encode,
VAE encode, each denoising step's U-Net work, VAE decode (``bench/results/pipeline_stages.json``):

    flock /tmp/cococo-bench.lock .venv/bin/python bench/bench_pipeline.py --stages --size 256 --stage-frames 8 --steps 2
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
from cococo_core.models import VideoUNet  # noqa: E402
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


def build_unet(device: torch.device, dtype: torch.dtype, tiny: bool = False) -> VideoUNet:
    return _models.video_unet(tiny=tiny, device=device, dtype=dtype)


# SD-1.x's text encoder (CLIP ViT-L/14 text tower), as in text_encoder/config.json
SD15_CLIP_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)


def build_pipeline(device: torch.device, dtype: torch.dtype, tiny: bool = False):
    """A ``CoCoCoPipeline`` of random-weight parts: video U-Net, VAE, CLIP text encoder (full size unless tiny)."""
    import tempfile  # noqa: PLC0415

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: PLC0415

    from cococo_core.pipeline import CoCoCoPipeline  # noqa: PLC0415
    from tests import tiny_models  # noqa: PLC0415 - the small BPE vocabulary the tests write

    folder = tiny_models.write_tokenizer(Path(tempfile.mkdtemp(prefix="cococo-bench-tokenizer-")))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    config = tiny_models.TINY_CLIP_CONFIG if tiny else {
        **SD15_CLIP_CONFIG, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config)).to(device, dtype).eval()
    vae = _models.vae(tiny=tiny, device=device, dtype=dtype)
    return CoCoCoPipeline(vae, text_encoder, tokenizer, build_unet(device, dtype, tiny), device=device)


class _Clock:
    """Wall seconds per pipeline stage, measured by wrapping the pipeline's parts (nothing in it changes)."""

    def __init__(self, pipe, device):
        self.device, self.totals, self.steps = device, {}, []
        self._wrap(pipe, "encode_prompt", "text encode")
        self._wrap(pipe.vae, "encode", "VAE encode")
        self._wrap(pipe.vae, "decode", "VAE decode")
        self._wrap(pipe, "denoise", "denoise")

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, owner, name, stage):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self._sync()
            started = time.perf_counter()
            if stage == "denoise":
                self._last = started
            result = original(*args, **kwargs)
            self._sync()
            self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - started
            return result

        setattr(owner, name, timed)

    def step(self, step, total, latents):
        self._sync()
        now = time.perf_counter()
        self.steps.append(now - self._last)
        self._last = now


def run_stages(size: int, frames: int, steps: int, device: torch.device, dtype: torch.dtype, tiny: bool) -> dict:
    started = time.perf_counter()
    pipe = build_pipeline(device, dtype, tiny)
    print(f"built the pipeline ({'tiny' if tiny else 'full-size'}, random weights) in {time.perf_counter() - started:.0f} s; "
          f"{frames} frames {size}x{size}, {steps} steps, g=14 batched CFG, threads={torch.get_num_threads()}", flush=True)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(frames, size, size, 3, generator=generator)
    mask = torch.zeros(frames, size, size)
    mask[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    clock = _Clock(pipe, device)
    started = time.perf_counter()
    pipe(video, mask, "a swan on a lake", num_inference_steps=steps, guidance_scale=14.0, seed=0, callback=clock.step)
    total = time.perf_counter() - started
    stages = {"text encode": clock.totals["text encode"], "VAE encode": clock.totals["VAE encode"]}
    stages.update({f"step {i + 1} (U-Net, CFG, DDIM)": s for i, s in enumerate(clock.steps)})
    stages["VAE decode"] = clock.totals["VAE decode"]
    stages["other (resize, pad, paste-back)"] = total - sum(stages.values())
    print(f"{'stage':36s} {'seconds':>9} {'share':>7}")
    for name, seconds in stages.items():
        print(f"{name:36s} {seconds:>9.2f} {seconds / total:>7.1%}")
    print(f"{'total':36s} {total:>9.2f}")
    return dict(size=size, frames=frames, steps=steps, tiny=tiny, total_seconds=total, stages=stages)


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


def main(argv=None) -> int:
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
    parser.add_argument("--stages", action="store_true", help="per-stage time of one whole pipeline call instead")
    parser.add_argument("--stage-frames", type=int, default=8, help="frames for --stages (default 8)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (with --stages: a smoke run)")
    parser.add_argument("--out", help="JSON file (default bench/results/pipeline.json, or pipeline_stages.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    latent = args.size // 8
    if args.stages:
        result = run_stages(args.size, args.stage_frames, args.steps, device, dtype, args.tiny)
        result.update(dtype=args.dtype, device=str(device), threads=torch.get_num_threads(), torch=torch.__version__)
        out = Path(args.out or ROOT / "bench" / "results" / "pipeline_stages.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return 0

    started = time.perf_counter()
    unet = build_unet(device, dtype, args.tiny)
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
    out = Path(args.out or ROOT / "bench" / "results" / "pipeline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": args.size, "steps": args.steps, "dtype": args.dtype, "device": str(device),
                               "threads": torch.get_num_threads(), "params": params, "machine": platform.machine(),
                               "torch": torch.__version__, "cpu_count": os.cpu_count(), "results": results,
                               "ratios": ratios}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
