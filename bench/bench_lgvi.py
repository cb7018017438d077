"""LGVI benchmarks: full-size video U-Net (random weights) per-pass time and peak memory with torch SDPA
vs the naive score-matrix attention, and the LGVI-I chat stage's memory plan (an ESTIMATE from the
LLaVA-1.5-7B config: the 7B model is not run here).

    flock /tmp/cococo-bench.lock python bench/bench_lgvi.py [--frames 8 --height 256 --width 256 --repeats 2]

Times come from one process that alternates the two backends pass by pass (so machine load hits
both alike); each backend's peak memory (CPU: peak RSS; CUDA: peak allocated) from its own
subprocess. One guided sampling step is three U-Net passes. Prints a table and writes
bench/results/lgvi.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3
# LLaVA-1.5-7B (liuhaotian/llava-v1.5-7b / llava-hf/llava-1.5-7b-hf config) and CLIP ViT-L/14-336
LLAMA_7B = dict(layers=32, hidden=4096, intermediate=11008, vocab=32000, heads=32)
CLIP_L_336 = dict(layers=24, hidden=1024, intermediate=4096, patch=14, image=336)
PROMPT_TOKENS = 420 + 575  # v1_inpaint system prompt + request (~420 Llama tokens) + 576 image tokens - <image>


def _peak_rss_bytes() -> int:
    import resource  # noqa: PLC0415

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _setup(args):
    import torch  # noqa: PLC0415

    from cococo_core.lgvi.unet import LGVIUNet  # noqa: PLC0415
    from cococo_core.lgvi.unet_config import LGVIUNetConfig  # noqa: PLC0415

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = LGVIUNet(LGVIUNetConfig(in_channels=8, cross_attention_dim=768)).to(device, dtype).eval()
    z = torch.randn(1, 4, args.frames, args.height // 8, args.width // 8, device=device, dtype=dtype)
    inputs = (z, 500, torch.randn(1, 77, 768, device=device, dtype=dtype), torch.randn_like(z))
    return torch, model, inputs, device, dtype


def _timed_pass(torch, model, inputs, device) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args) -> dict:
    """--worker memory-BACKEND: one pass, peak memory; --worker time: both backends alternating."""
    from cococo_core.attention import attention_backend  # noqa: PLC0415

    torch, model, inputs, device, dtype = _setup(args)
    info = dict(device=str(device), dtype=str(dtype).removeprefix("torch."), params=sum(p.numel() for p in model.parameters()))
    if args.worker == "time":
        times = {"sdpa": [], "naive": []}
        for backend in times:  # warm-up
            with attention_backend(backend):
                _timed_pass(torch, model, inputs, device)
        for _ in range(args.repeats):
            for backend in times:
                with attention_backend(backend):
                    times[backend].append(_timed_pass(torch, model, inputs, device))
        return dict(info, times=times)
    backend = args.worker.removeprefix("memory-")
    after_load = _peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with attention_backend(backend):
        _timed_pass(torch, model, inputs, device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    return dict(info, backend=backend, peak_bytes=peak, after_load_bytes=after_load if device.type == "cpu" else None)


def chat_memory_plan(unet_params: int) -> list[dict]:
    """Weights + KV cache of the chat stage (estimate) and the diffusion stage's weights, staged vs together."""
    L = LLAMA_7B
    llama = L["layers"] * (4 * L["hidden"] ** 2 + 3 * L["hidden"] * L["intermediate"] + 2 * L["hidden"]) \
        + 2 * L["vocab"] * L["hidden"] + L["hidden"]
    C = CLIP_L_336
    clip = C["layers"] * (4 * C["hidden"] ** 2 + 2 * C["hidden"] * C["intermediate"]) \
        + ((C["image"] // C["patch"]) ** 2 + 1) * C["hidden"] + 3 * C["patch"] ** 2 * C["hidden"]
    projector = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    head = 4096 * 4096 + 4096 + 4096 * 768
    vae, text_encoder = 83_653_863, 123_060_480
    kv_tokens = PROMPT_TOKENS + 1024  # prompt + the longest reply
    kv = 2 * L["layers"] * L["hidden"] * kv_tokens * 2  # K and V, fp16
    rows = []
    for label, llm_bytes_per_param in (("fp16", 2.0), ("8-bit", 1.0), ("4-bit (nf4)", 0.5)):
        # the LGVI-I modules (embeddings, projector, head) and the vision tower stay fp16
        chat = (llama - L["vocab"] * L["hidden"] * 2) * llm_bytes_per_param + (2 * L["vocab"] * L["hidden"] + clip + projector + head) * 2 + kv
        diffusion = (unet_params + vae) * 2
        rows.append(dict(llm=label, chat_gib=chat / GIB, diffusion_weights_gib=diffusion / GIB,
                         together_gib=(chat + diffusion) / GIB, staged_gib=max(chat, diffusion) / GIB))
    return rows, dict(llama_params=llama, clip_params=clip, projector_params=projector, head_params=head,
                      text_encoder_params=text_encoder, kv_cache_tokens=kv_tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["time", "memory-sdpa", "memory-naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    def spawn(mode):
        command = [sys.executable, __file__, "--worker", mode, "--frames", str(args.frames), "--height",
                   str(args.height), "--width", str(args.width), "--repeats", str(args.repeats)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    timing = spawn("time")
    memory = {backend: spawn(f"memory-{backend}") for backend in ("sdpa", "naive")}
    median = {b: statistics.median(t) for b, t in timing["times"].items()}
    print(f"\nLGVI U-Net, full size ({timing['params'] / 1e6:.1f} M params, random weights), {args.frames} frames "
          f"{args.width}x{args.height} (latent {args.width // 8}x{args.height // 8}), {timing['device']} {timing['dtype']}, "
          f"median of {args.repeats} interleaved passes")
    print(f"{'attention':10s} {'s / pass':>9s} {'s / step (3 passes)':>20s} {'peak GiB':>9s} {'peak - loaded GiB':>18s}")
    for backend in ("sdpa", "naive"):
        mem = memory[backend]
        extra = (mem["peak_bytes"] - mem["after_load_bytes"]) / GIB if mem["after_load_bytes"] else float("nan")
        print(f"{backend:10s} {median[backend]:9.2f} {3 * median[backend]:20.2f} {mem['peak_bytes'] / GIB:9.2f} {extra:18.2f}")
    print(f"naive / sdpa time ratio: {median['naive'] / median['sdpa']:.2f}; "
          f"peak memory ratio: {memory['naive']['peak_bytes'] / memory['sdpa']['peak_bytes']:.2f}")
    runs = dict(timing=timing, memory=memory)
    plan, counts = chat_memory_plan(timing["params"])
    print("\nLGVI-I memory plan (ESTIMATE from the LLaVA-1.5-7B config; weights + fp16 KV cache of "
          f"{counts['kv_cache_tokens']} tokens; diffusion = U-Net + VAE fp16 weights, activations excluded)")
    print(f"{'chat LLM':12s} {'chat GiB':>9s} {'diffusion GiB':>14s} {'together GiB':>13s} {'staged GiB':>11s}")
    for row in plan:
        print(f"{row['llm']:12s} {row['chat_gib']:9.2f} {row['diffusion_weights_gib']:14.2f} {row['together_gib']:13.2f} {row['staged_gib']:11.2f}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "lgvi.json").write_text(json.dumps(dict(settings=vars(args), unet=runs, chat_plan=plan, counts=counts), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
