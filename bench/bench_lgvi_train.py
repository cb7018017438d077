"""LGVI training-step benchmark: one optimizer step of the video U-Net (random weights) with the LGVI recipe's
objective (eps-MSE + 0.001 x mask cross-entropy), parameter groups (3e-5 U-Net / 1e-4 mask decoder) and
AdamW, with and without gradient checkpointing. The frozen VAE / text encoder are not run (latents and
context are random): they add the same no-grad encoder cost to either variant.

    flock /tmp/cococo-bench.lock python bench/bench_lgvi_train.py [--width-scale 0.25 --frames 4 --height 160 --width 256]

``--width-scale 1`` is the full-size U-Net (933.6 M parameters: fp32 weights + gradients + AdamW states
= 16 B/parameter = 13.9 GiB before activations; it needs a GPU-class machine). Times come from one process
that alternates the two variants step by step; each variant's peak memory (CPU: peak RSS, CUDA: peak
allocated) from its own subprocess. Prints a table and writes bench/results/lgvi_train.json.
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
FULL_CHANNELS = (320, 640, 1280, 1280)


def _peak_rss_bytes() -> int:
    import resource  # noqa: PLC0415

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _setup(args, checkpointing: bool):
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    from cococo_core.lgvi.unet import LGVIUNet  # noqa: PLC0415
    from cococo_core.lgvi.unet_config import LGVIUNetConfig  # noqa: PLC0415
    from cococo_core.training.lgvi.recipes import LGVIRecipe  # noqa: PLC0415
    from cococo_core.training.lgvi.unet_init import enable_gradient_checkpointing  # noqa: PLC0415

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels = tuple(max(32, int(round(c * args.width_scale / 32)) * 32) for c in FULL_CHANNELS)
    holder = nn.Module()
    holder.unet = LGVIUNet(LGVIUNetConfig(in_channels=8, cross_attention_dim=768, block_out_channels=channels)).to(device).train()
    if checkpointing:
        enable_gradient_checkpointing(holder.unet)
    optimizer = torch.optim.AdamW(LGVIRecipe().parameter_groups(holder, {}))
    shape = (args.batch, 4, args.frames, args.height // 8, args.width // 8)
    inputs = dict(noisy=torch.randn(shape, device=device), condition=torch.randn(shape, device=device),
                  noise=torch.randn(shape, device=device), context=torch.randn(args.batch, 77, 768, device=device),
                  mask=(torch.rand(args.batch, 1, *shape[2:], device=device) > 0.5).float())
    return torch, holder.unet, optimizer, inputs, device, channels


def _step(torch, unet, optimizer, inputs, device, autocast: bool) -> float:
    import torch.nn.functional as F  # noqa: PLC0415

    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        eps, logits = unet(inputs["noisy"], 500, inputs["context"], inputs["condition"], return_mask=True, mask_logits=True)
        loss = F.mse_loss(eps.float(), inputs["noise"]) + 0.001 * F.binary_cross_entropy_with_logits(logits.float(), inputs["mask"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def worker(args) -> dict:
    if args.worker == "time":
        variants = {"plain": _setup(args, False), "checkpointing": _setup(args, True)}
        times = {name: [] for name in variants}
        for name, (torch, unet, optimizer, inputs, device, _) in variants.items():
            _step(torch, unet, optimizer, inputs, device, args.bf16)  # warm-up (allocates the AdamW states)
        for _ in range(args.repeats):
            for name, (torch, unet, optimizer, inputs, device, _) in variants.items():
                times[name].append(_step(torch, unet, optimizer, inputs, device, args.bf16))
        torch, unet, _, _, device, channels = variants["plain"]
        return dict(device=str(device), params=sum(p.numel() for p in unet.parameters()), channels=channels, times=times)
    checkpointing = args.worker == "memory-checkpointing"
    torch, unet, optimizer, inputs, device, _ = _setup(args, checkpointing)
    after_load = _peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _step(torch, unet, optimizer, inputs, device, args.bf16)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    return dict(peak_bytes=peak, after_load_bytes=after_load if device.type == "cpu" else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width-scale", type=float, default=0.25, help="U-Net channel widths relative to the full model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    parser.add_argument("--worker", choices=["time", "memory-plain", "memory-checkpointing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    def spawn(mode):
        command = [sys.executable, __file__, "--worker", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "bf16")] + (["--bf16"] if args.bf16 else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    timing = spawn("time")
    memory = {name: spawn(f"memory-{name}") for name in ("plain", "checkpointing")}
    median = {name: statistics.median(t) for name, t in timing["times"].items()}
    print(f"\nLGVI training step: U-Net {timing['params'] / 1e6:.1f} M params (channels {timing['channels']}), batch {args.batch} x "
          f"{args.frames} frames {args.width}x{args.height} (latent {args.width // 8}x{args.height // 8}), {timing['device']} "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, AdamW, median of {args.repeats} alternated steps")
    print(f"{'variant':14s} {'s / step':>9s} {'peak GiB':>9s} {'peak - loaded GiB':>18s}")
    for name in ("plain", "checkpointing"):
        mem = memory[name]
        extra = (mem["peak_bytes"] - mem["after_load_bytes"]) / GIB if mem["after_load_bytes"] else float("nan")
        print(f"{name:14s} {median[name]:9.2f} {mem['peak_bytes'] / GIB:9.2f} {extra:18.2f}")
    print(f"checkpointing / plain: time {median['checkpointing'] / median['plain']:.2f}x, "
          f"peak {memory['checkpointing']['peak_bytes'] / memory['plain']['peak_bytes']:.2f}x")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "lgvi_train.json").write_text(json.dumps(dict(settings=vars(args), timing=timing, memory=memory), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
